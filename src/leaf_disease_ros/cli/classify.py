"""
``leaf-disease-classify``: classify leaf photos, or evaluate a model on class folders.

Usage::

    leaf-disease-classify PATH... [--model MODEL.onnx] [--backend auto] [--top-k K]
                          [--json [OUT.json]]

- a file prints its top-k labels with calibrated scores;
- a folder of images (no subfolders) classifies each image;
- a folder of class subfolders (named by the model's labels) prints accuracy,
  macro-F1, per-class precision/recall/F1 and the confusion matrix, plus what the
  ``unknown`` rejection does at the card's threshold; a class's images are every
  image below its folder, at any depth; images lying next to the class folders have
  no class and are reported, not scored. ``--json`` prints the same as JSON,
  ``--json OUT.json`` writes it to a file (atomically; the destination is checked
  before anything is classified);
- ``--explain DIR`` also writes a saliency picture of every classified image into
  DIR (``<folder>/<name>.saliency.png``: occlusion through the same backend, see
  ``leaf-disease-explain``). DIR must be new, empty or an earlier saliency folder.

Outputs never land on an input: ``--json`` may not be a classified photo, the model
or its card, lie inside a classified folder, or be a FIFO, a device or a folder;
``--explain`` may not hold or lie inside an input (the pictures would be classified
with the photos next time). Both are checked before anything is classified.

Each photo is classified whole: it is one crop through the card's preprocessing,
exactly as in training and export. A file is never dropped silently: unreadable or
non-image files, images without colour (grey, black) and images too small for the
model's input are reported on stderr with the reason, counted, and not classified
(a confident label on them would be a lie); so are images on which the model returns
NaN, infinite or overflowing outputs (a broken model or engine). Exit status: 0 when
something was classified, 1 when nothing could be, 2 for a usage error (a path that does not
exist, an unwritable ``--json``), a model or a dataset error.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.inference.base import Backend
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import DatasetError, LeafDiseaseError, OutputError
from leaf_disease_ros.perception.image_checks import (has_colour, NO_COLOUR_REASON,
                                                      read_image_file, too_small,
                                                      too_small_reason)
from leaf_disease_ros.perception.image_folders import (entry_is_file, entry_is_folder,
                                                       is_image_file, list_class_folders)
from leaf_disease_ros.perception.metrics import classification_report, format_report
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import (check_output_file, check_output_folder,
                                                      check_outputs_apart, write_manifest)
from leaf_disease_ros.perception.postprocess import (BROKEN_MODEL_FIX, broken_rows,
                                                     Classification, classify, softmax)
from leaf_disease_ros.perception.preprocess import preprocess

BATCH = 16
#: the command a saliency folder's manifest names (classify --explain and explain alike)
EXPLAIN_COMMAND = 'leaf-disease-explain'


def _out(text: str) -> None:
    if sys.stdout is not None:  # None: started with standard output closed (>&-)
        sys.stdout.write(text + '\n')


def _err(text: str) -> None:
    if sys.stderr is not None:
        sys.stderr.write(text + '\n')


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-classify',
        description='Classify grape leaf photos, or evaluate a model on a folder of class '
                    'subfolders.')
    parser.add_argument('paths', nargs='+', metavar='PATH',
                        help='image files, folders of images, or folders of class subfolders')
    parser.add_argument('--model', default='',
                        help='ONNX model (its card is the .json beside it) or TensorRT engine; '
                             'default: the shipped model')
    parser.add_argument('--backend', default='auto', choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--top-k', type=int, default=3, help='labels printed per image')
    parser.add_argument('--json', nargs='?', const='-', default=None, metavar='OUT.json',
                        help='print the results as JSON, or write them to OUT.json')
    parser.add_argument('--explain', default='', metavar='DIR',
                        help='also write a saliency picture of each image into DIR')
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error('--top-k must be >= 1')
    return args


def read_image(path: str) -> Optional[np.ndarray]:
    """Return the BGR uint8 image at ``path``, or None when it cannot be read or decoded."""
    return read_image_file(path)[0]


class Classifier:
    """Whole-image classification with one backend, in batches."""

    def __init__(self, backend: Backend, top_k: int) -> None:
        self.backend = backend
        self.card = backend.card
        self.top_k = top_k
        self.classified: List[str] = []  # every path classified, in order
        self.broken: List[str] = []  # paths the model gave non-finite outputs on

    def run(self, paths: Sequence[str]) -> Tuple[List[Tuple[str, Classification]], List[str]]:
        """Classify ``paths``; return (path, result) pairs and the paths skipped."""
        done: List[Tuple[str, Classification]] = []
        skipped: List[str] = []
        batch_paths: List[str] = []
        batch_images: List[np.ndarray] = []
        height, width = self.card.input_hw_px
        first_broken = len(self.broken)
        for path in paths:
            image, problem = read_image_file(path)
            if image is None:
                pass
            elif too_small(image, self.card.input_hw_px):
                problem = too_small_reason(image, self.card.input_hw_px)
            elif not has_colour(image):
                problem = NO_COLOUR_REASON
            if problem or image is None:
                _err(f'skipped {path}: {problem}')
                skipped.append(path)
                continue
            batch_paths.append(path)
            batch_images.append(image)
            if len(batch_images) == min(BATCH, self.backend.max_batch):
                done += self._classify(batch_paths, batch_images)
                batch_paths, batch_images = [], []
        if batch_images:
            done += self._classify(batch_paths, batch_images)
        return done, skipped + self.broken[first_broken:]

    def _classify(self, paths: List[str], images: List[np.ndarray]
                  ) -> List[Tuple[str, Classification]]:
        logits = self.backend.infer(preprocess(images, self.card))
        broken = broken_rows(logits)
        for path in np.asarray(paths, dtype=object)[broken]:
            _err(f'skipped {path}: the model returned NaN, infinite or overflowing outputs '
                 f'on it; {BROKEN_MODEL_FIX}')
            self.broken.append(str(path))
        keep = np.flatnonzero(~broken)
        paths = [paths[i] for i in keep]
        self.classified += paths
        probs = softmax(logits[keep], self.card.temperature)
        results = classify(probs, self.card.labels, self.card.non_disease_labels, self.top_k,
                           self.card.unknown_threshold)
        return list(zip(paths, results))


def _is_class_folder_set(folder: str) -> bool:
    return any(entry_is_folder(entry) and not entry.name.startswith('.')
               for entry in os.scandir(folder))


def evaluate_folder(classifier: Classifier, folder: str) -> Dict[str, Any]:
    """Evaluate on a folder of class subfolders; return the report (JSON-ready)."""
    card = classifier.card
    folders = sorted(entry.name for entry in os.scandir(folder)
                     if entry_is_folder(entry) and not entry.name.startswith('.'))
    strangers = [name for name in folders if name not in card.labels]
    if strangers:
        raise DatasetError(f'{folder}: class folder(s) {", ".join(strangers)} are not labels of '
                           f'the model ({", ".join(card.labels)})')
    labels, samples, not_images = list_class_folders(folder, folders)
    for path in not_images:
        _err(f'skipped {path}: not an image file')
    loose = sorted(entry.path for entry in os.scandir(folder)
                   if entry_is_file(entry) and not entry.name.startswith('.')
                   and is_image_file(entry.name))
    for path in loose:
        _err(f'skipped {path}: an image next to the class folders has no class; move it '
             'into its class folder to evaluate it')
    index_of = {label: card.labels.index(label) for label in labels}
    truth = {s.path: index_of[labels[s.label_index]] for s in samples}
    done, skipped = classifier.run([s.path for s in samples])
    true_idx = [truth[path] for path, _ in done]
    # Figures of the classifier itself: the top-1 label, whatever its score.
    top1 = [card.labels.index(result.top_k[0][0]) for _, result in done]
    report = classification_report(true_idx, top1, card.labels)
    rejected = [result.is_unknown for _, result in done]
    accepted = [t == p for t, p, r in zip(true_idx, top1, rejected) if not r]
    report['unknown_rejection'] = {
        'threshold': card.unknown_threshold,
        'count': int(sum(rejected)),
        'unknown_rate': float(np.mean(rejected)) if rejected else 0.0,
        'accepted': len(accepted),
        'accepted_accuracy': float(np.mean(accepted)) if accepted else 0.0,
    }
    report['folder'] = os.path.abspath(folder)
    report['model'] = classifier.backend.describe()
    report['skipped'] = skipped + not_images + loose
    report['files_found'] = len(samples) + len(not_images) + len(loose)
    return report


def rejection_line(rejection: Dict[str, Any], count: int) -> str:
    """Say what the card's ``unknown`` threshold does to ``count`` images, in counts."""
    return (f"unknown rejection at {rejection['threshold']:.3f}: {rejection['count']} of "
            f"{count} images ({rejection['unknown_rate']:.2%}) fall to unknown; accuracy of "
            f"the other {rejection['accepted']}: {rejection['accepted_accuracy']:.4f}")


def check_outputs(args: argparse.Namespace) -> None:
    """
    Refuse ``--json`` and ``--explain`` destinations before any work is done.

    The shared output rule (:mod:`leaf_disease_ros.perception.output_paths`): never an
    input (photo, folder, model, card) or inside an input folder, never a special
    file, never a folder another command or a person filled, never each other.

    :raises OutputError: naming the conflict and what to do instead.
    """
    inputs = list(args.paths)
    if args.model:
        inputs += [args.model, card_path_for_model(args.model)]
    check_outputs_apart([('--json', '' if args.json in (None, '-') else args.json),
                         ('--explain', args.explain)])
    if args.json is not None:
        check_output_file(args.json, inputs, what='--json')
    if args.explain:
        check_output_folder(args.explain, inputs, what='--explain', command=EXPLAIN_COMMAND)


def _format_file(path: str, result: Classification) -> str:
    ranked = ', '.join(f'{label} {score:.3f}' for label, score in result.top_k)
    return f'{path}: {result.label} ({result.score:.3f})   top-{len(result.top_k)}: {ranked}'


def explain_paths(backend: Backend, paths: Sequence[str], out_dir: str) -> None:
    """Write ``out_dir/<folder>/<name>.saliency.png`` for each image (a few at a time)."""
    from leaf_disease_ros.explain.images import explain_images, ExplainSettings

    totals: Dict[str, float] = {'images': 0, 'tiles': 0, 'ms_per_tile': 0.0}
    for start in range(0, len(paths), BATCH):
        items = []
        for path in paths[start:start + BATCH]:
            image, problem = read_image_file(path)
            problem = problem or (too_small_reason(image, backend.card.input_hw_px)
                                  if image is not None else '')
            if problem:
                _err(f'not explained {path}: {problem}')
            elif image is not None:
                name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))),
                                    os.path.basename(path))
                items.append((name, image))
        _, part = explain_images(items, backend.card, out_dir, ExplainSettings(),
                                 backend=backend)
        totals['ms_per_tile'] = ((totals['ms_per_tile'] * totals['tiles']
                                  + part['ms_per_tile'] * part['tiles'])
                                 / max(1, totals['tiles'] + part['tiles']))
        totals['images'] += part['images']
        totals['tiles'] += part['tiles']
    _err(f"wrote {int(totals['images'])} saliency pictures into {out_dir} "
         f"(occlusion, {totals['ms_per_tile']:.0f} ms per image)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``leaf-disease-classify``; returns the exit status."""
    args = parse_args(argv)
    if sys.stdout is None and args.json in (None, '-'):
        _err('error: standard output is closed, so the results would be lost; give '
             '--json OUT.json to write them to a file')
        return 2
    try:
        backend = load_backend(args.model, args.backend, warn=_err)
    except LeafDiseaseError as exc:
        _err(f'error: {exc}')
        return 2
    missing = [path for path in args.paths if not os.path.exists(path)]
    try:
        if missing:
            raise OutputError('no such file or folder: ' + ', '.join(missing))
        check_outputs(args)
    except OutputError as exc:
        backend.close()
        _err(f'error: {exc}')
        return 2
    classifier = Classifier(backend, args.top_k)
    evaluations: List[Dict[str, Any]] = []
    files: List[Dict[str, Any]] = []
    classified = 0
    try:
        loose: List[str] = []
        for path in args.paths:
            if os.path.isdir(path) and _is_class_folder_set(path):
                report = evaluate_folder(classifier, path)
                evaluations.append(report)
                classified += report['count']
                if args.json is None:
                    _out(f'== {path} (top-1 label of every image, before the unknown '
                         'rejection)')
                    _out(format_report(report))
                    _out(rejection_line(report['unknown_rejection'], report['count']))
                    if report['skipped']:
                        _out(f"not evaluated: {len(report['skipped'])} of "
                             f"{report['files_found']} files (reasons on stderr)")
            elif os.path.isdir(path):
                entries = sorted(os.path.join(path, n) for n in os.listdir(path))
                loose += [p for p in entries if os.path.isfile(p)]
            else:
                loose.append(path)
        candidates = [p for p in loose if is_image_file(p) or not os.path.splitext(p)[1]]
        for path in sorted(set(loose) - set(candidates)):
            _err(f'skipped {path}: not an image file')
        done, _ = classifier.run(candidates)
        not_classified = len(loose) - len(done)
        if not_classified and args.json is None and done:
            _out(f'not classified: {not_classified} of {len(loose)} files (reasons on stderr)')
        classified += len(done)
        for path, result in done:
            files.append({'path': path, 'label': result.label, 'score': result.score,
                          'is_disease': result.is_disease,
                          'top_k': [{'label': lab, 'score': s} for lab, s in result.top_k]})
            if args.json is None:
                _out(_format_file(path, result))
        if args.explain:
            explain_paths(backend, classifier.classified, args.explain)
            write_manifest(args.explain, EXPLAIN_COMMAND)
    except LeafDiseaseError as exc:
        _err(f'error: {exc}')
        return 2
    finally:
        backend.close()
    if args.json is not None:
        document = {'files': files, 'evaluations': evaluations,
                    'not_classified': sorted(set(loose) - {f['path'] for f in files})}
        if args.json == '-':
            _out(json.dumps(document, indent=2))
        else:
            try:
                atomic_write_json(args.json, document)
            except OSError as exc:
                _err(f'error: cannot write --json {args.json}: {exc}')
                return 2
            _err(f'wrote {args.json}')
    if classified == 0:
        _err('error: nothing was classified')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
