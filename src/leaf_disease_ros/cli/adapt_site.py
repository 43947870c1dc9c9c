"""
``leaf-disease-site``: one recorded pass of a healthy row -> a site file the node loads.

Usage::

    leaf-disease-site BAG --out SITE [--model M.onnx] [--params-file detector.yaml]
                      [--leaves DIR] [--review-percent 2] [--name NAME]

The grower records one pass of a row they believe healthy. The first run replays it
with the model (the same pipeline as the node), fits a **site head** on the model's
embedding output (:mod:`leaf_disease_ros.training.site_head`) and writes::

    SITE/
      site.json        what the node (parameter site_path) and leaf-disease-replay
                       (--site) load: the head, the model's sha256, the date, figures
      report.html      the tiles up for review, the figures, what to do next
      review/normal/   the pass's tiles the unadapted model would have called diseased
                       (highest score first): the adaptation teaches them as normal
      review/<label>/  one empty folder per label of the model, and review/exclude/
      .leaf-disease-output.json  the manifest of the shared output rule (a rerun may
                       replace what this command wrote, and nothing else)

With no review the site is ready. To review, move tiles out of ``review/normal/``:
into a disease folder, the tile becomes a labelled example of that disease; into
``exclude/``, it is left out. Then run the same command again: it replays the pass
and rebuilds ``site.json`` from the folders (``review/`` is kept as you left it).

Exit status: 0 written; 2 usage, bag, model, parameter or output error (nothing
written, ``--out`` as it was).
"""

import argparse
import base64
import csv
import html
import io
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

import cv2
import numpy as np

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json, atomic_write_text
from leaf_disease_ros.perception.config import load_params_file, validate_parameters
from leaf_disease_ros.perception.embedding_distance import fit_distance
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.output_paths import check_output_folder, write_manifest
from leaf_disease_ros.perception.postprocess import finding_scores, softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.resources import share_dir
from leaf_disease_ros.perception.site_model import SITE_FILE, SiteModel, utc_now_iso
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.replay.site_pass import PassCollector, ReviewTile
from leaf_disease_ros.training.site_head import (base_head, composite_tiles, DEFAULT_L2,
                                                 DEFAULT_STEPS, fit_head, frame_blocks,
                                                 group_weights, load_leaf_bank)

EXIT_OK = 0
EXIT_ERROR = 2
COMMAND = 'leaf-disease-site'
REVIEW = 'review'
NORMAL = 'normal'
EXCLUDE = 'exclude'
REPORT_HTML = 'report.html'
#: review file names: <rank>_t<sec>.<nsec>_x<x0>y<y0>_<w>px.png
REVIEW_NAME = re.compile(r'^\d+_t(\d+)\.(\d{9})_x(\d+)y(\d+)_(\d+)px\.png$')
HOLDOUT_FRACTION = 0.25
DOMAIN_QUANTILE = 0.99
DOMAIN_MARGIN = 1.1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-site',
        description='Turn one recorded pass of a row you believe healthy into a site file '
                    'for the node (site_path) and leaf-disease-replay (--site): the '
                    "model's output layer refitted on this site, nothing rebuilt.",
        epilog='Run it once; to review, move tiles out of SITE/review/normal/ into a '
               'disease folder or exclude/ and run it again. Exit status: 0 written; 2 '
               'usage, bag, model, parameter or output error (nothing written). '
               'docs/adaptation.md has the whole workflow.')
    parser.add_argument('bag', help='rosbag2 recording of one pass (folder, .mcap or .db3)')
    parser.add_argument('--out', required=True, help='site folder (new, or made by this command)')
    parser.add_argument('--model', default=None,
                        help='ONNX model with its card (default: params file, else shipped)')
    parser.add_argument('--params-file', default='', help="the node's params YAML (tiling...)")
    parser.add_argument('--image-topic', default='', help='camera topic (default: the only one)')
    parser.add_argument('--leaves', default='',
                        help='class folders of single-leaf photos to composite (default: the '
                             'shipped engines/leaf_bank)')
    parser.add_argument('--review-percent', type=float, default=2.0,
                        help='share of the tiles put up for review (default 2)')
    parser.add_argument('--composites', type=int, default=1600,
                        help='leaves composited into the pass (default 1600)')
    parser.add_argument('--name', default='', help='site name (default: the --out folder name)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def default_leaf_bank() -> str:
    """Return the shipped leaf bank folder (installed share, else the source checkout)."""
    return os.path.join(share_dir(), 'engines', 'leaf_bank')


def check_out(args: argparse.Namespace) -> bool:
    """
    Refuse an ``--out`` that would overwrite something; return whether it is a rerun.

    The shared output rule (:mod:`leaf_disease_ros.perception.output_paths`): never an
    input (the bag, the model, the params file, the leaf bank), never inside one or
    holding one, never a special file, never a non-empty folder this command did not
    make. A rerun leaves the files it did not write (the grower's ``review/``) alone.

    :raises OutputError: naming the conflict and what to do instead.
    """
    inputs = [args.bag] + [p for p in (args.model, args.params_file, args.leaves) if p]
    return check_output_folder(args.out, inputs, command=COMMAND,
                               replaces_folder=False) is not None


def review_name(rank: int, tile: ReviewTile) -> str:
    """Return a review tile's file name (rank, stamp, corner and size: its identity)."""
    x0, y0, x1, _ = tile.box_xyxy_px
    sec, nsec = divmod(tile.stamp_ns, 1_000_000_000)
    return f'{rank:04d}_t{sec}.{nsec:09d}_x{x0}y{y0}_{x1 - x0}px.png'


def tile_key(stamp_ns: int, box: Sequence[int]) -> Tuple[int, int, int, int]:
    """Return the identity of a tile: stamp, corner and width."""
    return int(stamp_ns), int(box[0]), int(box[1]), int(box[2]) - int(box[0])


def read_review(review_dir: str, labels: Sequence[str]
                ) -> Tuple[Dict[str, List[str]], List[Tuple[int, int, int, int]], List[str]]:
    """
    Read what the grower did in ``review/``.

    :returns: ``(label -> PNG paths moved into that label's folder, keys of excluded
        tiles, notes)``; files that are not review tiles are noted and ignored.
    """
    moved: Dict[str, List[str]] = {}
    excluded: List[Tuple[int, int, int, int]] = []
    notes: List[str] = []
    if not os.path.isdir(review_dir):
        return moved, excluded, notes
    for folder in sorted(os.listdir(review_dir)):
        path = os.path.join(review_dir, folder)
        if folder == NORMAL or not os.path.isdir(path):
            continue
        if folder != EXCLUDE and folder not in labels:
            notes.append(f'review/{folder}/ is not a label of the model; its tiles are ignored')
            continue
        for name in sorted(os.listdir(path)):
            match = REVIEW_NAME.match(name)
            if match is None:
                notes.append(f'review/{folder}/{name} is not a review tile; ignored')
                continue
            sec, nsec, x0, y0, width = (int(g) for g in match.groups())
            key = (sec * 1_000_000_000 + nsec, x0, y0, width)
            if folder == EXCLUDE:
                excluded.append(key)
            else:
                moved.setdefault(folder, []).append(os.path.join(path, name))
    return moved, excluded, notes


def embed_images(backend: Any, card: Any, images: Sequence[np.ndarray]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(logits, embeddings)`` of BGR images, in batches of the backend's maximum."""
    chunk = max(1, int(getattr(backend, 'max_batch', 16)))
    logits, embeddings = [], []
    for i in range(0, len(images), chunk):
        lg, em = backend.infer_with_embedding(preprocess(list(images[i:i + chunk]), card))
        logits.append(lg)
        embeddings.append(em)
    return np.concatenate(logits).astype(np.float32), np.concatenate(embeddings).astype(
        np.float32)


class SiteBuilder:
    """The recipe of one run (module docstring); each step keeps what the report shows."""

    def __init__(self, args: argparse.Namespace, err: TextIO) -> None:
        self.args = args
        self.err = err
        self.figures: Dict[str, Any] = {}
        self.notes: List[str] = []
        self.labels: List[str] = []

    def log(self, text: str) -> None:
        """Say what is being done (stderr)."""
        self.err.write(f'leaf-disease-site: {text}\n')
        self.err.flush()

    def run(self) -> Tuple[SiteModel, List[ReviewTile]]:
        """Replay, fit and check; return the site and the review tiles."""
        args = self.args
        start = time.monotonic()
        values: Dict[str, Any] = {}
        if args.params_file:
            values.update(load_params_file(args.params_file))
        if args.model is not None:
            values['model_path'] = args.model
        params = validate_parameters(values)
        backend = load_backend(params['model_path'], params['backend'],
                               onnx_provider=params['onnx_provider'],
                               intra_op_threads=params['onnx_intra_op_threads'],
                               max_batch=params['max_batch'])
        try:
            card = backend.card
            if not card.embedding_name:
                raise LeafDiseaseError(
                    f'model {card.name} has no embedding output (output.embedding_name in '
                    'its card): a site head needs one; export it with leaf-disease-export')
            labels = list(card.labels)
            self.labels = labels
            non_disease = [labels.index(n) for n in card.non_disease_labels]
            disease_names = [n for n in labels if n not in card.non_disease_labels]
            leaves_root = args.leaves or default_leaf_bank()
            self.log(f'segmenting the leaf bank {leaves_root}')
            bank = load_leaf_bank(leaves_root, labels, per_class=80, seed=args.seed,
                                  train_side_only=bool(args.leaves))
            self.log(f'replaying {args.bag} with {card.name}@{card.onnx_sha256[:12]}')
            collector = PassCollector(backend, card, review_tiles=500, seed=args.seed)
            state = run_replay(ReplayOptions(bag_path=args.bag, image_topic=args.image_topic,
                                             parameters=params, write_bag=False,
                                             observers=[collector], gallery_size=0),
                               backend=backend)
            emb, logits, frame, stamps, boxes = collector.arrays()
            self.figures.update(frames=state.frames_processed, tiles=int(len(emb)),
                                tiles_seen=collector.tiles_seen)
            review_count = max(1, int(round(args.review_percent / 100.0 * len(emb))))
            review = collector.review(review_count)
            moved, excluded, notes = read_review(os.path.join(args.out, REVIEW), labels)
            self.notes.extend(notes)
            keys = [tile_key(s, b) for s, b in zip(stamps.tolist(), boxes.tolist())]
            excluded_set = set(excluded)
            keep = np.array([k not in excluded_set for k in keys], dtype=bool)
            labelled_keys = set()
            for paths in moved.values():
                for path in paths:
                    match = REVIEW_NAME.match(os.path.basename(path))
                    if match:
                        sec, nsec, x0, y0, width = (int(g) for g in match.groups())
                        labelled_keys.add((sec * 1_000_000_000 + nsec, x0, y0, width))
            keep &= np.array([k not in labelled_keys for k in keys], dtype=bool)
            probs = softmax(logits, card.temperature)
            normal_label = np.array(non_disease)[np.argmax(probs[:, non_disease], axis=1)]
            rng = np.random.default_rng(args.seed)
            self.log(f'{len(emb)} tiles; compositing {args.composites} leaves into them')
            names = disease_names + [n for n in card.healthy_labels if n in bank.leaves]
            comp_images, comp_names = composite_tiles(collector.images, bank, names,
                                                      args.composites, rng)
            comp_logits, comp_emb = embed_images(backend, card, comp_images)
            comp_y = np.array([labels.index(n) for n in comp_names])
            comp_frame = rng.integers(0, max(1, collector.frames), len(comp_y))
            lab_x, lab_y = [], []
            for name, paths in moved.items():
                read = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
                images = [np.asarray(im) for im in read if im is not None]
                if images:
                    _, em = embed_images(backend, card, images)
                    lab_x.append(em)
                    lab_y.extend([labels.index(name)] * len(em))
            self.figures['labelled_tiles'] = {n: len(p) for n, p in moved.items()}
            self.figures['excluded_tiles'] = int(len(excluded_set))
            w0, b0 = base_head(np.vstack([emb, comp_emb]), np.vstack([logits, comp_logits]))
            x_all = np.vstack([emb[keep], comp_emb] + lab_x)
            y_all = np.concatenate([normal_label[keep], comp_y,
                                    np.asarray(lab_y, dtype=np.int64)])
            comp_group = ['healthy_leaf' if n in card.non_disease_labels else 'disease'
                          for n in comp_names]
            groups = np.asarray(['site'] * int(keep.sum()) + comp_group
                                + ['labelled'] * len(lab_y))
            held = np.concatenate([frame_blocks(frame[keep], HOLDOUT_FRACTION),
                                   frame_blocks(comp_frame, HOLDOUT_FRACTION),
                                   np.zeros(len(lab_y), dtype=bool)])
            self.log('fitting the site head (held-out check, then all tiles)')
            w_fit, b_fit = fit_head(w0, b0, x_all[~held], y_all[~held],
                                    group_weights(groups[~held].tolist()), card.temperature)
            threshold = card.finding_threshold
            self.figures['held_out_check'] = self._check(
                card, x_all[held], y_all[held], groups[held], (w0, b0),
                (w_fit, b_fit), threshold)
            w, b = fit_head(w0, b0, x_all, y_all, group_weights(groups.tolist()),
                            card.temperature)
            domain = self._domain(x_all, y_all, held)
            self.figures['fit'] = {'l2': DEFAULT_L2, 'steps': DEFAULT_STEPS,
                                   'rows': {g: int(np.sum(groups == g))
                                            for g in sorted(set(groups.tolist()))},
                                   'holdout': f'every {int(round(1 / HOLDOUT_FRACTION))}th '
                                              'block of 10 consecutive frames'}
            self.figures['seconds'] = round(time.monotonic() - start, 1)
            name = args.name or os.path.basename(os.path.normpath(args.out))
            site = SiteModel(
                name=name, model_sha256=card.onnx_sha256, model_name=card.name,
                created_utc=utc_now_iso(), weights=w, bias=b, finding_threshold=threshold,
                domain=domain,
                record={'bag': os.path.basename(os.path.normpath(args.bag)),
                        'leaf_bank': os.path.basename(os.path.normpath(leaves_root)),
                        'leaf_bank_leaves': bank.count(),
                        'recipe': 'site head on the embedding output (training/site_head.py)',
                        'figures': self.figures, 'notes': self.notes})
            return site, review
        finally:
            backend.close()

    def _check(self, card: Any, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
               before: Tuple[np.ndarray, np.ndarray], after: Tuple[np.ndarray, np.ndarray],
               threshold: float) -> Dict[str, Any]:
        """Return the finding rate on held-out site tiles and the recall of held-out composites."""
        result: Dict[str, Any] = {}
        for tag, (w, b) in (('unadapted', before), ('adapted', after)):
            probs = softmax(x @ w.T + b, card.temperature)
            scores = finding_scores(probs, card.labels, card.non_disease_labels,
                                    card.finding_score)
            disease = np.array([n not in card.non_disease_labels for n in card.labels])
            find = (disease[probs.argmax(axis=1)] & (probs.max(axis=1) >= card.unknown_threshold)
                    & (scores >= threshold))
            site = groups == 'site'
            pasted = groups == 'disease'
            result[tag] = {
                'site_tile_finding_rate': float(find[site].mean()) if site.any() else None,
                'composite_recall': float(find[pasted].mean()) if pasted.any() else None,
            }
        result['site_tiles'] = int(np.sum(groups == 'site'))
        result['composites'] = int(np.sum(groups == 'disease'))
        return result

    def _domain(self, x: np.ndarray, y: np.ndarray, held: np.ndarray) -> Any:
        """
        Return the site's domain reference: its tiles and the leaves composited into them.

        Fitted by label on every training row of the head (the site's normal, diseased
        and healthy leaves on the site's canopy, the grower's labelled tiles), so that
        disease *on this site* is in the domain: an outbreak must not make the check
        warn and hold its own findings back. The threshold is a quantile of the rows of
        the held-out frames under a distance fitted without them.
        """
        present = sorted(set(y.tolist()))
        index = np.array([present.index(v) for v in y.tolist()])
        fit_rows = ~held if (~held).sum() > len(present) and held.any() else np.ones_like(held)
        probe = fit_distance(x[fit_rows], index[fit_rows], len(present))
        check = x[held] if held.any() else x
        limit = float(np.quantile(probe.distances(check), DOMAIN_QUANTILE)) * DOMAIN_MARGIN
        distance = fit_distance(x, index, len(present), record={
            'fitted_on': 'the site pass tiles and the leaves composited into them, by label',
            'threshold_rule': f'{DOMAIN_QUANTILE:.0%} quantile of held-out frames x '
                              f'{DOMAIN_MARGIN}'})
        return type(distance)(distance.class_means, distance.basis, distance.variances,
                              distance.residual_variance, limit, False, distance.record)


def write_review(out_dir: str, review: Sequence[ReviewTile], labels: Sequence[str]) -> None:
    """Write ``review/`` (first run only): the tiles in ``normal/``, empty label folders."""
    root = os.path.join(out_dir, REVIEW)
    os.makedirs(os.path.join(root, NORMAL), exist_ok=True)
    for name in list(labels) + [EXCLUDE]:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    rows = []
    for rank, tile in enumerate(review, start=1):
        name = review_name(rank, tile)
        with open(os.path.join(root, NORMAL, name), 'wb') as stream:
            stream.write(tile.png)
        rows.append([rank, name, tile.label, f'{tile.score:.4f}', tile.stamp_ns,
                     *tile.box_xyxy_px])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(['rank', 'file', 'unadapted_label', 'finding_score', 'stamp_ns',
                     'x0', 'y0', 'x1', 'y1'])
    writer.writerows(rows)
    atomic_write_text(os.path.join(root, 'index.csv'), buffer.getvalue())


def report_html(site: SiteModel, review: Sequence[ReviewTile], out_dir: str) -> str:
    """Return the self-contained report page: figures, what to do, the review tiles."""
    figures = site.record.get('figures', {})
    check = figures.get('held_out_check', {})

    def pct(value: Any) -> str:
        return '-' if value is None else f'{100.0 * value:.1f} %'

    rows = ''.join(
        f'<tr><td>{html.escape(tag)}</td>'
        f'<td>{pct(check.get(tag, {}).get("site_tile_finding_rate"))}</td>'
        f'<td>{pct(check.get(tag, {}).get("composite_recall"))}</td></tr>'
        for tag in ('unadapted', 'adapted'))
    tiles = ''.join(
        f'<figure><img alt="tile {i}" src="data:image/png;base64,'
        f'{base64.b64encode(_thumbnail(t.png)).decode("ascii")}"><figcaption>'
        f'{i}. {html.escape(t.label)} {t.score:.2f}</figcaption></figure>'
        for i, t in enumerate(review, start=1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Site {html.escape(site.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:70em}}
figure{{display:inline-block;margin:.3em;text-align:center;font-size:.8em}}
img{{width:128px;height:128px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:.2em .6em}}</style></head><body>
<h1>Site {html.escape(site.name)}</h1>
<p>Model {html.escape(site.model_name)}@{site.model_sha256[:12]}, made
{html.escape(site.created_utc)} from the pass {html.escape(str(site.record.get('bag', '')))}
({figures.get('frames', 0)} frames, {figures.get('tiles', 0)} tiles,
{figures.get('seconds', 0)} s).
Load it with <code>site_path:={html.escape(os.path.abspath(out_dir))}</code> (node) or
<code>leaf-disease-replay BAG --site {html.escape(out_dir)}</code>.</p>
<h2>Held-out check</h2>
<p>Frames held out of the fit (every 4th block of 10 frames): the share of their tiles
that are disease findings, and the share of bank leaves composited into them that are
found. Material: this pass and the leaf bank only.</p>
<table><tr><th></th><th>site tiles with a finding</th>
<th>composited diseased leaves found</th></tr>
{rows}</table>
<h2>Review ({len(review)} tiles)</h2>
<p>The tiles the unadapted model called most diseased; the site teaches them as normal.
If one really is diseased, move its file from <code>review/normal/</code> to
<code>review/&lt;disease&gt;/</code>; if it is not part of this row's normal (a person, a
tool), move it to <code>review/exclude/</code>. Then run the same command again.</p>
<div>{tiles}</div></body></html>
"""


def _thumbnail(png: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return png
    ok, out = cv2.imencode('.png', cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA))
    return out.tobytes() if ok else png


def write_site(out_dir: str, site: SiteModel, review: Sequence[ReviewTile], labels: Sequence[str],
               rerun: bool) -> List[str]:
    """Write the site folder; return the files written."""
    os.makedirs(out_dir, exist_ok=True)
    written = [SITE_FILE, REPORT_HTML]
    if not rerun or not os.path.isdir(os.path.join(out_dir, REVIEW)):
        write_review(out_dir, review, labels)
        written.append(REVIEW)
    atomic_write_json(os.path.join(out_dir, SITE_FILE), site.to_dict())
    atomic_write_text(os.path.join(out_dir, REPORT_HTML), report_html(site, review, out_dir))
    write_manifest(out_dir, COMMAND, [SITE_FILE, REPORT_HTML]
                   + [os.path.relpath(f, out_dir) for f in _review_files(out_dir)])
    return written


def _review_files(out_dir: str) -> List[str]:
    root = os.path.join(out_dir, REVIEW)
    return [os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names]


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """Entry point of ``leaf-disease-site``; returns the exit status."""
    args = parse_args(argv)
    try:
        if not 0.0 <= args.review_percent <= 100.0:
            raise LeafDiseaseError(f'--review-percent {args.review_percent} is not in 0..100')
        if args.composites < 100:
            raise LeafDiseaseError(f'--composites {args.composites}: give at least 100')
        rerun = check_out(args)
        builder = SiteBuilder(args, err)
        site, review = builder.run()
        write_site(args.out, site, review, builder.labels, rerun)
    except LeafDiseaseError as exc:
        err.write(f'leaf-disease-site: error: {exc}\n')
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write('leaf-disease-site: interrupted; the site folder is as it was\n')
        return EXIT_ERROR
    check = site.record.get('figures', {}).get('held_out_check', {})
    before, after = check.get('unadapted', {}), check.get('adapted', {})
    out.write(f'wrote {os.path.join(args.out, SITE_FILE)} ({site.site_id}, model '
              f'{site.model_name}@{site.model_sha256[:12]})\n')
    out.write('held-out frames of the pass: site tiles with a finding '
              f'{_pct(before.get("site_tile_finding_rate"))} -> '
              f'{_pct(after.get("site_tile_finding_rate"))}; composited diseased leaves '
              f'found {_pct(before.get("composite_recall"))} -> '
              f'{_pct(after.get("composite_recall"))}\n')
    out.write(f'{len(review)} tiles for review in {os.path.join(args.out, REVIEW, NORMAL)} '
              f'(see {os.path.join(args.out, REPORT_HTML)}); load the site with '
              f'site_path:={os.path.abspath(args.out)}\n')
    for note in site.record.get('notes', []):
        out.write(f'note: {note}\n')
    return EXIT_OK


def _pct(value: Any) -> str:
    return '-' if value is None else f'{100.0 * value:.2f} %'


if __name__ == '__main__':
    sys.exit(main())
