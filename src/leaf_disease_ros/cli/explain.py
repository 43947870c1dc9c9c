"""
``leaf-disease-explain``: saliency maps of leaf photos or tiles, as PNG pictures.

Usage::

    leaf-disease-explain PATH... [--out DIR] [--model M.onnx] [--backend auto]
                         [--method occlusion|rise|gradcam] [--checkpoint RUN/checkpoint_best.pt]
                         [--tile-size PX] [--target LABEL] [--json OUT.json]

PATH is an image file or a folder (searched recursively; class subfolders are kept
in the output names). Each image gets ``DIR/<name>.saliency.png``: the photo with the
heat map blended and the label, score and method written on it.

- ``occlusion`` (default) and ``rise`` go through the backend, so they explain the
  ONNX model or the TensorRT engine the robot runs, without PyTorch; occlusion
  costs ``grid**2 + 1`` inferences per tile (50 by default), sent in batches of the
  backend's maximum batch; RISE ``masks + 1``;
- ``gradcam`` needs PyTorch (``train`` extra) and the training checkpoint.

``--tile-size`` cuts each image into tiles as the robot's pipeline does and explains
every tile (field photos: which tiles are called what, and why). The time per tile
is printed at the end. Exit status: 0 done, 1 nothing could be read, 2 usage or
model error. ``--out`` and ``--json`` follow the shared output rule (never an input,
inside one or holding one; ``--out`` new, empty or an earlier saliency folder).
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.explain.images import explain_images, ExplainSettings
from leaf_disease_ros.explain.saliency import DEFAULT_GRID, DEFAULT_MASKS
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.image_checks import read_image_file, too_small_reason
from leaf_disease_ros.perception.image_folders import is_image_file
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import (check_output_file, check_output_folder,
                                                      check_outputs_apart, folder_state,
                                                      remove_partial_output, write_manifest)

METHODS = ('occlusion', 'rise', 'gradcam')
#: the command a saliency folder's manifest names (as classify --explain's)
EXPLAIN_COMMAND = 'leaf-disease-explain'


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-explain',
        description='Write saliency maps (what the model looks at) of leaf photos or tiles '
                    'as PNG pictures with the label and score written on them.')
    parser.add_argument('paths', nargs='+', metavar='PATH', help='image files or folders')
    parser.add_argument('--out', default='saliency', help='output folder (default: %(default)s)')
    parser.add_argument('--model', default='',
                        help='ONNX model (card beside it) or TensorRT engine; default: shipped')
    parser.add_argument('--backend', default='auto', choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--method', default='occlusion', choices=METHODS)
    parser.add_argument('--checkpoint', default='',
                        help='training checkpoint for --method gradcam (RUN/checkpoint_best.pt)')
    parser.add_argument('--grid', type=int, default=DEFAULT_GRID,
                        help='occlusion windows per side (grid**2 + 1 inferences per tile)')
    parser.add_argument('--masks', type=int, default=DEFAULT_MASKS,
                        help='RISE masks (masks + 1 inferences per tile)')
    parser.add_argument('--tile-size', type=int, default=0,
                        help='cut images into tiles of this side, px (0: whole image)')
    parser.add_argument('--tile-stride', type=int, default=0, help='tile step, px (0: tile size)')
    parser.add_argument('--target', default='',
                        help='explain this label instead of the predicted one')
    parser.add_argument('--json', default='', metavar='OUT.json',
                        help='also write the per-image results and the timing as JSON')
    args = parser.parse_args(argv)
    if args.method == 'gradcam' and not args.checkpoint:
        parser.error('--method gradcam needs --checkpoint RUN/checkpoint_best.pt')
    if args.grid < 1 or args.masks < 2 or args.tile_size < 0 or args.tile_stride < 0:
        parser.error('--grid must be >= 1, --masks >= 2, --tile-size and --tile-stride >= 0')
    return args


def list_images(paths: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Return ``(name, path)`` of the images under ``paths`` and the paths skipped."""
    found: List[Tuple[str, str]] = []
    skipped: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if is_image_file(name):
                        found.append((os.path.relpath(full, path), full))
        elif os.path.isfile(path) and is_image_file(path):
            found.append((os.path.basename(path), path))
        else:
            skipped.append(path)
    return found, skipped


def _gradcam_explainer(checkpoint: str, target: str) -> Tuple[Any, Any]:
    """Return ``(card, explainer)`` of a checkpoint (imports PyTorch)."""
    from leaf_disease_ros.training.gradcam import gradcam, load_checkpoint_model

    model, card = load_checkpoint_model(checkpoint)
    index = _target_index(card.labels, target)

    def explainer(tiles: Sequence[np.ndarray]) -> Any:
        return gradcam(model, card, tiles, None if index is None else [index] * len(tiles))
    return card, explainer


def _warn(text: str) -> None:
    sys.stderr.write(text + '\n')


def _target_index(labels: Sequence[str], target: str) -> Optional[int]:
    if not target:
        return None
    if target not in labels:
        raise LeafDiseaseError(f'--target {target!r} is not a label of the model '
                               f'({", ".join(labels)})')
    return list(labels).index(target)


def check_outputs(args: argparse.Namespace) -> None:
    """
    Refuse ``--out`` and ``--json`` before any work (the shared output rule).

    Neither may be, hold or lie inside an input (photos, folders, model, card,
    checkpoint), be a special file, or (``--out``) a folder another command or a
    person filled; an earlier saliency folder (its manifest) may be written again.

    :raises OutputError: naming the conflict and what to do instead.
    """
    inputs = list(args.paths) + [args.checkpoint]
    if args.model:
        inputs += [args.model, card_path_for_model(args.model)]
    check_outputs_apart([('--out', args.out), ('--json', args.json)])
    check_output_folder(args.out, inputs, what='--out', command=EXPLAIN_COMMAND)
    if args.json:
        check_output_file(args.json, inputs, what='--json', allow_stdout=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``leaf-disease-explain``; returns the exit status."""
    args = parse_args(argv)
    out, err = sys.stdout, sys.stderr
    images, skipped = list_images(args.paths)
    for path in skipped:
        err.write(f'skipped {path}: not an image file or folder\n')
    backend = None
    before = folder_state(args.out)
    try:
        check_outputs(args)
        if args.method == 'gradcam':
            card, explainer = _gradcam_explainer(args.checkpoint, args.target)
        else:
            backend = load_backend(args.model, args.backend, warn=_warn)
            card, explainer = backend.card, None
        settings = ExplainSettings(
            method=args.method, grid=args.grid, masks=args.masks, tile_size_px=args.tile_size,
            tile_stride_px=args.tile_stride, target=_target_index(card.labels, args.target))
        items = []
        for name, path in images:
            image, problem = read_image_file(path)
            if image is not None:  # a 5000x1 image would be one 1x1 tile, enlarged 256x
                problem = too_small_reason(image, card.input_hw_px)
            if image is None or problem:
                err.write(f'skipped {path}: {problem}\n')
                continue
            items.append((name, image))
        records, totals = explain_images(items, card, args.out, settings, backend=backend,
                                         explainer=explainer)
        if records:
            write_manifest(args.out, EXPLAIN_COMMAND)
    except LeafDiseaseError as exc:
        err.write(f'leaf-disease-explain: error: {exc}\n')
        return 2
    except OSError as exc:  # full disk, file size limit, I/O error: nothing half-written
        remove_partial_output(args.out, before)
        err.write(f'leaf-disease-explain: error: cannot write {args.out}: '
                  f'{exc.strerror or exc}; nothing was written\n')
        return 2
    finally:
        if backend is not None:
            backend.close()
    for record in records:
        out.write(f"{record['png']}: {record['label']} {record['score']:.3f}"
                  + (f" (best of {record['tiles']} tiles)" if record['tiles'] > 1 else '')
                  + '\n')
    if not records:
        err.write('leaf-disease-explain: error: no image could be read\n')
        return 1
    per_tile = totals['inferences'] / max(1, totals['tiles'])
    out.write(f"{args.method}: {totals['tiles']} tiles of {totals['images']} images, "
              f"{per_tile:.0f} inferences per tile in {totals['batched_calls']} batched calls, "
              f"{totals['ms_per_tile']:.0f} ms per tile ({card.name}"
              + (f', {backend.name}' if backend is not None else ', PyTorch') + ')\n')
    if args.json:
        document: Dict[str, Any] = {'images': records, 'totals': totals, 'method': args.method,
                                    'model': card.name}
        try:
            atomic_write_json(args.json, document)
        except OSError as exc:
            err.write(f'leaf-disease-explain: error: cannot write {args.json}: '
                      f'{exc.strerror or exc}; the pictures are in {args.out}\n')
            return 2
        err.write(f'wrote {args.json}\n')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
