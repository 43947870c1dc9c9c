"""
``leaf-disease-embed``: an embedding map of a labelled image set, and a domain check.

Usage::

    leaf-disease-embed DATA [--out DIR] [--model M.onnx] [--projection pca|tsne|both]
                       [--max-points 2000] [--fit TRAIN_DIR] [--ood DIR [--ood-tile-size PX]]

DATA is a folder of class subfolders (a dataset, ``leaf-disease-split`` output, or
the ``tiles/`` folder a replay writes: one subfolder per ground-truth label). Every
image is embedded (the model's penultimate-layer features, see
:mod:`leaf_disease_ros.explain.embeddings`) and classified. Written into DIR:

- ``embedding_map_<projection>.png``: the 2-D map coloured by folder label,
  misclassified images as crosses;
- ``embedding_map_<projection>.html``: the same map as one self-contained page, a
  thumbnail, the label and the prediction on hover;
- ``embedding.json``: counts, accuracy, the silhouette score of the folder labels
  in embedding space, and the domain check.

With ``--ood DIR`` (images that are not what the model was trained on: field photos,
sky, soil...; ``--ood-tile-size`` cuts them into tiles as the robot does), the AUROC
of the embedding distance and of the softmax score for DATA (in domain) against
them is reported (:mod:`leaf_disease_ros.explain.domain_check`). The distance is the
card's (``embedding_distance``), else fitted on ``--fit`` (the training images),
else on DATA itself (optimistic, said so). Exit status: 0 done, 2 error.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.explain.domain_check import (compare_scores, DISTANCE_RULE,
                                                   distance_threshold)
from leaf_disease_ros.explain.embedding_map import (map_html, MapPoint, project,
                                                    render_map_png, silhouette_score,
                                                    subsample, thumbnail_jpeg)
from leaf_disease_ros.explain.embeddings import embed_images, open_embedding_backend
from leaf_disease_ros.explain.images import read_image
from leaf_disease_ros.inference.base import Backend
from leaf_disease_ros.perception.atomic_io import (atomic_write_bytes, atomic_write_json,
                                                   atomic_write_text)
from leaf_disease_ros.perception.embedding_distance import EmbeddingDistance, fit_distance
from leaf_disease_ros.perception.errors import DatasetError, LeafDiseaseError
from leaf_disease_ros.perception.image_folders import is_image_file, list_class_folders
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import (check_output_folder, folder_state,
                                                      remove_partial_output, write_manifest)
from leaf_disease_ros.perception.plots import encode_png
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.tiling import crops, tile_boxes, vegetation_fractions

CHUNK_IMAGES = 64
#: the command an embedding map folder's manifest names
EMBED_COMMAND = 'leaf-disease-embed'
VEGETATION_FRACTION = 0.10
EXG_THRESHOLD = 0.05


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-embed',
        description='Draw the embedding map of a folder of class subfolders (PNG and '
                    'interactive HTML), with the silhouette score, and check how well the '
                    'embedding distance tells in-domain from out-of-domain images.')
    parser.add_argument('data', help='folder of class subfolders')
    parser.add_argument('--out', default='embedding_map', help='output folder')
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped one)')
    parser.add_argument('--backend', default='auto', choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--projection', default='pca', choices=('pca', 'tsne', 'both'),
                        help='tsne needs scikit-learn (the explain extra)')
    parser.add_argument('--max-points', type=int, default=2000,
                        help='points drawn (stratified sample; the silhouette uses all)')
    parser.add_argument('--fit', default='',
                        help='class folders to fit the distance on (the training images)')
    parser.add_argument('--ood', default='', help='folder of out-of-domain images')
    parser.add_argument('--ood-tile-size', type=int, default=0,
                        help='cut --ood images into tiles of this side, px (0: whole images)')
    parser.add_argument('--max-reject', type=float, default=0.02,
                        help='share of DATA the fitted distance threshold may reject')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads (0: auto)')
    args = parser.parse_args(argv)
    if args.max_points < 3 or args.ood_tile_size < 0 or not 0 <= args.max_reject < 1:
        parser.error('--max-points >= 3, --ood-tile-size >= 0, 0 <= --max-reject < 1')
    return args


def _embed_paths(backend: Backend, paths: Sequence[str], thumbnails: bool
                 ) -> Tuple[np.ndarray, np.ndarray, List[bytes], List[int]]:
    """Return logits, embeddings, thumbnails and the indices of the readable paths."""
    logits: List[np.ndarray] = []
    features: List[np.ndarray] = []
    thumbs: List[bytes] = []
    kept: List[int] = []
    for start in range(0, len(paths), CHUNK_IMAGES):
        images = []
        for index in range(start, min(len(paths), start + CHUNK_IMAGES)):
            image = read_image(paths[index])
            if image is None:
                sys.stderr.write(f'skipped {paths[index]}: not a readable image\n')
                continue
            images.append(image)
            kept.append(index)
            if thumbnails:
                thumbs.append(thumbnail_jpeg(image))
        if images:
            out = embed_images(backend, images)
            logits.append(out[0])
            features.append(out[1])
    if not logits:
        raise DatasetError('no image could be read')
    return np.concatenate(logits), np.concatenate(features), thumbs, kept


def _class_folder(folder: str, labels: Optional[Sequence[str]] = None
                  ) -> Tuple[Tuple[str, ...], List[str], List[str]]:
    names, samples, _ = list_class_folders(folder, labels)
    return names, [s.path for s in samples], [names[s.label_index] for s in samples]


def _ood_tiles(backend: Backend, folder: str, tile_size_px: int
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return logits, embeddings and vegetation fractions of the out-of-domain tiles."""
    paths = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        paths += [os.path.join(root, n) for n in sorted(names) if is_image_file(n)]
    logits: List[np.ndarray] = []
    features: List[np.ndarray] = []
    fractions: List[np.ndarray] = []
    for path in paths:
        image = read_image(path)
        if image is None:
            continue
        if tile_size_px:
            boxes = tile_boxes(image.shape[0], image.shape[1], 'grid', tile_size_px,
                               tile_size_px)
        else:
            boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], dtype=np.int32)
        fractions.append(vegetation_fractions(image, boxes, EXG_THRESHOLD))
        out = embed_images(backend, [np.ascontiguousarray(c) for c in crops(image, boxes)])
        logits.append(out[0])
        features.append(out[1])
    if not logits:
        raise DatasetError(f'--ood {folder}: no readable image')
    return np.concatenate(logits), np.concatenate(features), np.concatenate(fractions)


def fit_present_classes(features: np.ndarray, indices: np.ndarray, labels: Sequence[str]
                        ) -> Tuple[EmbeddingDistance, List[str]]:
    """
    Fit the distance on the classes that have images; return it and the classes without.

    The distance is to the nearest class mean, so a class without images (the shipped
    model's ``background`` in a folder of leaf photos) is simply not a mean to be near:
    fitting it would need rows it does not have (``fit_distance`` refuses).

    :raises DatasetError: no class has an image.
    """
    present = sorted({int(i) for i in indices})
    if not present:
        raise DatasetError('no image of any label of the model to fit the distance on')
    remap = {index: rank for rank, index in enumerate(present)}
    distance = fit_distance(features, np.array([remap[int(i)] for i in indices]), len(present))
    return distance, [label for index, label in enumerate(labels) if index not in remap]


def domain_check(args: argparse.Namespace, backend: Backend, labels: Sequence[str],
                 in_logits: np.ndarray, in_features: np.ndarray) -> Dict[str, Any]:
    """Return the AUROC comparison of the distance and the softmax score (see module doc)."""
    card = backend.card
    distance: Optional[EmbeddingDistance] = card.embedding_distance
    source = 'the model card'
    threshold = None
    if distance is None:
        if args.fit:
            _, fit_paths, fit_labels = _class_folder(args.fit, card.labels)
            _, fit_features, _, kept = _embed_paths(backend, fit_paths, thumbnails=False)
            indices = np.array([card.labels.index(fit_labels[i]) for i in kept])
            source = f'fitted on {len(kept)} images of {args.fit}'
        else:
            labelled = [i for i, lab in enumerate(labels) if lab in card.labels]
            fit_features = in_features[labelled]
            indices = np.array([card.labels.index(labels[i]) for i in labelled])
            source = f'fitted on DATA itself ({len(labelled)} images: optimistic)'
        distance, absent = fit_present_classes(fit_features, indices, card.labels)
        if absent:
            source += f" (no images of {', '.join(absent)}: their class means are left out)"
        threshold = distance_threshold(distance.distances(in_features), args.max_reject)
    elif distance.unknown_threshold is not None:
        threshold = distance.unknown_threshold
    ood_logits, ood_features, fractions = _ood_tiles(backend, args.ood, args.ood_tile_size)
    report: Dict[str, Any] = {
        'distance': source, 'ood': os.path.abspath(args.ood),
        'ood_tile_size_px': args.ood_tile_size,
        'threshold_rule': DISTANCE_RULE.format(reject=args.max_reject)
        if card.embedding_distance is None else 'from the model card',
        'all': compare_scores(distance, card.temperature, in_logits, in_features, ood_logits,
                              ood_features, threshold, card.unknown_threshold)}
    vegetated = fractions >= VEGETATION_FRACTION
    for name, rows in (('vegetation_tiles', vegetated), ('non_vegetation_tiles', ~vegetated)):
        if rows.any():
            report[name] = compare_scores(distance, card.temperature, in_logits, in_features,
                                          ood_logits[rows], ood_features[rows], threshold,
                                          card.unknown_threshold)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``leaf-disease-embed``; returns the exit status."""
    args = parse_args(argv)
    out, err = sys.stdout, sys.stderr
    started = time.perf_counter()
    backend: Optional[Backend] = None
    before = folder_state(args.out)
    try:
        inputs = [args.data, args.ood] + ([args.model, card_path_for_model(args.model)]
                                          if args.model else [])
        check_output_folder(args.out, inputs, what='--out', command=EMBED_COMMAND)
        backend = open_embedding_backend(args.model, args.backend,
                                         intra_op_threads=args.threads)
        card = backend.card
        _, paths, folder_labels = _class_folder(args.data)
        logits, features, thumbs, kept = _embed_paths(backend, paths, thumbnails=True)
        labels = [folder_labels[i] for i in kept]
        probs = softmax(logits, card.temperature)
        predicted = [card.labels[i] for i in probs.argmax(axis=1)]
        points = [MapPoint(label, pred, float(p.max()), os.path.relpath(paths[i], args.data),
                           thumb)
                  for label, pred, p, i, thumb in zip(labels, predicted, probs, kept, thumbs)]
        known = [i for i, label in enumerate(labels) if label in card.labels]
        summary: Dict[str, Any] = {
            'data': os.path.abspath(args.data), 'model': backend.model_id,
            'embedding': card.embedding_name, 'embedding_size': int(features.shape[1]),
            'images': len(points),
            'by_label': {lab: labels.count(lab) for lab in sorted(set(labels))},
            'accuracy': (float(np.mean([labels[i] == predicted[i] for i in known]))
                         if known else None),
            'silhouette': silhouette_score(features, labels) if len(set(labels)) > 1 else None,
            'silhouette_space': f'embedding ({features.shape[1]}-D, Euclidean), folder labels',
        }
        if args.ood:
            summary['domain_check'] = domain_check(args, backend, labels, logits, features)
        os.makedirs(args.out, exist_ok=True)
        chosen = subsample(len(points), labels, args.max_points)
        rows = np.arange(len(points)) if chosen is None else chosen
        shown = [points[i] for i in rows]
        methods = ('pca', 'tsne') if args.projection == 'both' else (args.projection,)
        summary['maps'] = {}
        for method in methods:
            xy = project(features[rows], method)
            title = (f'{card.name}: {method.upper()} of {len(shown)} embeddings of '
                     f'{os.path.basename(os.path.normpath(args.data))}; silhouette '
                     + (f"{summary['silhouette']:.3f}" if summary['silhouette'] is not None
                        else 'n/a'))
            png = os.path.join(args.out, f'embedding_map_{method}.png')
            page = os.path.join(args.out, f'embedding_map_{method}.html')
            atomic_write_bytes(png, encode_png(render_map_png(xy, shown, card.labels, title)))
            atomic_write_text(page, map_html(
                xy, shown, card.labels, title,
                f'{len(shown)} of {len(points)} images; accuracy '
                + (f"{summary['accuracy']:.3f}" if summary['accuracy'] is not None else 'n/a')
                + '; hover a point for its thumbnail'))
            summary['maps'][method] = {'png': png, 'html': page}
        summary['seconds'] = time.perf_counter() - started
        atomic_write_json(os.path.join(args.out, 'embedding.json'), summary)
        write_manifest(args.out, EMBED_COMMAND)
    except LeafDiseaseError as exc:
        err.write(f'leaf-disease-embed: error: {exc}\n')
        return 2
    except OSError as exc:  # full disk, file size limit, I/O error: nothing half-written
        remove_partial_output(args.out, before)
        err.write(f'leaf-disease-embed: error: cannot write {args.out}: '
                  f'{exc.strerror or exc}; nothing was written\n')
        return 2
    finally:
        if backend is not None:
            backend.close()
    out.write(f"embedded {summary['images']} images ({summary['embedding_size']}-D, "
              f'{card.name}); accuracy '
              + (f"{summary['accuracy']:.3f}" if summary['accuracy'] is not None else 'n/a')
              + '; silhouette '
              + (f"{summary['silhouette']:.3f}" if summary['silhouette'] is not None else 'n/a')
              + '\n')
    check = summary.get('domain_check')
    if check:
        for name in ('all', 'vegetation_tiles', 'non_vegetation_tiles'):
            if name in check:
                part = check[name]
                out.write(f"domain check ({name}: {part['in_domain']} in / "
                          f"{part['out_of_domain']} out): AUROC distance "
                          f"{part['auroc_distance']:.3f}, softmax {part['auroc_softmax']:.3f}\n")
    for method, files in summary['maps'].items():
        out.write(f"{method}: {files['png']} {files['html']}\n")
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
