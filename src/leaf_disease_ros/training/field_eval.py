"""
Field-like validation measures and the field operating point of a leaf classifier.

Owns how a model (ONNX + card, through onnxruntime, so the old shipped model and new
ones are measured by one code path) is scored on:

- the validation material of ``leaf-disease-train-field validation``
  (:func:`leaf_disease_ros.training.field_sim.build_validation`): PlantVillage validation
  leaves of the leaf-grouped training split, split again by leaf block into a *tuning*
  half (half 0: chooses the temperature and the thresholds at export) and a *test* half
  (half 1: reports), composited on backgrounds whose field photos follow the manifest
  (:mod:`leaf_disease_ros.training.field_manifest`): healthy-tile finding rate,
  background-tile finding rate, disease-tile recall (a finding with the right disease
  label, and a finding of any disease), tile-level esca-vs-healthy AUROC, per tile kind
  and per painted variant; PlantVillage accuracy on the test half's plain photos;
- the real field photos of ``field_grape_small`` run the way the node runs them
  (frame resized to 1280 px wide, 256-px tiles every 256 px, excess-green vegetation
  gate with the node's default values): counts per label per photo, per folder and per
  manifest role (a photo that trained or tuned a model is never a test of it);
- :func:`results_markdown` and :func:`record_in_card`: the figures as a Markdown table
  and in a card's ``metrics.field_test``, each naming its material.

A tile is a *finding* when its top label is a disease whose calibrated score clears the
unknown threshold, and its finding score clears the finding threshold (the node's rule:
below the unknown threshold it is ``unknown``, and ``disease_score_threshold`` gates
findings). The finding score is the card's ``calibration.finding_score``: the top
label's probability (``top_label``) or that of all diseases together (``disease_mass``).
A rate over no tiles is None, never 0 and never NaN.
"""
from dataclasses import dataclass, field
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception import tiling
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.json_fields import strict_json
from leaf_disease_ros.perception.metrics import auroc as _auroc
from leaf_disease_ros.perception.model_card import load_card, ModelCard
from leaf_disease_ros.perception.postprocess import finding_scores, softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.calibration import choose_unknown_threshold, fit_temperature
from leaf_disease_ros.training.field_manifest import photo_role, validation_halves
from leaf_disease_ros.training.field_sim import (KINDS, LABELS, read_bgr, VALIDATION_FORMAT,
                                                 VARIANTS)

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
TUNE, TEST = 0, 1


def pv_half(pv_root: str, meta: Dict[str, Any], half: int
            ) -> Tuple[List[np.ndarray], np.ndarray, int]:
    """
    Return the plain PlantVillage photos, labels and leaf-block count of one half.

    The halves are those of the validation material whose parameters are ``meta``
    (:attr:`Composites.meta`): the same split, seed and block size.
    """
    split = meta['split']
    labels, tune, test = validation_halves(pv_root, int(meta['seed']), int(split['split_seed']),
                                           int(split['block_size']),
                                           float(split['val_fraction']))
    if labels != PV_LABELS:
        raise DatasetError(f'unexpected classes {labels}')
    samples = tune if half == TUNE else test
    return ([read_bgr(s.path) for s in samples],
            np.array([s.label_index for s in samples], np.int64),
            len({s.group for s in samples}))


@dataclass
class Composites:
    """
    Validation composites: tiles ``(N, S, S, 3)`` uint8, targets, kinds, half.

    ``half``: 0 = tuning half (chooses the operating point), 1 = test half (reports).
    ``variant``: how each focal leaf was drawn (indices into ``field_sim.VARIANTS``);
    None for caches made before painted field symptoms. ``source``: the focal leaf's
    file name ('' for none); ``photo``: the field photos cropped into each tile
    (``;``-joined, '' for none); ``meta``: the material's parameters.
    """

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    half: np.ndarray
    variant: Optional[np.ndarray] = None
    source: Optional[np.ndarray] = None
    photo: Optional[np.ndarray] = None
    meta: Dict[str, Any] = field(default_factory=dict)


def load_composites(path: str) -> Composites:
    """
    Load a validation cache of ``leaf-disease-train-field validation`` (or ``cache``).

    :raises DatasetError: the cache has no ``half`` (made before the halves were split
        by leaf block and source photo: rebuild it), or its arrays disagree in length, or
        a half, target or kind is out of range.
    """
    data = np.load(path)
    if 'half' not in data.files or 'meta' not in data.files:
        raise DatasetError(f'{path}: a validation cache without leaf-grouped halves (made '
                           'before issue 17); rebuild it with leaf-disease-train-field '
                           'validation')
    meta = json.loads(str(data['meta']))
    if meta.get('format') != VALIDATION_FORMAT:
        raise DatasetError(f'{path}: unknown validation format {meta.get("format")!r}')
    n = len(data['y'])
    optional = {key: data[key] if key in data.files else None
                for key in ('variant', 'source', 'photo')}
    for key in ('x', 'kind', 'half', *[k for k, v in optional.items() if v is not None]):
        if len(data[key]) != n:
            raise DatasetError(f'{path}: {key} has {len(data[key])} entries, y has {n}')
    half = data['half']
    checks = ((half, 2, 'half'), (data['y'], len(LABELS), 'y'), (data['kind'], len(KINDS),
                                                                 'kind'))
    for values, limit, key in checks:
        if n and (values.min() < 0 or values.max() >= limit):
            raise DatasetError(f'{path}: {key} outside [0, {limit - 1}]')
    return Composites(data['x'], data['y'], data['kind'], half, optional['variant'],
                      optional['source'], optional['photo'], meta)


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


def rate(flags: np.ndarray, group: np.ndarray) -> Optional[float]:
    """Return the share of ``flags`` within ``group`` (bool arrays); None for no tiles."""
    return float(flags[group].mean()) if group.any() else None


def composite_measures(probs: np.ndarray, comp: Composites, mask: np.ndarray,
                       card: ModelCard, unknown_threshold: float,
                       finding_threshold: float) -> Dict[str, Any]:
    """
    Return finding rates, recall and AUROC on the composite tiles selected by ``mask``.

    :param probs: ``(N, C)`` calibrated probabilities of all tiles of ``comp`` (the
        card's labels).
    :param mask: ``(N,)`` bool, the tiles measured.
    :returns: tile counts; ``healthy_tile_finding_rate`` and
        ``background_tile_finding_rate`` (share of those tiles with a finding);
        ``disease_tile_recall`` (share of diseased tiles with a finding of the right
        disease) and ``disease_tile_any_finding_rate``; ``esca_vs_healthy_auroc``
        (P(esca) of esca tiles against healthy tiles; NaN when a side is empty); the
        same rates ``per_kind`` and ``per_variant`` (painted variants only). A rate over
        no tiles is None.
    """
    labels = list(card.labels)
    names = composite_target_names(comp.y[mask])
    p = probs[mask]
    found = findings(p, labels, card.non_disease_labels, unknown_threshold, finding_threshold,
                     card.finding_score)
    pred = np.array(labels)[p.argmax(axis=1)] if len(p) else np.array([], str)
    is_disease = np.isin(names, DISEASES)
    healthy = names == 'healthy'
    background = names == 'background'
    correct_finding = found & (pred == names)
    esca_col = labels.index('esca')

    def rates(group: np.ndarray) -> Dict[str, Any]:
        return {'tiles': int(group.sum()),
                'disease_recall': rate(correct_finding, group & is_disease),
                'negative_finding_rate': rate(found, group & ~is_disease)}

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
        'healthy_tile_finding_rate': rate(found, healthy),
        'background_tile_finding_rate': rate(found, background),
        'disease_tile_recall': rate(correct_finding, is_disease),
        'disease_tile_any_finding_rate': rate(found, is_disease),
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
    Return temperature, unknown and finding threshold chosen on the tuning half.

    - temperature: minimises NLL on the tuning composites + the tuning half's
      PlantVillage photos (5-class targets; a 4-class model keeps its card's
      temperature);
    - unknown threshold: the project's rule (``choose_unknown_threshold``, reject at most
      2 % of that material, bounded to [1/C + 0.05, 0.9]);
    - finding threshold: the smallest score (grid of 0.001 from 0) at which both the
      healthy-tile and the background-tile finding rates of the tuning composites are
      at most ``max_negative_rate``; a kind with no tile sets no limit; 0.999 when no
      score on the grid meets the limits. The smallest such threshold maximises disease
      recall. ``finding_score`` says what it is compared with (:func:`findings`); with
      ``top_label`` the threshold is at least the unknown threshold.
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

    def within_limit(found: np.ndarray) -> bool:
        return all(r is None or r <= max_negative_rate
                   for r in (rate(found, healthy), rate(found, background)))

    chosen = None
    for t in np.arange(0.0, 1.0, 0.001):
        found = findings(probs, labels, card.non_disease_labels, unknown_threshold, float(t),
                         finding_score)
        if within_limit(found):
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
            f'background-tile finding rates on the tuning half are both <= '
            f'{max_negative_rate:.0%} (maximises disease-tile recall under that limit)'),
        'choosing_half': {
            'tiles': int(len(comp_y_a)),
            'healthy_tile_finding_rate': rate(found, healthy),
            'background_tile_finding_rate': rate(found, background),
            'disease_tile_recall': rate(found & (pred == names), is_disease),
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
    """
    Return counts per label (and findings) per photo, folder and role of ``field_root``.

    Every photo carries its manifest role (:func:`field_manifest.photo_role`);
    ``per_role`` adds them up, so the test-only photos are read apart from those that
    trained or tuned a model.

    :raises DatasetError: a photo of ``field_root`` has no role in the manifest.
    """
    cfg = DetectorConfig()
    labels = list(model.card.labels)
    per_photo: Dict[str, Any] = {}
    per_folder: Dict[str, Dict[str, int]] = {}
    per_role: Dict[str, Dict[str, int]] = {}
    max_esca: Dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(field_root, '*', '*.jpg'))):
        folder = os.path.basename(os.path.dirname(path))
        rel = os.path.relpath(path, field_root).replace(os.sep, '/')
        role = photo_role(rel)
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
            max_esca[rel] = float(probs[:, labels.index('esca')].max())
        else:
            counts['findings'] = 0
            max_esca[rel] = 0.0
        per_photo[rel] = dict(counts, role=role)
        for agg in (per_folder.setdefault(folder, {'photos': 0}),
                    per_role.setdefault(role, {'photos': 0})):
            agg['photos'] += 1
            agg['photos_with_finding'] = (agg.get('photos_with_finding', 0)
                                          + int(counts['findings'] > 0))
            for key, value in counts.items():
                agg[key] = agg.get(key, 0) + value
    esca = [v for p, v in max_esca.items() if p.startswith('esca/')]
    healthy = [v for p, v in max_esca.items() if p.startswith('healthy/')]
    return {'per_photo': per_photo, 'per_folder': per_folder, 'per_role': per_role,
            'frame_max_p_esca': max_esca,
            'esca_vs_healthy_frame_auroc_not_a_test': auroc(np.array(esca), np.array(healthy)),
            'not_a_test': 'the esca photos steered round 2 and the healthy photos trained or '
                          'tuned the models (field_manifest): the per-folder counts and the '
                          'frame AUROC of those photos describe, they do not test',
            'config': {'frame_width_px': FRAME_WIDTH_PX, 'tile_size_px': cfg.tile_size_px,
                       'tile_stride_px': cfg.tile_stride_px,
                       'min_vegetation_fraction': cfg.min_vegetation_fraction,
                       'vegetation_exg_threshold': cfg.vegetation_exg_threshold,
                       'unknown_threshold': unknown_threshold,
                       'finding_threshold': finding_threshold}}


def material_words(comp: Composites, pv_test_images: int, pv_test_blocks: int) -> str:
    """Return the sentence naming the test-half material (what a figure was measured on)."""
    test = comp.half == TEST
    photos = sorted({p for value in (comp.photo[test] if comp.photo is not None else [])
                     for p in str(value).split(';') if p})
    backgrounds = (f'crops of the field photos {", ".join(photos)} (test-only)' if photos
                   else 'no real field photo (no healthy field photo is test-only: every '
                        'one trained or tuned the shipped models)')
    split = comp.meta.get('split', {})
    return (f'synthetic composites: {int(test.sum())} tiles of the test half of the '
            f'validation material (seed {comp.meta.get("seed")}): PlantVillage validation '
            f'leaves of the leaf-grouped split (photo-number blocks of '
            f'{split.get("block_size")}, seed {split.get("split_seed")}), test half by leaf '
            f'block ({pv_test_blocks} blocks, {pv_test_images} photos: about '
            f'{round(pv_test_images / 4)} leaves, each photographed about four times), '
            f'composited on '
            f'procedural backgrounds, canopy of test-half healthy leaves and {backgrounds}')


def evaluate_model(card_path: str, val_cache: str, pv_root: str, field_root: Optional[str],
                   threads: int = 2) -> Dict[str, Any]:
    """
    Return the field measures of one ONNX model at its card's operating point.

    PlantVillage accuracy on the test half's plain photos, the field-like measures on
    the test half of the validation composites, the tuning half's field-photo crops
    (flagged: those photos tuned the shipped models, so they are not a test), and the
    field photos of ``field_root`` run like the node (skipped when None), by role.
    """
    model = OnnxModel(card_path, threads)
    card = model.card
    labels = list(card.labels)
    unknown = card.unknown_threshold
    finding = (max(card.finding_threshold, unknown) if card.finding_score == 'top_label'
               else card.finding_threshold)
    comp = load_composites(val_cache)
    pv_images, pv_y, pv_blocks = pv_half(pv_root, comp.meta, TEST)
    result: Dict[str, Any] = {'card': os.path.basename(card_path), 'name': card.name,
                              'onnx_sha256': card.onnx_sha256, 'labels': labels,
                              'unknown_threshold': unknown, 'finding_threshold': finding,
                              'finding_score': card.finding_score,
                              'material': {'validation': comp.meta,
                                           'composites_test_half': material_words(
                                               comp, len(pv_images), pv_blocks)}}
    pv_probs = softmax(model.logits(pv_images), card.temperature)
    pv_pred = np.array(labels)[pv_probs.argmax(axis=1)]
    result['plantvillage_test_half'] = {
        'images': len(pv_images), 'leaf_blocks': pv_blocks,
        'accuracy': float((pv_pred == np.array(PV_LABELS)[pv_y]).mean()) if len(pv_y)
        else None}
    crops = np.zeros(len(comp.y), bool)
    if comp.photo is not None:
        crops = (comp.half == TUNE) & (comp.kind == KINDS.index('field_crop'))
    measured = (comp.half == TEST) | crops
    probs = np.zeros((len(comp.y), len(labels)), np.float32)
    if measured.any():
        probs[measured] = softmax(model.logits(comp.x[measured]), card.temperature)
    result['composites_test_half'] = composite_measures(probs, comp, comp.half == TEST, card,
                                                        unknown, finding)
    tune_photos = sorted({p for value in (comp.photo[crops] if comp.photo is not None else [])
                          for p in str(value).split(';') if p})
    result['tuning_half_field_crops_not_a_test'] = dict(
        composite_measures(probs, comp, crops, card, unknown, finding),
        photos=tune_photos,
        why='crops of field photos with role tune: they chose the operating point of the '
            'shipped cards (the old half A); shown because they are the only real canopy '
            'in the composites, not as a test')
    result['caveats'] = caveats(card, comp)
    if field_root is not None:
        result['field_photos'] = field_photos(model, field_root, unknown, finding)
    return result


OLD_SPLIT_CAVEAT = (
    "This card's operating point was chosen before the validation halves were split by "
    'leaf block and source photo: on half A of a validation cache split by a hash of the '
    'photo file name, whose composites used other photos of the same PlantVillage '
    'validation leaf blocks, with the temperature and the unknown threshold fitted on all '
    'PlantVillage validation photos. The test half is held out from the new tuning half, '
    'not from that choice (the PlantVillage leaves never trained the model).')


def caveats(card: ModelCard, comp: Composites) -> List[str]:
    """Return what a reader of the figures of ``card`` on ``comp`` must know."""
    notes = []
    if 'tuning half' not in str(card.calibration_extra.get('operating_point_material', '')):
        notes.append(OLD_SPLIT_CAVEAT)
    test = comp.half == TEST
    if comp.photo is None or not any(str(p) for p in comp.photo[test]):
        notes.append('No real field photo is in the test-half composites: the healthy and '
                     'background tiles are synthetic (canopy of PlantVillage leaves, '
                     'procedural soil, sky, posts); expect more false findings on real '
                     'canopy (see the tuning-half field-photo crops, not a test).')
    return notes


def _pct(value: Optional[float]) -> str:
    return '–' if value is None else f'{100 * value:.1f} %'


def results_markdown(results: Dict[str, Dict[str, Any]]) -> str:
    """Return the figures of ``evaluate`` (model key -> :func:`evaluate_model`) as Markdown."""
    lines = ['# Field results', '',
             'Written by `leaf-disease-train-field evaluate` (docs/training.md, "Honest '
             'figures"). Each model at its own card\'s operating point (not re-tuned).', '']
    for key, res in results.items():
        comp = res['composites_test_half']
        variants = comp.get('per_variant', {})
        lines += [f'## {key} (onnx {str(res.get("onnx_sha256", ""))[:12]})', '',
                  f'Material: {res["material"]["composites_test_half"]}.', '',
                  '| measure | value | tiles |', '|---|---|---|',
                  f'| PlantVillage test-half photos, accuracy | '
                  f'{_pct(res["plantvillage_test_half"]["accuracy"])} | '
                  f'{res["plantvillage_test_half"]["images"]} photos |',
                  f'| healthy tiles with a finding | {_pct(comp["healthy_tile_finding_rate"])} '
                  f'| {comp["healthy_tiles"]} |',
                  f'| background tiles with a finding | '
                  f'{_pct(comp["background_tile_finding_rate"])} | {comp["background_tiles"]} |',
                  f'| diseased tiles found, right label | {_pct(comp["disease_tile_recall"])} '
                  f'| {comp["disease_tiles"]} |',
                  f'| diseased tiles with any finding | '
                  f'{_pct(comp["disease_tile_any_finding_rate"])} | {comp["disease_tiles"]} |']
        for variant, words in (('esca_field_symptoms', 'painted field esca found'),
                               ('autumn_colouring', 'autumn leaves with a finding')):
            if variant in variants:
                v = variants[variant]
                value = v['disease_recall'] if variant == 'esca_field_symptoms' \
                    else v['negative_finding_rate']
                lines.append(f'| {words} (painted, a model of the symptom) | {_pct(value)} '
                             f'| {v["tiles"]} |')
        auc = comp['esca_vs_healthy_auroc']
        lines.append(f'| esca-vs-healthy tile AUROC | '
                     f'{"–" if auc is None or auc != auc else f"{auc:.3f}"} | |')
        lines += ['', '| tile kind | tiles | diseased found | negatives with a finding |',
                  '|---|---|---|---|']
        for kind, v in comp['per_kind'].items():
            lines.append(f'| {kind} | {v["tiles"]} | {_pct(v["disease_recall"])} | '
                         f'{_pct(v["negative_finding_rate"])} |')
        crops = res['tuning_half_field_crops_not_a_test']
        lines += ['', f'Not a test: crops of {", ".join(crops["photos"]) or "no photo"} in '
                      f'the tuning half ({crops["tiles"]} tiles; these photos chose the '
                      f'shipped operating point): negatives with a finding '
                      f'{_pct(rate_of(crops))}.', '']
        lines += [f'Caveat: {note}' for note in res.get('caveats', [])]
        lines += ['']
        if 'field_photos' in res:
            lines += ['| field photos (role) | photos | tiles kept | findings | photos with '
                      'a finding |', '|---|---|---|---|---|']
            for role, v in res['field_photos']['per_role'].items():
                kept = v['tiles'] - v['gated_out']
                lines.append(f'| {role} | {v["photos"]} | {kept} | {v["findings"]} | '
                             f'{v["photos_with_finding"]} |')
            lines += ['', 'Per photo (role): ' + '; '.join(
                f'{p} ({v["role"]}) {v["findings"]} findings'
                for p, v in res['field_photos']['per_photo'].items()) + '.', '']
    return '\n'.join(lines) + '\n'


def rate_of(measures: Dict[str, Any]) -> Optional[float]:
    """Return the negative-tile finding rate of a :func:`composite_measures` result."""
    negatives = measures['healthy_tiles'] + measures['background_tiles']
    if not negatives:
        return None
    found = sum((measures[f'{k}_tile_finding_rate'] or 0.0) * measures[f'{k}_tiles']
                for k in ('healthy', 'background'))
    return found / negatives


def card_figures(result: Dict[str, Any]) -> Dict[str, Any]:
    """Return the ``metrics.field_test`` section of a card from :func:`evaluate_model`."""
    comp = result['composites_test_half']
    doc: Dict[str, Any] = {
        'written_by': 'leaf-disease-train-field evaluate --update-cards (regenerated, never '
                      'edited by hand)',
        'operating_point': {'unknown_threshold': result['unknown_threshold'],
                            'finding_threshold': result['finding_threshold'],
                            'finding_score': result['finding_score'],
                            'note': "the card's own, re-measured, not re-tuned"},
        'composites_test_half': {
            'material': result['material']['composites_test_half'],
            **{k: v for k, v in comp.items() if k != 'per_kind'},
            'per_kind': comp['per_kind']},
        'plantvillage_test_half': result['plantvillage_test_half'],
        'tuning_half_field_crops_not_a_test': {
            key: result['tuning_half_field_crops_not_a_test'][key]
            for key in ('photos', 'tiles', 'healthy_tile_finding_rate',
                        'background_tile_finding_rate', 'why')},
        'caveats': result.get('caveats', []),
        'validation_material': result['material']['validation'],
    }
    if 'field_photos' in result:
        per_role = result['field_photos']['per_role']
        doc['field_photos_test_only'] = dict(
            per_role.get('test', {'photos': 0}),
            material=f'{per_role.get("test", {}).get("photos", 0)} real field photos with '
                     'role test (field_manifest): untaught diseases (downy mildew, powdery '
                     'mildew, bois noir); any finding names a taught disease on them')
    return doc


def record_in_card(card_path: str, result: Dict[str, Any]) -> None:
    """
    Put :func:`card_figures` in the card's ``metrics.field_test`` (replacing the old figures).

    Only ``metrics`` changes: ``field_validation`` (figures of the old half B) is
    removed; the calibration, the model hash and the rest are kept. The card must still
    load afterwards.
    """
    with open(card_path, encoding='utf-8') as stream:
        doc = json.load(stream)
    metrics = dict(doc.get('metrics', {}))
    metrics.pop('field_validation', None)
    metrics['field_test'] = strict_json(card_figures(result))
    doc['metrics'] = metrics
    atomic_write_json(card_path, doc)
    load_card(card_path)
