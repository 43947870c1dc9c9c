"""
Field-like validation measures and the field operating point of a leaf classifier.

Owns how a model (ONNX + card, through onnxruntime, so the old shipped model and new
ones are measured by one code path) is scored on:

- PlantVillage leaf-grouped validation (photo-number blocks of 40, seed 0): accuracy;
- field-like validation composites (held-out leaves on held-out backgrounds, see
  :mod:`field_sim`), split in two halves by source leaf / tile index: half ``A`` chooses
  the temperature and the thresholds, half ``B`` reports (so the reported rates are not
  the ones the thresholds were tuned on):
  healthy-tile finding rate, background-tile finding rate, disease-tile recall (a
  finding with the right disease label, and a finding of any disease), tile-level
  esca-vs-healthy AUROC;
- the real field photos of ``field_grape_small`` run the way the node runs them
  (frame resized to 1280 px wide, 256-px tiles every 256 px, excess-green vegetation
  gate with the node's default values): counts per label per photo and per folder.

A tile is a *finding* when its top label is a disease whose calibrated score clears the
unknown threshold, and its finding score clears the finding threshold (the node's rule:
below the unknown threshold it is ``unknown``, and ``disease_score_threshold`` gates
findings). The finding score is the card's ``calibration.finding_score``: the top
label's probability (``top_label``) or that of all diseases together (``disease_mass``).
"""
from dataclasses import dataclass
import glob
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception import tiling
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.metrics import auroc as _auroc
from leaf_disease_ros.perception.model_card import load_card, ModelCard
from leaf_disease_ros.perception.postprocess import finding_scores, softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.calibration import choose_unknown_threshold, fit_temperature
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.field_sim import KINDS, LABELS, read_bgr, VARIANTS

FRAME_WIDTH_PX = 1280
MAX_NEGATIVE_FINDING_RATE = 0.01
PV_LABELS = ('black_rot', 'esca', 'healthy', 'leaf_blight')
DISEASES = ('black_rot', 'esca', 'leaf_blight')


class OnnxModel:
    """An ONNX model and its card, run with onnxruntime on the CPU."""

    def __init__(self, card_path: str, threads: int = 2) -> None:
        import onnxruntime as ort
        self.card: ModelCard = load_card(card_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model_path = os.path.join(os.path.dirname(card_path), self.card.model_file)
        self.session = ort.InferenceSession(model_path, options,
                                            providers=['CPUExecutionProvider'])

    def logits(self, crops: Sequence[np.ndarray] | np.ndarray, batch_size: int = 64
               ) -> np.ndarray:
        """Return ``(N, C)`` float32 logits of BGR uint8 crops (any sizes)."""
        out = []
        for start in range(0, len(crops), batch_size):
            batch = preprocess(crops[start:start + batch_size], self.card)
            out.append(self.session.run([self.card.output_name],
                                        {self.card.input_name: batch})[0])
        return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------- materials
def pv_validation(pv_root: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """Return PlantVillage leaf-grouped validation photos (BGR uint8) and labels (4 classes)."""
    labels, _train, val, _ = build_split(pv_root, None, 'photo-blocks', 40, None, 0.2, 0)
    if tuple(labels) != PV_LABELS:
        raise ValueError(f'unexpected classes {labels}')
    return [read_bgr(s.path) for s in val], \
        np.array([s.label_index for s in val], np.int64)


@dataclass
class Composites:
    """
    Validation composites: tiles ``(N, S, S, 3)`` uint8, targets, kinds, half (0=A, 1=B).

    ``variant``: how each focal leaf was drawn (indices into ``field_sim.VARIANTS``);
    None for caches made before painted field symptoms.
    """

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    half: np.ndarray
    variant: Optional[np.ndarray] = None


def load_composites(path: str) -> Composites:
    """Load a validation cache and split it into halves A/B (by source leaf, else index)."""
    data = np.load(path)
    sources = data['source']
    half = np.empty(len(sources), np.int64)
    for i, source in enumerate(sources):
        key = str(source) if str(source) else f'tile{i}'
        half[i] = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2
    variant = data['variant'] if 'variant' in data.files else None
    return Composites(data['x'], data['y'], data['kind'], half, variant)


# ---------------------------------------------------------------- decisions
def findings(probs: np.ndarray, labels: Sequence[str], healthy: Sequence[str],
             unknown_threshold: float, finding_threshold: float,
             finding_score: str = 'top_label') -> np.ndarray:
    """
    Return ``(N,)`` bool: the node's finding decision (see the module docstring).

    :param healthy: the labels that are not a disease (healthy and background).
    :param finding_score: ``top_label`` or ``disease_mass`` (the card's choice).
    """
    top = probs.argmax(axis=1)
    is_disease = np.array([lab not in healthy for lab in labels])
    disease = is_disease[top] & (probs.max(axis=1) >= unknown_threshold)
    return disease & (finding_scores(probs, labels, healthy, finding_score)
                      >= finding_threshold)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Return the AUROC of scores higher for ``positive``; NaN when a side is empty."""
    if np.size(positive) == 0 or np.size(negative) == 0:
        return float('nan')
    return _auroc(negative, positive)


def composite_target_names(y: np.ndarray) -> np.ndarray:
    """Return the target names of composite tiles (5-class index -> name)."""
    return np.array(LABELS)[y]


def composite_measures(probs: np.ndarray, comp: Composites, mask: np.ndarray,
                       card: ModelCard, unknown_threshold: float,
                       finding_threshold: float) -> Dict[str, Any]:
    """Return finding rates, recall and AUROC on the composite tiles selected by ``mask``."""
    labels = list(card.labels)
    names = composite_target_names(comp.y[mask])
    p = probs[mask]
    found = findings(p, labels, card.non_disease_labels, unknown_threshold, finding_threshold,
                     card.finding_score)
    pred = np.array(labels)[p.argmax(axis=1)]
    is_disease = np.isin(names, DISEASES)
    healthy = names == 'healthy'
    background = names == 'background'
    correct_finding = found & (pred == names)
    esca_col = labels.index('esca')

    def rates(group: np.ndarray) -> Dict[str, Any]:
        return {'tiles': int(group.sum()),
                'disease_recall': (float(correct_finding[group & is_disease].mean())
                                   if (group & is_disease).any() else None),
                'negative_finding_rate': (float(found[group & ~is_disease].mean())
                                          if (group & ~is_disease).any() else None)}

    kinds = np.array(KINDS)[comp.kind[mask]]
    per_kind = {kind: rates(kinds == kind) for kind in sorted(set(kinds.tolist()))}
    per_variant: Dict[str, Any] = {}
    if comp.variant is not None:
        variants = np.array(VARIANTS)[comp.variant[mask]]
        per_variant = {variant: rates(variants == variant) for variant in VARIANTS[1:]}
    return {
        'tiles': int(mask.sum()),
        'healthy_tiles': int(healthy.sum()),
        'background_tiles': int(background.sum()),
        'disease_tiles': int(is_disease.sum()),
        'healthy_tile_finding_rate': float(found[healthy].mean()),
        'background_tile_finding_rate': float(found[background].mean()),
        'disease_tile_recall': float(correct_finding[is_disease].mean()),
        'disease_tile_any_finding_rate': float(found[is_disease].mean()),
        'esca_vs_healthy_auroc': auroc(p[names == 'esca', esca_col], p[healthy, esca_col]),
        'per_kind': per_kind,
        'per_variant': per_variant,
    }


def choose_operating_point(logits_a: np.ndarray, comp_y_a: np.ndarray,
                           pv_logits: Optional[np.ndarray], pv_y: Optional[np.ndarray],
                           card: ModelCard, fit_t: bool = True,
                           max_negative_rate: float = MAX_NEGATIVE_FINDING_RATE,
                           finding_score: str = 'top_label') -> Dict[str, Any]:
    """
    Return temperature, unknown and finding threshold chosen on half A of the composites.

    - temperature: minimises NLL on half A composites + PlantVillage validation
      (5-class targets; a 4-class model keeps its card's temperature);
    - unknown threshold: the project's rule (``choose_unknown_threshold``, reject at most
      2 % of that material, bounded to [1/C + 0.05, 0.9]);
    - finding threshold: the smallest score (grid of 0.001) at which both the
      healthy-tile and the background-tile finding rates on half A are at most
      ``max_negative_rate``; the smallest such threshold maximises disease recall.
      ``finding_score`` says what it is compared with (:func:`findings`).
    """
    labels = list(card.labels)
    names = composite_target_names(comp_y_a)
    if fit_t and 'background' in labels:
        all_logits = logits_a if pv_logits is None else np.concatenate([logits_a, pv_logits])
        all_y = comp_y_a if pv_y is None else np.concatenate([comp_y_a, pv_y])
        temperature = float(fit_temperature(all_logits, all_y))
        probs_all = softmax(all_logits, temperature)
        unknown = choose_unknown_threshold(probs_all, all_y, 0.02)
        unknown_threshold = unknown['threshold']
        unknown_rule = unknown['rule']
    else:
        temperature = card.temperature
        unknown_threshold = card.unknown_threshold
        unknown_rule = "the card's own (not refitted)"
    probs = softmax(logits_a, temperature)
    healthy = names == 'healthy'
    background = names == 'background'
    is_disease = np.isin(names, DISEASES)
    pred = np.array(labels)[probs.argmax(axis=1)]
    chosen = None
    for t in np.arange(0.0, 1.0, 0.001):
        found = findings(probs, labels, card.non_disease_labels, unknown_threshold, float(t),
                         finding_score)
        if found[healthy].mean() <= max_negative_rate and \
                found[background].mean() <= max_negative_rate:
            chosen = float(round(t, 3))
            break
    if chosen is None:
        chosen = 0.999
    found = findings(probs, labels, card.non_disease_labels, unknown_threshold, chosen,
                     finding_score)
    if finding_score == 'top_label':  # a top score below the unknown threshold is unknown
        chosen = max(chosen, float(unknown_threshold))
    score_words = ('calibrated disease score' if finding_score == 'top_label' else
                   'calibrated probability of all diseases together')
    return {
        'temperature': temperature,
        'unknown_threshold': float(unknown_threshold),
        'unknown_threshold_rule': unknown_rule,
        'finding_threshold': chosen,
        'finding_score': finding_score,
        'finding_threshold_rule': (
            f'smallest {score_words} at which the healthy-tile and the '
            f'background-tile finding rates on the choosing half are both <= '
            f'{max_negative_rate:.0%} (maximises disease-tile recall under that limit)'),
        'choosing_half': {
            'tiles': int(len(comp_y_a)),
            'healthy_tile_finding_rate': float(found[healthy].mean()),
            'background_tile_finding_rate': float(found[background].mean()),
            'disease_tile_recall': float((found & (pred == names))[is_disease].mean()),
        },
    }


# ------------------------------------------------------------- field photos
def node_tiles(frame_bgr: np.ndarray, cfg: DetectorConfig
               ) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray]:
    """
    Cut a photo like the node: resize to 1280 px wide, grid tiles, vegetation gate.

    :returns: ``(boxes (K, 4), kept crops, vegetation fractions (K,))`` where crops are
        those whose fraction is at least ``min_vegetation_fraction``.
    """
    h, w = frame_bgr.shape[:2]
    width = FRAME_WIDTH_PX
    frame = cv2.resize(frame_bgr, (width, int(round(h * width / w))),
                       interpolation=cv2.INTER_AREA if w > width else cv2.INTER_LINEAR)
    boxes = tiling.tile_boxes(frame.shape[0], frame.shape[1], cfg.tiling,
                              cfg.tile_size_px, cfg.tile_stride_px)
    fractions = tiling.vegetation_fractions(frame, boxes, cfg.vegetation_exg_threshold)
    keep = fractions >= cfg.min_vegetation_fraction
    crops = tiling.crops(frame, boxes[keep])
    return boxes, crops, fractions


def field_photos(model: OnnxModel, field_root: str, unknown_threshold: float,
                 finding_threshold: float) -> Dict[str, Any]:
    """Return counts per label (and findings) per photo and per folder of ``field_root``."""
    cfg = DetectorConfig()
    labels = list(model.card.labels)
    per_photo: Dict[str, Any] = {}
    per_folder: Dict[str, Dict[str, int]] = {}
    max_esca: Dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(field_root, '*', '*.jpg'))):
        folder = os.path.basename(os.path.dirname(path))
        frame = read_bgr(path)
        boxes, crops, _ = node_tiles(frame, cfg)
        counts: Dict[str, int] = {'tiles': int(len(boxes)),
                                  'gated_out': int(len(boxes) - len(crops))}
        if crops:
            probs = softmax(model.logits(crops), model.card.temperature)
            top = probs.argmax(axis=1)
            score = probs.max(axis=1)
            for i in range(len(crops)):
                lab = labels[top[i]] if score[i] >= unknown_threshold else 'unknown'
                counts[lab] = counts.get(lab, 0) + 1
            found = findings(probs, labels, model.card.non_disease_labels, unknown_threshold,
                             finding_threshold, model.card.finding_score)
            counts['findings'] = int(found.sum())
            for lab in DISEASES:
                col = labels.index(lab)
                counts[f'findings_{lab}'] = int((found & (top == col)).sum())
            max_esca[path] = float(probs[:, labels.index('esca')].max())
        else:
            counts['findings'] = 0
            max_esca[path] = 0.0
        rel = os.path.relpath(path, field_root)
        per_photo[rel] = counts
        agg = per_folder.setdefault(folder, {'photos': 0})
        agg['photos'] += 1
        agg['photos_with_finding'] = (agg.get('photos_with_finding', 0)
                                      + int(counts['findings'] > 0))
        for key, value in counts.items():
            agg[key] = agg.get(key, 0) + value
    esca = [v for p, v in max_esca.items() if '/esca/' in p]
    healthy = [v for p, v in max_esca.items() if '/healthy/' in p]
    return {'per_photo': per_photo, 'per_folder': per_folder,
            'frame_max_p_esca': {os.path.relpath(p, field_root): v for p, v in max_esca.items()},
            'esca_vs_healthy_frame_auroc_4v2': auroc(np.array(esca), np.array(healthy)),
            'config': {'frame_width_px': FRAME_WIDTH_PX, 'tile_size_px': cfg.tile_size_px,
                       'tile_stride_px': cfg.tile_stride_px,
                       'min_vegetation_fraction': cfg.min_vegetation_fraction,
                       'vegetation_exg_threshold': cfg.vegetation_exg_threshold,
                       'unknown_threshold': unknown_threshold,
                       'finding_threshold': finding_threshold}}


def evaluate_model(card_path: str, val_cache: str, pv_root: str, field_root: Optional[str],
                   threads: int = 2) -> Dict[str, Any]:
    """
    Return the field measures of one ONNX model at its card's operating point.

    PlantVillage validation accuracy (on the card's labels), the field-like measures on
    half B of the validation composites (half A chose the operating point at export),
    and the field photos of ``field_root`` run like the node (skipped when None).
    """
    model = OnnxModel(card_path, threads)
    card = model.card
    labels = list(card.labels)
    unknown = card.unknown_threshold
    finding = (max(card.finding_threshold, unknown) if card.finding_score == 'top_label'
               else card.finding_threshold)
    result: Dict[str, Any] = {'card': os.path.abspath(card_path), 'name': card.name,
                              'labels': labels, 'unknown_threshold': unknown,
                              'finding_threshold': finding,
                              'finding_score': card.finding_score}
    pv_images, pv_y = pv_validation(pv_root)
    pv_probs = softmax(model.logits(pv_images), card.temperature)
    pv_pred = np.array(labels)[pv_probs.argmax(axis=1)]
    result['plantvillage_validation'] = {
        'images': len(pv_images),
        'accuracy': float((pv_pred == np.array(PV_LABELS)[pv_y]).mean())}
    comp = load_composites(val_cache)
    probs = softmax(model.logits(comp.x), card.temperature)
    result['field_validation_B'] = composite_measures(probs, comp, comp.half == 1, card,
                                                      unknown, finding)
    if field_root is not None:
        result['field_photos'] = field_photos(model, field_root, unknown, finding)
    return result
