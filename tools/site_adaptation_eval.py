#!/usr/bin/env python3
r"""
Measure the one-pass site adaptation on robot-pass recordings made from real field photos.

Usage::

    python3 tools/site_adaptation_eval.py ../shared/datasets --work /tmp/site_eval \\
        [--frames 60] [--seed 0] [--json benchmarks/site_adaptation.json] [--md FILE]

1. ``tools/make_row_bags.py`` builds a reference pass and a test pass from *different*
   field photos (and the test pass again with held-out PlantVillage diseased leaves
   pasted in, with their boxes as ground truth);
2. ``leaf-disease-site`` adapts the shipped model to the reference pass (one run, no
   review; the shipped leaf bank, training-side leaves only);
3. both test passes are replayed unadapted and adapted, with the node's parameters:

- **false tiles**: share of the clean test pass's classified tiles that are findings
  (every finding on it is false);
- **confirmed features per 100 m**: disease features of its map with repeated
  evidence (the map a grower acts on), per 100 m of pass;
- **pasted recall**: share of pasted leaves with a finding on a tile holding at least
  20 % of the leaf's box; **other tiles**: findings on tiles touching no pasted leaf;
- **domain check**: frames it warned on, findings it held back from the map (the
  confirmed features above are what reached the map, the node's default);
- **hidden PlantVillage**: accuracy on the validation side of the leaf-grouped split
  (whole photos), model head and site head.

Nothing measured here shaped the site: the test photos, the pasted (validation-side)
leaves and the PlantVillage validation photos are not used by ``leaf-disease-site``.
The base model's own training did see some of the photos (make_row_bags.py says which).
"""

import argparse
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from leaf_disease_ros.cli import adapt_site as site_cli
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json, atomic_write_text
from leaf_disease_ros.perception.pipeline import FrameResult
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.site_model import load_site
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.field_sim import read_bgr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_row_bags  # noqa: E402,I100 (a sibling developer script)

MIN_LEAF_SHARE = 0.2


class FrameLog:
    """Replay observer: per frame, the findings' boxes and the ground-truth boxes."""

    def __init__(self) -> None:
        self.frames: List[Dict[str, Any]] = []

    def observe(self, image_bgr: np.ndarray, result: FrameResult, truth: Any) -> None:
        """Keep what the figures need of one frame."""
        self.frames.append({
            'boxes': [d.box_xyxy_px for d in result.detections],
            'finding': [d.is_finding for d in result.detections],
            'truth': [(g.label, g.box_xyxy_px) for g in (truth or [])]})


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    return (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))


def pass_figures(log: FrameLog, state: Any, frames: int) -> Dict[str, Any]:
    """Return the figures of one replayed pass (module docstring)."""
    tiles = sum(len(f['boxes']) for f in log.frames)
    findings = sum(sum(f['finding']) for f in log.frames)
    leaves = found = other = other_findings = 0
    for frame in log.frames:
        touched = [False] * len(frame['boxes'])
        for _, box in frame['truth']:
            leaves += 1
            area = max(1.0, (box[2] - box[0]) * (box[3] - box[1]))
            hit = False
            for i, tile in enumerate(frame['boxes']):
                share = _overlap(tile, box)
                if share > 0:
                    touched[i] = True
                if share >= MIN_LEAF_SHARE * area and frame['finding'][i]:
                    hit = True
            found += hit
        for i, is_touched in enumerate(touched):
            if not is_touched:
                other += 1
                other_findings += frame['finding'][i]
    features = state.merger.features()
    confirmed = sum(1 for f in features if f.confirmed)
    length_m = frames * make_row_bags.STEP_M
    return {
        'frames': len(log.frames), 'tiles': tiles, 'finding_tiles': findings,
        'finding_tile_rate': findings / tiles if tiles else None,
        'map_features': len(features), 'confirmed_features': confirmed,
        'confirmed_features_per_100m': 100.0 * confirmed / length_m,
        'pasted_leaves': leaves, 'pasted_recall': found / leaves if leaves else None,
        'other_tile_finding_rate': other_findings / other if other else None,
        'domain_frames_judged': state.domain_frames_judged,
        'domain_frames_warn': state.domain_frames_warn,
        'findings_held': state.findings_held,
        'frames_held': state.frames_held,
    }


def replay(bag: str, site_dir: str, frames: int) -> Dict[str, Any]:
    """Replay one pass (adapted when ``site_dir``) and return its figures."""
    log = FrameLog()
    params = {'site_path': site_dir} if site_dir else {}
    state = run_replay(ReplayOptions(bag_path=bag, parameters=params, write_bag=False,
                                     observers=[log], gallery_size=0))
    return pass_figures(log, state, frames)


def plantvillage_accuracy(pv_root: str, site_dir: str) -> Dict[str, Any]:
    """Accuracy on the validation side (whole photos), model head and site head."""
    backend = load_backend('', 'onnxruntime')
    try:
        card = backend.card
        site = load_site(site_dir, card)
        names, _, val, _ = build_split(pv_root, None, 'photo-blocks', 40, None, 0.2, 0)
        truth = np.array([card.labels.index(names[s.label_index]) for s in val])
        base, adapted = [], []
        for i in range(0, len(val), backend.max_batch):
            batch = preprocess([read_bgr(s.path) for s in val[i:i + backend.max_batch]], card)
            logits, embeddings = backend.infer_with_embedding(batch)
            base.append(np.argmax(logits, axis=1))
            adapted.append(np.argmax(site.logits(embeddings), axis=1))
        return {'photos': int(len(truth)),
                'unadapted': float(np.mean(np.concatenate(base) == truth)),
                'adapted': float(np.mean(np.concatenate(adapted) == truth))}
    finally:
        backend.close()


def evaluate(datasets: str, work: str, frames: int, seed: int, composites: int
             ) -> Dict[str, Any]:
    """Build the passes, adapt, replay; return the record."""
    rows = os.path.join(work, 'rows')
    record = make_row_bags.build(make_row_bags.parse_args(
        [datasets, '--out', rows, '--frames', str(frames), '--seed', str(seed)]))
    site_dir = os.path.join(work, 'site')
    start = time.monotonic()
    err = io.StringIO()
    status = site_cli.main([os.path.join(rows, 'reference'), '--out', site_dir,
                            '--composites', str(composites), '--seed', str(seed)],
                           out=io.StringIO(), err=err)
    if status != 0:
        raise RuntimeError(f'leaf-disease-site failed ({status}): {err.getvalue()}')
    adaptation_s = time.monotonic() - start
    figures: Dict[str, Any] = {}
    for name in ('test_clean', 'test_pasted'):
        bag = os.path.join(rows, name)
        figures[name] = {'unadapted': replay(bag, '', frames),
                         'adapted': replay(bag, site_dir, frames)}
    site_doc = json.load(open(os.path.join(site_dir, 'site.json'), encoding='utf-8'))
    return {
        'material': ('robot-pass recordings made by tools/make_row_bags.py from real field '
                     f'photos: reference pass {record["reference_photos"]}, test pass '
                     f'{record["test_photos"]} ({frames} frames each, 1280x720, 0.7 m apart); '
                     f'{record["pasted_leaf_count"]} held-out PlantVillage diseased leaves '
                     '(validation side) pasted into the test pass'),
        'seed': seed, 'frames_per_pass': frames, 'composites': composites,
        'adaptation_seconds': round(adaptation_s, 1),
        'site_held_out_check': site_doc['record']['figures'].get('held_out_check'),
        'test_clean': figures['test_clean'], 'test_pasted': figures['test_pasted'],
        'hidden_plantvillage': plantvillage_accuracy(
            os.path.join(datasets, 'plantvillage_grape'), site_dir),
    }


def markdown(result: Dict[str, Any]) -> str:
    """Return the figures as a markdown table."""
    def pct(value: Optional[float]) -> str:
        return '-' if value is None else f'{100.0 * value:.2f} %'

    clean, pasted = result['test_clean'], result['test_pasted']
    pv = result['hidden_plantvillage']
    lines = [f"Material: {result['material']}.", '',
             '| | unadapted | adapted |', '|---|---|---|']
    lines.append('| false tiles (clean test pass) | '
                 f"{pct(clean['unadapted']['finding_tile_rate'])} | "
                 f"{pct(clean['adapted']['finding_tile_rate'])} |")
    lines.append('| confirmed map features per 100 m (clean) | '
                 f"{clean['unadapted']['confirmed_features_per_100m']:.1f} | "
                 f"{clean['adapted']['confirmed_features_per_100m']:.1f} |")
    lines.append(f"| pasted leaves found ({pasted['unadapted']['pasted_leaves']}) | "
                 f"{pct(pasted['unadapted']['pasted_recall'])} | "
                 f"{pct(pasted['adapted']['pasted_recall'])} |")
    lines.append('| other tiles of the pasted pass with a finding | '
                 f"{pct(pasted['unadapted']['other_tile_finding_rate'])} | "
                 f"{pct(pasted['adapted']['other_tile_finding_rate'])} |")
    for name, what in (('test_clean', 'clean'), ('test_pasted', 'pasted')):
        lines.append(f'| frames the domain check warned on ({what}) | '
                     + ' | '.join(f"{result[name][k]['domain_frames_warn']} of "
                                  f"{result[name][k]['domain_frames_judged']}"
                                  for k in ('unadapted', 'adapted')) + ' |')
        lines.append(f'| findings held back from the map ({what}) | '
                     + ' | '.join(str(result[name][k]['findings_held'])
                                  for k in ('unadapted', 'adapted')) + ' |')
    lines.append(f"| hidden PlantVillage ({pv['photos']} validation photos) | "
                 f"{pct(pv['unadapted'])} | {pct(pv['adapted'])} |")
    lines.append('')
    lines.append(f"Adaptation: {result['adaptation_seconds']} s (one run of leaf-disease-site, "
                 f"{result['composites']} composites, seed {result['seed']}).")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the evaluation; write JSON and markdown when asked; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('datasets', help='../shared/datasets')
    parser.add_argument('--work', required=True, help='new folder for the recordings and site')
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--composites', type=int, default=1600)
    parser.add_argument('--json', default='', help='write the record here')
    parser.add_argument('--md', default='', help='write the table here')
    args = parser.parse_args(argv)
    result = evaluate(args.datasets, args.work, args.frames, args.seed, args.composites)
    # NumPy scalars -> plain JSON numbers
    result = json.loads(json.dumps(result, default=lambda v: v.item()))
    if args.json:
        atomic_write_json(args.json, result)
    table = markdown(result)
    if args.md:
        atomic_write_text(args.md, table)
    sys.stdout.write(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
