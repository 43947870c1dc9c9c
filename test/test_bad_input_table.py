"""
docs/bad-input.md is true: every row is run as written and gives what the table says.

Each row of the table names a case (``replay.missing_bag``...) that a function below
builds (the input and the command line); the test runs the command's ``main`` and
checks the exit status in the table and that every quoted (backticked) text of the
row's last column is in what the command printed. Rows without a case, and cases
without a row, fail: the table cannot drift from the code.
"""

import errno
import json
import os
import re
import shutil
import signal
from typing import Callable, Dict, List, NamedTuple, Tuple

import cv2
import numpy as np
import pytest

from bag_builder import (fix_message, Frame, GpsFix, message_types, mosaic, NS, Truth,
                         write_bag)
from conftest import REPO_DIR
from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.cli import replay as replay_cli
from leaf_disease_ros.geo.geodesy import offset_latlon
from tiny_model import make_tiny_model

TABLE = os.path.join(REPO_DIR, 'docs', 'bad-input.md')
ROW = re.compile(r'^\| `([a-z_]+\.[a-z_]+)` \| (.+) \| (\d) \| (.+) \|$')
LAT0, LON0 = 46.0, 7.0


class Row(NamedTuple):
    """One row of the table."""

    case: str
    exit_status: int
    quotes: Tuple[str, ...]


def table_rows() -> List[Row]:
    """Return the rows of docs/bad-input.md."""
    rows = []
    with open(TABLE, encoding='utf-8') as stream:
        for line in stream:
            match = ROW.match(line.rstrip('\n'))
            if match:
                rows.append(Row(match.group(1), int(match.group(3)),
                                tuple(re.findall(r'`([^`]+)`', match.group(4)))))
    return rows


class Context:
    """What a case needs to build its input."""

    def __init__(self, tmp_path, model, leaf_images, monkeypatch):
        self.tmp = tmp_path
        self.model = model
        self.leaves = leaf_images
        self.monkeypatch = monkeypatch
        self.image = mosaic([cv2.imread(leaf_images[label][0])
                             for label in ('black_rot', 'esca', 'leaf_blight')], 3)

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def frames(self, count=2, **kwargs) -> List[Frame]:
        return [Frame(stamp_ns=(k + 1) * NS, image_bgr=self.image,
                      log_time_ns=(k + 1) * NS + 15_000_000, **kwargs) for k in range(count)]

    def fixes(self, count=20, **kwargs) -> List[GpsFix]:
        out = []
        for k in range(count):
            lat, lon = offset_latlon(kwargs.get('lat0', LAT0), LON0, 0.2 * k, 0.0)
            out.append(GpsFix(int(round(0.2 * k * NS)), lat, lon, kwargs.get('status', 2),
                              int(round((0.2 * k + kwargs.get('delay', 0.025)) * NS))))
        return out

    def bag(self, frames=None, fixes=None, truth=(), raw=False, storage='mcap',
            name='bag', **kwargs) -> str:
        frames = self.frames() if frames is None else frames
        fixes = self.fixes() if fixes is None else fixes
        return write_bag(self.path(name), storage, frames, fixes, truth, raw=raw, **kwargs)

    def replay(self, *args: str) -> Tuple[str, List[str]]:
        argv = list(args)
        if '--out' not in argv:
            argv += ['--out', self.path('out')]
        return 'replay', argv + ['--model', self.model, '--no-progress']

    def classify(self, *args: str, model: str = '') -> Tuple[str, List[str]]:
        return 'classify', list(args) + ['--model', model or self.model]

    def broken_model(self, logit_bias: float = float('nan')) -> str:
        """Return a tiny model whose logits are all ``logit_bias`` (NaN: not numbers)."""
        folder = self.tmp / 'broken_model'
        folder.mkdir()
        make_tiny_model(str(folder), logit_bias=logit_bias)
        return str(folder / 'tiny.onnx')

    def card_without_sha(self) -> str:
        folder = self.tmp / 'nosha'
        folder.mkdir()
        shutil.copy(self.model, folder / 'tiny.onnx')
        with open(self.model[:-5] + '.json', encoding='utf-8') as stream:
            card = json.load(stream)
        del card['onnx_sha256']
        (folder / 'tiny.json').write_text(json.dumps(card))
        return str(folder / 'tiny.onnx')


CASES: Dict[str, Callable[[Context], Tuple[str, List[str]]]] = {}


def case(name: str):
    """Register the builder of one row."""
    def register(function):
        CASES[name] = function
        return function
    return register


# --- leaf-disease-replay -------------------------------------------------------------------


@case('replay.missing_bag')
def _(ctx):
    return ctx.replay(ctx.path('nothing_here'))


@case('replay.not_a_bag')
def _(ctx):
    (ctx.tmp / 'notes.txt').write_text('not a bag')
    return ctx.replay(ctx.path('notes.txt'))


@case('replay.garbage_mcap')
def _(ctx):
    (ctx.tmp / 'broken.mcap').write_bytes(b'not mcap at all' * 20)
    return ctx.replay(ctx.path('broken.mcap'))


@case('replay.damaged_sqlite')
def _(ctx):
    bag = ctx.bag(storage='sqlite3')
    data = os.path.join(bag, 'bag.db3')
    with open(data, 'r+b') as stream:
        stream.truncate(os.path.getsize(data) // 2)
    return ctx.replay(bag)


@case('replay.cut_mcap')
def _(ctx):
    pytest.importorskip('mcap')
    bag = ctx.bag(ctx.frames(12, kind='raw'), ctx.fixes(70), raw=True)
    data = os.path.join(bag, 'bag.mcap')
    with open(data, 'r+b') as stream:
        stream.truncate(os.path.getsize(data) * 6 // 10)
    return ctx.replay(bag)


@case('replay.cut_mcap_first_chunk')
def _(ctx):
    pytest.importorskip('mcap')
    bag = ctx.bag()
    data = os.path.join(bag, 'bag.mcap')
    with open(data, 'r+b') as stream:
        stream.truncate(os.path.getsize(data) * 6 // 10)
    return ctx.replay(bag)


@case('replay.no_image_topic')
def _(ctx):
    return ctx.replay(ctx.bag(frames=[]))


@case('replay.fix_topic_typo')
def _(ctx):
    return ctx.replay(ctx.bag(), '--fix-topic', '/gps/fixx')


@case('replay.truth_topic_typo')
def _(ctx):
    frames = ctx.frames()
    truth = [Truth(f.stamp_ns, [((0.0, 0.0, 256.0, 256.0), 'esca')]) for f in frames]
    return ctx.replay(ctx.bag(frames, truth=truth), '--ground-truth-topic', '/ground_truht')


@case('replay.two_gps_topics')
def _(ctx):
    _, types = message_types()
    extra = [('/gps2/fix', 'sensor_msgs/msg/NavSatFix', int(0.2 * k * NS),
              fix_message(types, int(0.2 * k * NS), LAT0, LON0)) for k in range(20)]
    return ctx.replay(ctx.bag(fix_topic='/gps1/fix', extra=extra))


@case('replay.topic_two_types')
def _(ctx):
    store, types = message_types()
    stray = store.types['sensor_msgs/msg/Image'](
        header=fix_message(types, NS, LAT0, LON0).header, height=1, width=1, encoding='bgr8',
        is_bigendian=0, step=3, data=np.zeros(3, np.uint8))
    return ctx.replay(ctx.bag(extra=[('/camera/image_raw/compressed', 'sensor_msgs/msg/Image',
                                      NS + 1, stray)]))


@case('replay.wrong_topic_type')
def _(ctx):
    return ctx.replay(ctx.bag(), '--image-topic', '/gps/fix')


@case('replay.no_gps')
def _(ctx):
    return ctx.replay(ctx.bag(fixes=[]))


@case('replay.no_ground_truth')
def _(ctx):
    return ctx.replay(ctx.bag())


@case('replay.repeated_stamps')
def _(ctx):
    frames = ctx.frames(6)
    for frame in frames:
        frame.log_time_ns = frame.stamp_ns + 15_000_000
        frame.stamp_ns = NS
    truth = [Truth(NS, [((0.0, 0.0, 256.0, 256.0), 'esca')], log_time_ns=f.log_time_ns - 1000)
             for f in frames]
    return ctx.replay(ctx.bag(frames, ctx.fixes(40), truth=truth))


@case('replay.nothing_scored')
def _(ctx):
    frames = ctx.frames()
    truth = [Truth(f.stamp_ns + NS // 2, [((0.0, 0.0, 256.0, 256.0), 'esca')]) for f in frames]
    return ctx.replay(ctx.bag(frames, truth=truth))


@case('replay.corrupt_jpeg')
def _(ctx):
    frames = ctx.frames(3, kind='jpeg')
    frames[1].data = b'\xff\xd8\xff\xe0 not really a jpeg'
    return ctx.replay(ctx.bag(frames))


@case('replay.only_unsupported')
def _(ctx):
    return ctx.replay(ctx.bag(ctx.frames(kind='raw', encoding='mono16'), raw=True))


@case('replay.grey_camera')
def _(ctx):
    return ctx.replay(ctx.bag(ctx.frames(kind='raw', encoding='mono8'), raw=True))


@case('replay.colourless_frame')
def _(ctx):
    frames = ctx.frames(3)
    frames[1].image_bgr = np.zeros_like(ctx.image)
    return ctx.replay(ctx.bag(frames))


@case('replay.grey_first_frame')
def _(ctx):
    frames = ctx.frames(4, kind='raw')
    frames[0].encoding = 'mono8'
    frames[0].image_bgr = cv2.cvtColor(ctx.image, cv2.COLOR_BGR2GRAY)[:, :, None].repeat(3, 2)
    return ctx.replay(ctx.bag(frames, raw=True))


@case('replay.thin_frames')
def _(ctx):
    frames = ctx.frames(3)
    frames[1].image_bgr = ctx.image[:1]  # one row: a broken driver or a cropped stream
    return ctx.replay(ctx.bag(frames))


@case('replay.empty_compressed')
def _(ctx):
    frames = ctx.frames(3)
    frames[1].data = b''
    return ctx.replay(ctx.bag(frames))


@case('replay.tile_cap')
def _(ctx):
    return ctx.replay(ctx.bag(), '--tile-size', '16', '--tile-stride', '8')


@case('replay.read_error')
def _(ctx):
    bag = ctx.bag()

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, 'Permission denied', os.path.join(bag, 'bag.mcap'))

    ctx.monkeypatch.setattr(replay_cli, 'run_replay', unreadable)
    return ctx.replay(bag)


@case('replay.padded_rows')
def _(ctx):
    height, width = ctx.image.shape[:2]
    step = width * 3 + 32
    padded = np.zeros((height, step), np.uint8)
    padded[:, :width * 3] = ctx.image.reshape(height, width * 3)
    frames = ctx.frames(kind='raw')
    for frame in frames:
        frame.data, frame.raw_shape = padded.tobytes(), (height, width, step)
    return ctx.replay(ctx.bag(frames, raw=True))


@case('replay.unstamped_frames')
def _(ctx):
    frames = ctx.frames()
    for frame in frames:
        frame.stamp_ns = 0
    return ctx.replay(ctx.bag(frames))


@case('replay.late_fixes')
def _(ctx):
    return ctx.replay(ctx.bag(fixes=ctx.fixes(30, delay=1.5)))


@case('replay.latitude_glitch')
def _(ctx):
    fixes = ctx.fixes()
    fixes.append(GpsFix(int(0.95 * NS), 95.0, LON0, log_time_ns=NS))
    return ctx.replay(ctx.bag(fixes=fixes))


@case('replay.jump_glitch')
def _(ctx):
    fixes = ctx.fixes()
    fixes.append(GpsFix(int(1.05 * NS), LAT0 + 0.5, LON0, log_time_ns=int(1.1 * NS)))
    return ctx.replay(ctx.bag(fixes=fixes))


@case('replay.no_fix')
def _(ctx):
    fixes = ctx.fixes(status=-1)
    for fix in fixes:
        fix.latitude_deg = fix.longitude_deg = float('nan')
    return ctx.replay(ctx.bag(fixes=fixes))


@case('replay.status_not_defined')
def _(ctx):
    return ctx.replay(ctx.bag(fixes=ctx.fixes(status=7)))


@case('replay.negative_covariance')
def _(ctx):
    fixes = ctx.fixes()
    for fix in fixes:
        fix.covariance_m2 = [-0.04, 0.0, 0.0, 0.0, -0.04, 0.0, 0.0, 0.0, 0.09]
    return ctx.replay(ctx.bag(fixes=fixes))


@case('replay.nanosec_overflow')
def _(ctx):
    frames = ctx.frames(3)
    frames[1].nanosec = 1_500_000_000
    return ctx.replay(ctx.bag(frames))


@case('replay.polar')
def _(ctx):
    return ctx.replay(ctx.bag(fixes=ctx.fixes(lat0=88.0)), '--disease-threshold', '0',
                      '--unknown-threshold', '0')


@case('replay.params_file_typo')
def _(ctx):
    (ctx.tmp / 'p.yaml').write_text('/**:\n  ros__parameters:\n    tile_sise_px: 128\n')
    return ctx.replay(ctx.bag(), '--params-file', ctx.path('p.yaml'))


@case('replay.param_typo')
def _(ctx):
    return ctx.replay(ctx.bag(), '--param', 'max_fix_gap=2.0')


@case('replay.bad_value')
def _(ctx):
    return ctx.replay(ctx.bag(), '--tile-size', '128', '--tile-stride', '256')


@case('replay.params_not_yaml')
def _(ctx):
    (ctx.tmp / 'p.yaml').write_text('detector_node: [1, 2\n')
    return ctx.replay(ctx.bag(), '--params-file', ctx.path('p.yaml'))


@case('replay.params_billion_laughs')
def _(ctx):
    lines = ['a: &a [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]']
    lines += [f'{chr(98 + k)}: &{chr(98 + k)} [' + ', '.join([f'*{chr(97 + k)}'] * 10) + ']'
              for k in range(8)]
    (ctx.tmp / 'p.yaml').write_text('\n'.join(lines + ['lever_arm_m: *i']) + '\n')
    return ctx.replay(ctx.bag(), '--params-file', ctx.path('p.yaml'))


@case('replay.missing_model')
def _(ctx):
    tool, argv = ctx.replay(ctx.bag())
    return tool, argv + ['--model', ctx.path('none.onnx')]


@case('replay.card_without_sha')
def _(ctx):
    tool, argv = ctx.replay(ctx.bag())
    return tool, argv + ['--model', ctx.card_without_sha()]


@case('replay.out_holds_input')
def _(ctx):
    ctx.monkeypatch.chdir(ctx.tmp)
    assert replay_cli.main([ctx.bag(), '--model', ctx.model, '--no-progress']) == 0
    return ctx.replay('replay_report/detections', '--out', 'replay_report')


@case('replay.out_inside_input')
def _(ctx):
    bag = ctx.bag()
    return ctx.replay(bag, '--out', os.path.join(bag, 'report'))


@case('replay.out_is_file')
def _(ctx):
    (ctx.tmp / 'out').write_text('a file')
    return ctx.replay(ctx.bag())


@case('replay.out_not_a_report')
def _(ctx):
    (ctx.tmp / 'out').mkdir()
    (ctx.tmp / 'out' / 'thesis.tex').write_text('precious')
    return ctx.replay(ctx.bag())


@case('replay.out_unwritable')
def _(ctx):
    (ctx.tmp / 'a_file').write_text('x')
    return ctx.replay(ctx.bag(), '--out', ctx.path('a_file/out'), '--no-output-bag')


@case('replay.bad_node_name')
def _(ctx):
    return ctx.replay(ctx.bag(), '--node-name', '1bad')


@case('replay.negative_max_frames')
def _(ctx):
    return ctx.replay(ctx.bag(), '--max-frames', '-1')


@case('replay.sigterm')
def _(ctx):
    class Terminating:
        """A progress bar that sends this process SIGTERM at the first frame."""

        def __init__(self, stream):
            pass

        def __call__(self, progress):
            os.kill(os.getpid(), signal.SIGTERM)

        def close(self):
            pass

    ctx.monkeypatch.setattr(replay_cli, 'ProgressBar', Terminating)
    tool, argv = ctx.replay(ctx.bag())
    return tool, [a for a in argv if a != '--no-progress']


@case('replay.disk_full')
def _(ctx):
    from leaf_disease_ros.replay import report

    bag = ctx.bag()
    assert replay_cli.main([bag, '--out', ctx.path('out'), '--model', ctx.model,
                            '--no-progress']) == 0

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    ctx.monkeypatch.setattr(report, 'write_map_png', disk_full)
    return ctx.replay(bag)


@case('replay.out_training_run')
def _(ctx):
    run = ctx.tmp / 'out'
    run.mkdir()
    for name in ('metrics.json', 'checkpoint_best.pt', 'split.json', 'train.log'):
        (run / name).write_text(name)
    return ctx.replay(ctx.bag())


@case('replay.out_holds_model')
def _(ctx):
    folder = ctx.tmp / 'R'
    folder.mkdir()
    for source in (ctx.model, ctx.model[:-5] + '.json'):
        shutil.copy(source, folder / os.path.basename(source))
    tool, argv = ctx.replay(ctx.bag(), '--out', str(folder))
    return tool, argv + ['--model', str(folder / 'tiny.onnx')]


@case('replay.harvest_overlaps_out')
def _(ctx):
    return ctx.replay(ctx.bag(), '--out', ctx.path('R'), '--harvest-tiles', ctx.path('R/harvest'))


@case('replay.nan_model')
def _(ctx):
    tool, argv = ctx.replay(ctx.bag())
    return tool, argv + ['--model', ctx.broken_model()]


# --- leaf-disease-classify -----------------------------------------------------------------


@case('classify.missing_path')
def _(ctx):
    return ctx.classify(ctx.path('missing.jpg'))


@case('classify.not_an_image')
def _(ctx):
    (ctx.tmp / 'notes.txt').write_text('field notes')
    return ctx.classify(ctx.path('notes.txt'))


@case('classify.corrupt_image')
def _(ctx):
    folder = ctx.tmp / 'photos'
    folder.mkdir()
    shutil.copy(ctx.leaves['esca'][0], folder / 'good.jpg')
    (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    return ctx.classify(str(folder))


@case('classify.grey_image')
def _(ctx):
    grey = cv2.cvtColor(cv2.imread(ctx.leaves['esca'][0]), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(ctx.path('grey.png'), grey)
    shutil.copy(ctx.leaves['esca'][0], ctx.path('leaf.jpg'))
    return ctx.classify(ctx.path('grey.png'), ctx.path('leaf.jpg'))


@case('classify.tiny_image')
def _(ctx):
    cv2.imwrite(ctx.path('dot.png'), np.full((1, 1, 3), (30, 140, 40), np.uint8))
    shutil.copy(ctx.leaves['esca'][0], ctx.path('leaf.jpg'))
    return ctx.classify(ctx.path('dot.png'), ctx.path('leaf.jpg'))


@case('classify.loose_image')
def _(ctx):
    data = ctx.tmp / 'data'
    for label, paths in ctx.leaves.items():
        (data / label).mkdir(parents=True)
        shutil.copy(paths[0], data / label / 'a.jpg')
    shutil.copy(ctx.leaves['esca'][1], data / 'loose.jpg')
    return ctx.classify(str(data))


@case('classify.unknown_class_folder')
def _(ctx):
    data = ctx.tmp / 'data'
    for label in ('esca', 'powdery_mildew'):
        (data / label).mkdir(parents=True)
        shutil.copy(ctx.leaves['esca'][0], data / label / 'a.jpg')
    return ctx.classify(str(data))


@case('classify.json_is_folder')
def _(ctx):
    return ctx.classify(ctx.leaves['esca'][0], '--json', str(ctx.tmp))


@case('classify.json_no_folder')
def _(ctx):
    return ctx.classify(ctx.leaves['esca'][0], '--json', ctx.path('missing/out.json'))


@case('classify.json_fifo')
def _(ctx):
    os.mkfifo(ctx.path('pipe'))
    return ctx.classify(ctx.leaves['esca'][0], '--json', ctx.path('pipe'))


@case('classify.json_onto_input')
def _(ctx):
    shutil.copy(ctx.leaves['esca'][0], ctx.path('a.jpg'))
    return ctx.classify(ctx.path('a.jpg'), '--json', ctx.path('a.jpg'))


@case('classify.json_inside_input')
def _(ctx):
    folder = ctx.tmp / 'photos'
    folder.mkdir()
    shutil.copy(ctx.leaves['esca'][0], folder / 'a.jpg')
    return ctx.classify(str(folder), '--json', str(folder / 'b.jpg'))


@case('classify.explain_inside_input')
def _(ctx):
    data = ctx.tmp / 'data'
    for label, paths in ctx.leaves.items():
        (data / label).mkdir(parents=True)
        shutil.copy(paths[0], data / label / 'a.jpg')
    return ctx.classify(str(data), '--explain', str(data / 'esca'))


@case('classify.nan_model')
def _(ctx):
    return ctx.classify(ctx.leaves['esca'][0], '--json', model=ctx.broken_model(1e38))


@case('classify.symlink_loop')
def _(ctx):
    data = ctx.tmp / 'data'
    for label in ('esca', 'healthy'):
        (data / label).mkdir(parents=True)
        shutil.copy(ctx.leaves[label][0], data / label / 'a.jpg')
    os.symlink('loop', data / 'loop')  # a link to itself: ELOOP on every look
    return ctx.classify(str(data))


@case('classify.stdout_closed')
def _(ctx):
    import sys

    ctx.monkeypatch.setattr(sys, 'stdout', None)  # what Python makes of `>&-`
    return ctx.classify(ctx.leaves['esca'][0])


@case('classify.unreadable_file')
def _(ctx):
    from leaf_disease_ros.perception import image_checks

    locked = ctx.leaves['esca'][0]
    real = image_checks.np.fromfile

    def fromfile(path, *args, **kwargs):  # what a file of another user gives (tests run as root)
        if path == locked:
            raise PermissionError(errno.EACCES, 'Permission denied', path)
        return real(path, *args, **kwargs)

    ctx.monkeypatch.setattr(image_checks.np, 'fromfile', fromfile)
    return ctx.classify(locked, ctx.leaves['esca'][1])


@case('classify.unreadable_model')
def _(ctx):
    from leaf_disease_ros.perception import model_card

    def unreadable(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, 'Permission denied', path)

    ctx.monkeypatch.setattr(model_card, 'sha256_file', unreadable)
    return ctx.classify(ctx.leaves['esca'][0])


@case('classify.card_without_sha')
def _(ctx):
    return ctx.classify(ctx.leaves['esca'][0], model=ctx.card_without_sha())


# --- leaf-disease-export -------------------------------------------------------------------


@case('export.unsafe_checkpoint')
def _(ctx):
    torch = pytest.importorskip('torch')
    run = ctx.tmp / 'run'
    run.mkdir()
    (run / 'split.json').write_text('{}')
    torch.save({'model': {}, 'payload': _RunsCode(ctx.path('code_ran'))},
               str(run / 'checkpoint_best.pt'))
    return 'export', [str(run), '--out', ctx.path('m.onnx')]


def _fake_run(ctx):
    """Return a folder that looks like a training run (refused before it is read)."""
    run = ctx.tmp / 'run'
    run.mkdir()
    for name in ('checkpoint_best.pt', 'checkpoint_last.pt', 'split.json', 'metrics.json'):
        (run / name).write_text(name)
    return run


@case('export.card_over_model')
def _(ctx):
    pytest.importorskip('torch')
    return 'export', [str(_fake_run(ctx)), '--out', ctx.path('m.json')]


@case('export.over_its_input')
def _(ctx):
    pytest.importorskip('torch')
    run = _fake_run(ctx)
    return 'export', [str(run), '--out', str(run / 'checkpoint_best.pt'), '--force']


# --- leaf-disease-train, leaf-disease-split ------------------------------------------------


def _dataset(ctx):
    data = ctx.tmp / 'data'
    for label, paths in ctx.leaves.items():
        (data / label).mkdir(parents=True)
        shutil.copy(paths[0], data / label / 'a.jpg')
    return data


@case('train.twice')
def _(ctx):
    from leaf_disease_ros.perception.output_paths import write_manifest

    run = _fake_run(ctx)
    write_manifest(str(run), 'leaf-disease-train')
    return 'train', [str(_dataset(ctx)), '--out', str(run)]


@case('train.out_inside_data')
def _(ctx):
    data = _dataset(ctx)
    return 'train', [str(data), '--out', str(data / 'run')]


@case('train.lr_nan')
def _(ctx):
    return 'train', [str(_dataset(ctx)), '--out', ctx.path('run'), '--lr', 'nan']


@case('split.out_inside_data')
def _(ctx):
    data = _dataset(ctx)
    return 'split', [str(data), '--out', str(data / 'split')]


@case('explain.thin_image')
def _(ctx):
    cv2.imwrite(ctx.path('thin.png'), np.full((1, 5000, 3), (30, 140, 40), np.uint8))
    return 'explain', [ctx.path('thin.png'), ctx.leaves['esca'][0], '--model', ctx.model,
                       '--out', ctx.path('explained')]


@case('explain.disk_full')
def _(ctx):
    from leaf_disease_ros.explain import images

    real = images.atomic_write_bytes
    written = []

    def disk_full(path, data):  # the second picture finds the disk full
        if written:
            raise OSError(errno.ENOSPC, 'No space left on device')
        written.append(path)
        real(path, data)

    ctx.monkeypatch.setattr(images, 'atomic_write_bytes', disk_full)
    return 'explain', [ctx.leaves['esca'][0], ctx.leaves['esca'][1], '--model', ctx.model,
                       '--out', ctx.path('explained')]


# --- leaf-disease-build-engine, leaf-disease-train-field -----------------------------------


@case('build_engine.cache_on_model')
def _(ctx):
    from engine_helpers import ORIN
    from leaf_disease_ros.inference.engine import build

    # the machine probe answers as an Orin would; the refusal comes before any TensorRT call
    ctx.monkeypatch.setattr(build, 'runtime', lambda device: (None, None, ORIN))
    model = ctx.path('m.onnx')  # a copy: the shared tiny model is never put at risk
    shutil.copy(ctx.model, model)
    shutil.copy(ctx.model[:-len('.onnx')] + '.json', ctx.path('m.json'))
    return 'build_engine', [model, '--timing-cache', model, '--force']


@case('train_field.cache_inside_photos')
def _(ctx):
    data = _dataset(ctx)
    return 'train_field', ['cache', '--plantvillage', str(data), '--field-photos', str(data),
                           '--out', str(data / 'cache')]


@case('train_field.train_twice')
def _(ctx):
    from leaf_disease_ros.cli.train_field import TRAIN_COMMAND
    from leaf_disease_ros.perception.output_paths import write_manifest

    run = ctx.tmp / 'run'
    run.mkdir()
    (run / 'model.pt').write_text('the first run')
    (ctx.tmp / 'train_32.npz').write_text('cache')
    write_manifest(str(run), TRAIN_COMMAND)
    return 'train_field', ['train', '--arch', 'resnet18', '--cache', ctx.path('train_32.npz'),
                           '--out', str(run), '--epochs', '1']


class _RunsCode:
    """An object whose unpickling creates a folder (it must never be unpickled)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --- leaf-disease-season: the row layout (--rows) ------------------------------------------


def _row(row_id, east_m=0.0, geometry=None):
    """Return a vine row feature, 10 m north from ``east_m`` (or the given geometry)."""
    ends = [offset_latlon(LAT0, LON0, east_m, north) for north in (0.0, 10.0)]
    return {'type': 'Feature', 'properties': {} if row_id is None else {'row': row_id},
            'geometry': geometry or {'type': 'LineString',
                                     'coordinates': [[lon, lat] for lat, lon in ends]}}


def _season_rows(ctx, content, bag=''):
    """Return the season command with ``--rows`` holding ``content`` (a document or bytes)."""
    rows = ctx.tmp / 'rows.geojson'
    if isinstance(content, bytes):
        rows.write_bytes(content)
    else:
        rows.write_text(json.dumps(content))
    if not bag:
        bag = str(ctx.tmp / 'bags')
        os.makedirs(bag, exist_ok=True)
    return 'season', [bag, '--out', ctx.path('season'), '--model', ctx.model,
                      '--rows', str(rows)]


def _rows(*features):
    return {'type': 'FeatureCollection', 'features': list(features)}


@case('season.rows_not_json')
def _(ctx):
    return _season_rows(ctx, b'{"type": "FeatureCollection", "features": [{"type": NaN')


@case('season.rows_not_a_collection')
def _(ctx):
    return _season_rows(ctx, _rows())


@case('season.rows_point')
def _(ctx):
    return _season_rows(ctx, _rows(_row('A1'), _row('A2', geometry={
        'type': 'Point', 'coordinates': [LON0, LAT0]})))


@case('season.rows_lat_lon_swapped')
def _(ctx):
    return _season_rows(ctx, _rows(_row('A1', geometry={
        'type': 'LineString', 'coordinates': [[44.9, 200.0], [44.9, 200.001]]})))


@case('season.rows_no_id')
def _(ctx):
    return _season_rows(ctx, _rows(_row('A1'), _row(None, 3.0)))


@case('season.rows_duplicate_id')
def _(ctx):
    return _season_rows(ctx, _rows(_row('A1'), _row('A1', 3.0)))


@case('season.rows_too_many')
def _(ctx):
    return _season_rows(ctx, _rows(*[_row(f'R{k}', 2.5 * k) for k in range(5001)]))


@case('season.rows_fifo')
def _(ctx):
    tool, argv = _season_rows(ctx, _rows(_row('A1')))
    fifo = ctx.path('rows.fifo')
    os.mkfifo(fifo)
    argv[argv.index('--rows') + 1] = fifo
    return tool, argv


@case('season.rows_inside_out')
def _(ctx):
    season = ctx.tmp / 'season'
    season.mkdir()
    (season / 'rows.geojson').write_text(json.dumps(_rows(_row('A1'))))
    return 'season', [ctx.bag(), '--out', str(season), '--model', ctx.model, '--rows',
                      str(season / 'rows.geojson')]


# --- the check -----------------------------------------------------------------------------


def _main(tool):
    if tool == 'replay':
        return replay_cli.main
    if tool == 'classify':
        return classify_cli.main
    from leaf_disease_ros.cli import (build_engine, explain, export, season, split, train,
                                      train_field)
    return {'export': export.main, 'train': train.main, 'split': split.main,
            'explain': explain.main, 'build_engine': build_engine.main,
            'train_field': train_field.main, 'season': season.main}[tool]


def test_every_row_has_a_case_and_every_case_a_row():
    names = [row.case for row in table_rows()]
    assert len(names) == len(set(names)), 'a case is in the table twice'
    assert sorted(names) == sorted(CASES)
    assert all(row.quotes for row in table_rows()), 'every row quotes what the user gets'


@pytest.mark.parametrize('row', table_rows(), ids=lambda row: row.case)
def test_the_table_row_is_what_the_user_gets(row, tmp_path, tiny_model_path, leaf_images,
                                             monkeypatch, capsys):
    ctx = Context(tmp_path, tiny_model_path, leaf_images, monkeypatch)
    tool, argv = CASES[row.case](ctx)
    capsys.readouterr()
    try:
        code = _main(tool)(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    printed = ' '.join((captured.out + captured.err).split())
    assert 'Traceback' not in printed
    assert code == row.exit_status, printed
    for quote in row.quotes:
        assert ' '.join(quote.split()) in printed, f'{quote!r} not in: {printed}'
    assert not os.path.exists(tmp_path / 'code_ran')
    if row.case == 'explain.disk_full':
        assert not os.path.exists(tmp_path / 'explained')  # nothing half-written
