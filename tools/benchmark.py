#!/usr/bin/env python3
"""
Benchmark the perception pipeline against its own backend, and print JSON.

Usage::

    python tools/benchmark.py [--model M.onnx] [--frames DIR] [--frames-count 60]
    python tools/benchmark.py --mode replay [--bag-frames 40] [--out benchmarks/replay.json]
    python tools/benchmark.py --mode season [--bags 4] [--out benchmarks/season.json]

Measures, on this machine:

(a) raw backend throughput: ``backend.infer`` on a preprocessed batch of the same
    size the pipeline sends (the tiles of one frame), in images/s;
(b) the full ``Detector.process`` (tiling, vegetation gate, preprocessing, inference,
    postprocessing, geotag lookup) in frames/s and tiles/s, with per-stage latency
    p50/p99 in milliseconds;

and ``pipeline_efficiency = pipeline tiles/s / raw backend images/s``: the share of
the model's speed the pipeline keeps (1.0 means our code costs nothing).

``--mode replay``: a 1280x720 JPEG bag (leaf mosaics, GPS at 10 Hz) is written to a
temporary folder and replayed whole (``run_replay``: bag reading, decoding, pipeline,
output bag), interleaved with raw ``backend.infer`` blocks on the batch of one frame's
tiles; ``replay_efficiency = replay tiles/s / raw images/s`` in the same run.

``--mode season``: ``--bags`` copies of the shipped demo bag replayed (a) one after
another in this process with the season's task body (:func:`replay_bag`, no Ray), (b)
on a fresh local Ray cluster with 1 worker and (c) with 2 workers (one inference thread
each): bags/s, ``scaling_efficiency`` = bags/s(2) / (2 x bags/s(1)), ``speedup_2_vs_1``,
Ray's start-up and its overhead per task (driver wall time per bag minus the task's
own time).

The two are measured in interleaved blocks (raw, pipeline, raw, pipeline, ...) so a
machine whose speed drifts (thermal, other load) affects both equally. Frames are
the images of ``--frames`` (any size; each image is one frame) or, by default,
768x512 mosaics of 3x2 real leaf photos from ``test/data/leaves`` (6 tiles of 256 px
per frame). Peak resident memory is reported too.
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.geo.geotag import FixBuffer
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.image_folders import is_image_file
from leaf_disease_ros.perception.pipeline import Detector, STAGES
from leaf_disease_ros.perception.positions import Fix
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.tiling import crops, tile_boxes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = os.path.join(REPO, 'test', 'data', 'leaves')
NS_PER_S = 1_000_000_000


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Benchmark the pipeline against its backend.',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', default='', help='ONNX model or engine (default: shipped)')
    parser.add_argument('--backend', default='onnxruntime',
                        choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    parser.add_argument('--frames', help='folder of frame images (default: leaf mosaics)')
    parser.add_argument('--frames-count', type=int, default=60,
                        help='frames processed by the pipeline (and raw batches run)')
    parser.add_argument('--blocks', type=int, default=6,
                        help='interleaved measurement blocks per side')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--out', help='also write the JSON to this file')
    parser.add_argument('--mode', default='pipeline', choices=('pipeline', 'replay', 'season'))
    parser.add_argument('--bag-frames', type=int, default=40, help='replay mode: frames')
    parser.add_argument('--bags', type=int, default=4, help='season mode: bags')
    parser.add_argument('--season-bag', choices=('demo', 'row'), default='demo',
                        help='season mode: copies of the demo bag, or of a 1280x720 JPEG row '
                             'of --bag-frames frames (bigger tasks: start-up amortised)')
    return parser.parse_args(argv)


def mosaic_frames(count: int = 8) -> List[np.ndarray]:
    """Return ``count`` 768x512 mosaics of 3x2 real leaf photos (256 px each)."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(LEAVES)
                   for name in names if is_image_file(name))
    if len(paths) < 6:
        raise LeafDiseaseError(f'need at least 6 leaf photos under {LEAVES}')
    leaves = [cv2.resize(cv2.imread(p), (256, 256)) for p in paths]
    frames = []
    for i in range(count):
        pick = [leaves[(i * 5 + k * 7) % len(leaves)] for k in range(6)]
        frames.append(np.vstack([np.hstack(pick[:3]), np.hstack(pick[3:])]))
    return frames


def folder_frames(folder: str) -> List[np.ndarray]:
    """Return the decodable images of ``folder`` as frames."""
    frames = [cv2.imread(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
              if is_image_file(name)]
    frames = [f for f in frames if f is not None]
    if not frames:
        raise LeafDiseaseError(f'{folder} holds no readable images')
    return frames


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    """Return p50 and p99 of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(array, 50)), 'p99': float(np.percentile(array, 99))}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark; return the JSON document."""
    backend = load_backend(args.model, args.backend, intra_op_threads=args.threads,
                           warn=lambda text: sys.stderr.write(text + '\n'))
    card = backend.card
    frames = folder_frames(args.frames) if args.frames else mosaic_frames()
    config = DetectorConfig()
    detector = Detector(backend, card, config)
    fixes = FixBuffer()
    for i in range(0, 200):
        fixes.add(Fix(i * 200_000_000, 46.0 + i * 1e-6, 7.0))

    # The raw side runs the batch the pipeline would send for the first frame.
    height, width = frames[0].shape[:2]
    boxes = tile_boxes(height, width, config.tiling, config.tile_size_px, config.tile_stride_px)
    batch = preprocess(crops(frames[0], boxes), card)[:backend.max_batch]
    batch = np.ascontiguousarray(batch)

    for i in range(args.warmup):
        backend.infer(batch)
        detector.process(frames[i % len(frames)], i * 100_000_000, fixes)

    per_block = max(1, args.frames_count // args.blocks)
    raw_seconds = 0.0
    raw_images = 0
    pipe_seconds = 0.0
    pipe_tiles = 0
    pipe_frames = 0
    stage_ms: Dict[str, List[float]] = {stage: [] for stage in STAGES}
    frame_index = 0
    for _ in range(args.blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            backend.infer(batch)
        raw_seconds += time.perf_counter() - start
        raw_images += per_block * batch.shape[0]

        start = time.perf_counter()
        for _ in range(per_block):
            result = detector.process(frames[frame_index % len(frames)],
                                      frame_index * 250_000_000, fixes)
            frame_index += 1
            pipe_tiles += len(result.detections)
            for stage in STAGES:
                stage_ms[stage].append(result.timings_ms[stage])
        pipe_seconds += time.perf_counter() - start
        pipe_frames += per_block
    backend.close()

    raw_ips = raw_images / raw_seconds
    tiles_ps = pipe_tiles / pipe_seconds
    return {
        'machine': {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
                    'processor': platform.processor() or platform.machine(),
                    'python': platform.python_version(), 'numpy': np.__version__,
                    'opencv': cv2.__version__},
        'model': backend.describe(),
        'input_px': list(card.input_hw_px),
        'frame_px': [int(height), int(width)],
        'tiles_per_frame': int(batch.shape[0]),
        'raw_backend': {'batch_size': int(batch.shape[0]), 'images': raw_images,
                        'seconds': raw_seconds, 'images_per_s': raw_ips},
        'pipeline': {'frames': pipe_frames, 'tiles': pipe_tiles, 'seconds': pipe_seconds,
                     'frames_per_s': pipe_frames / pipe_seconds, 'tiles_per_s': tiles_ps,
                     'stage_latency_ms': {s: percentiles(v) for s, v in stage_ms.items()}},
        'pipeline_efficiency': tiles_ps / raw_ips,
        'target_efficiency': 0.90,
        'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def machine() -> Dict[str, Any]:
    """Return what the figures were measured on."""
    return {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'python': platform.python_version(), 'numpy': np.__version__,
            'opencv': cv2.__version__, 'load_average_1min': os.getloadavg()[0]}


def write_row_bag(path: str, frame_count: int, size_px: Tuple[int, int] = (1280, 720),
                  quality: int = 90) -> str:
    """Write a bag of ``frame_count`` JPEG frames (leaf mosaics resized) with GPS at 10 Hz."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from leaf_disease_ros.geo.geodesy import offset_latlon
    from leaf_disease_ros.replay.typestore import make_typestore
    from leaf_disease_ros.ros.conversions import make_header, MessageTypes

    store = make_typestore()
    types = MessageTypes.from_typestore(store)
    mosaics = mosaic_frames(8)
    events = []
    for k in range(frame_count):
        frame = cv2.resize(mosaics[k % len(mosaics)], size_px, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        msg = store.types['sensor_msgs/msg/CompressedImage'](
            header=make_header(k * NS_PER_S, 'camera', types), format='jpeg',
            data=np.frombuffer(jpeg.tobytes(), dtype=np.uint8))
        events.append((k * NS_PER_S, 'image', store.serialize_cdr(
            msg, 'sensor_msgs/msg/CompressedImage')))
    for k in range(10 * frame_count + 10):
        lat, lon = offset_latlon(46.0, 7.0, 0.0, 0.07 * k)
        cov = np.zeros(9, dtype=np.float64)
        fix = types.NavSatFix(header=make_header(k * NS_PER_S // 10, 'gps', types),
                              status=types.NavSatStatus(status=2, service=1),
                              latitude=lat, longitude=lon, altitude=30.0,
                              position_covariance=cov, position_covariance_type=2)
        events.append((k * NS_PER_S // 10, 'fix',
                       store.serialize_cdr(fix, 'sensor_msgs/msg/NavSatFix')))
    events.sort(key=lambda e: (e[0], e[1]))
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        image = writer.add_connection('/camera/image_raw/compressed',
                                      'sensor_msgs/msg/CompressedImage', typestore=store)
        gps = writer.add_connection('/gps/fix', 'sensor_msgs/msg/NavSatFix', typestore=store)
        for log, kind, data in events:
            writer.write(image if kind == 'image' else gps, log, data)
    return path


def run_replay_mode(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Replay a 1280 px bag and run the raw model, interleaved; return the JSON.

    The raw model is the backend as the node and ``leaf-disease-infer`` load it (all
    cores to one caller) on a frame's tiles, one call after another. The replay variants:

    - ``replay``: as ``leaf-disease-replay`` runs by default: one inference worker per
      core, one ONNX Runtime thread each, JPEG decoded at reduced size;
    - ``replay_one_worker``: one frame at a time on the raw model's backend (how the
      node runs, and the replay before inference workers);
    - ``replay_full_size_decode``: the default replay without the reduced decode.

    A second raw figure, ``raw_one_thread_per_caller``, runs the model as the replay's
    workers do (one thread each, one caller per core): the most this machine gets from
    the model, to compare with too. Each block runs every item, then the same in reverse
    order, so a drift of the machine's speed during a block weighs on all alike; each
    efficiency is reported pooled over the blocks and as the median of the blocks' own
    ratios (robust to a block a neighbour slowed down).
    """
    from concurrent.futures import ThreadPoolExecutor

    from leaf_disease_ros.replay.runner import (default_inference_workers, ReplayOptions,
                                                run_replay)

    warn = lambda text: sys.stderr.write(text + '\n')  # noqa: E731
    backend = load_backend(args.model, args.backend, intra_op_threads=args.threads, warn=warn)
    single = load_backend(args.model, args.backend, intra_op_threads=1, warn=warn)
    card = backend.card
    config = DetectorConfig()
    workers = default_inference_workers()
    variants = {'replay': (single, workers, True), 'replay_one_worker': (backend, 1, True),
                'replay_full_size_decode': (single, workers, False)}
    raws = ('raw', 'raw_one_thread_per_caller')
    with tempfile.TemporaryDirectory(prefix='replay_bench_') as folder:
        bag = write_row_bag(os.path.join(folder, 'row'), args.bag_frames)
        frame = cv2.resize(mosaic_frames(1)[0], (1280, 720), interpolation=cv2.INTER_AREA)
        boxes = tile_boxes(720, 1280, config.tiling, config.tile_size_px, config.tile_stride_px)
        tiles = preprocess(crops(frame, boxes), card)
        chunks = [np.ascontiguousarray(tiles[i:i + backend.max_batch])
                  for i in range(0, len(tiles), backend.max_batch)]
        for chunk in chunks:
            backend.infer(chunk)
            single.infer(chunk)
        totals: Dict[str, Dict[str, float]] = {
            name: {'seconds': 0.0, 'items': 0, 'frames': 0} for name in (*raws, *variants)}
        decode_ms: Dict[str, List[float]] = {name: [] for name in variants}
        block_ratios: Dict[str, Dict[str, List[float]]] = {
            name: {raw: [] for raw in raws} for name in variants}
        runs = [0]
        pool = ThreadPoolExecutor(workers)

        def frames_on(model: Any, count: int) -> None:
            for _ in range(count):
                for chunk in chunks:
                    model.infer(chunk)

        def raw(name: str) -> Tuple[float, int]:
            start = time.perf_counter()
            if name == 'raw':
                frames_on(backend, args.bag_frames)
            else:
                shares = [args.bag_frames // workers + (k < args.bag_frames % workers)
                          for k in range(workers)]
                list(pool.map(lambda count: frames_on(single, count), shares))
            return time.perf_counter() - start, args.bag_frames * len(tiles)

        def replay(name: str) -> Tuple[float, int]:
            model, count, reduced = variants[name]
            options = ReplayOptions(
                bag_path=bag, out_dir=os.path.join(folder, f'out{runs[0]}'), gallery_size=0,
                inference_workers=count,
                parameters={'model_path': args.model, 'backend': args.backend,
                            'reduced_jpeg_decode': reduced})
            runs[0] += 1
            os.makedirs(options.out_dir)
            start = time.perf_counter()
            state = run_replay(options, backend=model)
            seconds = time.perf_counter() - start
            totals[name]['frames'] += state.frames_processed
            decode_ms[name].append(state.latency_decode.summary()['p50'])
            return seconds, state.tiles_classified

        order = [*raws, *variants]
        for _ in range(args.blocks):
            block: Dict[str, List[float]] = {name: [0.0, 0] for name in order}
            for name in order + order[::-1]:
                seconds, items = raw(name) if name in raws else replay(name)
                block[name][0] += seconds
                block[name][1] += items
                totals[name]['seconds'] += seconds
                totals[name]['items'] += items
            for name in variants:
                for raw_name in raws:
                    rate = block[name][1] / block[name][0]
                    block_ratios[name][raw_name].append(
                        rate / (block[raw_name][1] / block[raw_name][0]))
        pool.shutdown()
    backend.close()
    single.close()
    rates = {name: totals[name]['items'] / totals[name]['seconds'] for name in totals}
    document: Dict[str, Any] = {
        'mode': 'replay', 'machine': machine(), 'model': backend.describe(),
        'frame_px': [720, 1280], 'tiles_per_frame': len(tiles), 'jpeg_quality': 90,
        'bag_frames': args.bag_frames, 'blocks': args.blocks, 'inference_workers': workers,
        'order': 'per block: ' + ', '.join(order) + ', then reversed',
        'raw_backend': {'images': totals['raw']['items'], 'seconds': totals['raw']['seconds'],
                        'images_per_s': rates['raw'],
                        'how': 'one caller, ONNX Runtime intra-op threads as configured '
                               "(0: one per core), a frame's tiles per call"},
        'raw_one_thread_per_caller': {
            'images': totals['raw_one_thread_per_caller']['items'],
            'seconds': totals['raw_one_thread_per_caller']['seconds'],
            'images_per_s': rates['raw_one_thread_per_caller'],
            'how': f'{workers} callers at once, one intra-op thread each'},
        'target_efficiency': 0.80,
    }
    for name, (_, count, reduced) in variants.items():
        document[name] = {
            'inference_workers': count, 'reduced_jpeg_decode': reduced,
            'frames': totals[name]['frames'], 'tiles': totals[name]['items'],
            'seconds': totals[name]['seconds'], 'tiles_per_s': rates[name],
            'frames_per_s': totals[name]['frames'] / totals[name]['seconds'],
            'decode_ms_p50': float(np.median(decode_ms[name])),
            'efficiency_pooled': rates[name] / rates['raw'],
            'efficiency_median_of_blocks': float(np.median(block_ratios[name]['raw'])),
            'efficiency_by_block': [round(r, 3) for r in block_ratios[name]['raw']],
            'against_raw_one_thread_per_caller_median_of_blocks': float(
                np.median(block_ratios[name]['raw_one_thread_per_caller'])),
            'includes': 'bag reading, JPEG decoding, the colour check, pipeline, output bag'}
    document['replay_efficiency'] = document['replay']['efficiency_median_of_blocks']
    document['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return document


def run_season_mode(args: argparse.Namespace) -> Dict[str, Any]:
    """Replay copies of a bag (demo or 1280 px row) serially, then on Ray with 1 and 2 workers."""
    import shutil

    from leaf_disease_ros.perception.config import validate_parameters
    from leaf_disease_ros.replay.demo import demo_bag_path
    from leaf_disease_ros.replay.season import run_jobs
    from leaf_disease_ros.replay.season_store import find_bags
    from leaf_disease_ros.replay.season_task import BagJob, replay_bag

    params = validate_parameters({'model_path': args.model, 'backend': args.backend})
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='season_bench_') as folder:
        source = (demo_bag_path() if args.season_bag == 'demo'
                  else write_row_bag(os.path.join(folder, 'row'), args.bag_frames))
        for index in range(args.bags):
            shutil.copytree(source, os.path.join(folder, 'in', 'robot', f'pass{index}'))
        bags = find_bags([os.path.join(folder, 'in')])

        def jobs(run: str) -> List[BagJob]:
            out = os.path.join(folder, run, 'bags')
            os.makedirs(out)
            return [BagJob(bag=bag, bags_dir=out, key=run, parameters=dict(params),
                           threads=1, write_bag=True) for bag in bags]
        start = time.perf_counter()
        plain = [replay_bag(job) for job in jobs('plain')]
        plain_s = time.perf_counter() - start
        task_s = [r['worker']['task_s'] for r in plain]
        results['plain_one_after_another'] = {
            'seconds': plain_s, 'bags_per_s': len(bags) / plain_s,
            'task_s_mean': float(np.mean(task_s)),
            'model_load_s_mean': float(np.mean([r['worker']['load_s'] for r in plain]))}
        for workers in (1, 2):
            run = run_jobs(jobs(f'ray{workers}'), workers=workers, threads=1)
            done = [o.result for o in run.outcomes.values()]
            failed = [r for r in done if r['status'] != 'done']
            if failed:
                raise LeafDiseaseError(f'season benchmark: a bag failed: {failed[0]}')
            tasks = sum(r['worker']['task_s'] for r in done)
            results[f'ray_{workers}_worker'] = {
                'ray_init_s': run.ray_init_s, 'seconds': run.wall_s,
                'bags_per_s': len(bags) / run.wall_s,
                'task_s_mean': tasks / len(done),
                'ray_overhead_per_task_s': (run.wall_s * workers - tasks) / len(done)}
    one = results['ray_1_worker']['bags_per_s']
    two = results['ray_2_worker']['bags_per_s']
    return {
        'mode': 'season', 'machine': machine(), 'bags': args.bags,
        'bag': ('copies of demo/vineyard_demo (181 JPEG frames 768x256, 3 tiles each, 12 MB)'
                if args.season_bag == 'demo' else
                f'copies of a row bag of {args.bag_frames} JPEG q90 frames 1280x720 (15 '
                'tiles each before the gates) with GPS at 10 Hz'),
        'threads_per_task': 1, **results,
        'speedup_2_vs_1': two / one, 'scaling_efficiency': two / (2.0 * one),
        'ray_1_worker_vs_plain': one / results['plain_one_after_another']['bags_per_s'],
        'note': 'ray_overhead_per_task_s = (wall x workers - sum of task times) / bags: '
                'scheduling, worker start and result transfer, Ray start-up excluded',
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        document = {'pipeline': run, 'replay': run_replay_mode,
                    'season': run_season_mode}[args.mode](args)
    except LeafDiseaseError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    text = json.dumps(document, indent=2)
    sys.stdout.write(text + '\n')
    if args.out:
        atomic_write_json(args.out, document)
    return 0


if __name__ == '__main__':
    sys.exit(main())
