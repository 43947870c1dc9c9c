"""
Export of a field-recipe run: ONNX, parity, the field operating point, and the card.

Owns :func:`export_field` (the logic of ``leaf-disease-train-field export``):

1. ``RUN/model.pt`` -> ONNX with :func:`leaf_disease_ros.training.export.export`
   (opset 17, input ``input`` ``(N, 3, H, W)`` float32 with a dynamic batch, output
   ``logits`` ``(N, C)`` and, unless ``embedding=False``, the penultimate features as
   a second output ``embedding`` (:class:`~leaf_disease_ros.training.export.LogitsAndEmbedding`;
   the card names it, without ``embedding_distance`` statistics);
2. parity: PyTorch and onnxruntime logits on PlantVillage validation photos and
   validation composites agree to ``tolerance``; otherwise nothing is written;
3. operating point on the tuning half of the validation material (composites + the
   tuning half's PlantVillage photos for the temperature; ``leaf-disease-train-field
   validation``): temperature, unknown threshold, finding threshold
   (:func:`leaf_disease_ros.training.field_eval.choose_operating_point`), written under
   ``calibration`` with ``finding_threshold``, ``finding_score`` (what the threshold
   is compared with) and ``operating_point_material``;
4. the card (labels incl. ``background``, ``background_labels``, preprocessing,
   calibration, sha256, training record, figures on the test half, each naming its
   material) beside the model.
"""

from dataclasses import replace
import logging
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.metrics import classification_report, expected_calibration_error
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, ModelCard, sha256_file,
                                                    write_card)
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training import backbones, field_eval
from leaf_disease_ros.training.export import EMBEDDING_NAME, export, LogitsAndEmbedding

LOG = logging.getLogger('leaf_disease_ros.train_field')
OPSET = 17
MATERIAL = (
    'the tuning half of the validation material (leaf-disease-train-field validation, '
    'training/field_sim.build_validation): PlantVillage validation leaves of the '
    'leaf-grouped split (photo-number blocks of {block}, seed {split_seed}), tuning half by '
    'leaf block (seed {seed}), composited at node tile scales (leaf filling a tile, several '
    'leaves, leaf edge) onto procedural backgrounds, canopy of tuning-half healthy leaves '
    'and crops of the field photos with role tune ({photos}), field photometry; plus the '
    "tuning half's PlantVillage photos for the temperature. Figures in metrics.field_test "
    'are on the test half (other leaf blocks, other photos).')
SYMPTOMS_MATERIAL = (
    ' The validation material was made with painted symptoms (--field-symptoms): half of '
    'the esca focal leaves are healthy leaves of the same half with painted field esca '
    '(tiger stripes), 20 % of the healthy focal leaves are in autumn colours.')


def _onnx_logits(session: Any, card: ModelCard, crops: Sequence[np.ndarray] | np.ndarray,
                 batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(crops), batch_size):
        out.append(session.run([card.output_name], {
            card.input_name: preprocess(crops[start:start + batch_size], card)})[0])
    return np.concatenate(out)


def export_field(run_dir: str, out: str, val_cache: str, pv_root: str,
                 tolerance: float = 1e-3, threads: int = 2, embedding: bool = True,
                 finding_score: str = 'top_label') -> Dict[str, Any]:
    """
    Export ``RUN/model.pt`` to ``out`` (ONNX) and its card; return the card document.

    :param finding_score: what the card's finding threshold is compared with
        (``top_label`` or ``disease_mass``, see ``ModelCard.finding_score``).

    :raises LeafDiseaseError: onnxruntime and PyTorch disagree beyond ``tolerance``
        (nothing is written).
    """
    import onnxruntime as ort

    torch.set_num_threads(threads)
    model, meta = backbones.load_model(os.path.join(run_dir, 'model.pt'))
    model = model.float().eval()
    base = card_from_dict(meta['card'], '<checkpoint card>')
    net: torch.nn.Module = model
    if embedding:
        net = LogitsAndEmbedding(model, base.num_classes).eval()
        with torch.no_grad():
            size = int(net(torch.zeros(1, 3, *base.input_hw_px))[1].shape[1])
        base = replace(base, embedding_name=EMBEDDING_NAME, embedding_size=size)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp_path = out + '.tmp.onnx'
    export(net, base, tmp_path, OPSET)
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(tmp_path, options, providers=['CPUExecutionProvider'])
        comp = field_eval.load_composites(val_cache)
        pv_images, pv_y, _ = field_eval.pv_half(pv_root, comp.meta, field_eval.TUNE)
        pv_test, pv_test_y, pv_test_blocks = field_eval.pv_half(
            pv_root, comp.meta, field_eval.TEST)
        sample: List[np.ndarray] = list(pv_images[:96]) + list(comp.x[:96])
        batch = preprocess(sample, base)
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(batch)).numpy()
        ort_logits = session.run([base.output_name], {base.input_name: batch})[0]
        max_diff = float(np.abs(torch_logits - ort_logits).max())
        LOG.info('parity: max |torch - onnxruntime| logit difference %.2e over %d tiles',
                 max_diff, len(sample))
        if not max_diff <= tolerance:
            raise LeafDiseaseError(f'parity failed: onnxruntime and PyTorch logits differ by '
                                   f'{max_diff:.2e} > {tolerance:.0e}; nothing written')
        pv_logits = _onnx_logits(session, base, pv_images)
        pv_test_logits = _onnx_logits(session, base, pv_test)
        comp_logits = _onnx_logits(session, base, comp.x)
    except BaseException:
        os.remove(tmp_path)
        raise
    a = comp.half == field_eval.TUNE
    op = field_eval.choose_operating_point(comp_logits[a], comp.y[a], pv_logits, pv_y, base,
                                           finding_score=finding_score)
    pv_pred = softmax(pv_test_logits, op['temperature']).argmax(axis=1)
    report = classification_report(pv_test_y, pv_pred, list(base.labels))
    probs_comp = softmax(comp_logits, op['temperature'])
    calibrated = replace(base, temperature=op['temperature'],
                         unknown_threshold=op['unknown_threshold'],
                         finding_score=finding_score)
    field_b = field_eval.composite_measures(probs_comp, comp, comp.half == field_eval.TEST,
                                            calibrated, op['unknown_threshold'],
                                            op['finding_threshold'])
    tune_photos = sorted({p for value in (comp.photo[a] if comp.photo is not None else [])
                          for p in str(value).split(';') if p})
    split = comp.meta['split']
    doc = card_to_dict(base)
    doc['name'] = os.path.splitext(os.path.basename(out))[0]
    doc['calibration'] = {
        'temperature': op['temperature'],
        'unknown_threshold': op['unknown_threshold'],
        'unknown_threshold_rule': op['unknown_threshold_rule'],
        'finding_threshold': op['finding_threshold'],
        'finding_score': finding_score,
        'finding_threshold_rule': op['finding_threshold_rule'],
        'operating_point_material': MATERIAL.format(
            block=split['block_size'], split_seed=split['split_seed'], seed=comp.meta['seed'],
            photos=', '.join(tune_photos) or 'none') + (
                SYMPTOMS_MATERIAL if comp.meta.get('field_symptoms') else ''),
        'operating_point_choosing_half': op['choosing_half'],
        'ece_before': expected_calibration_error(softmax(comp_logits[a], 1.0), comp.y[a]),
        'ece_after': expected_calibration_error(probs_comp[a], comp.y[a]),
    }
    record = meta.get('model_record', {})
    doc['training'] = {
        'arch': meta['arch'], 'recipe': 'PlantVillage leaves composited on field-like '
                                        'backgrounds (training/field_sim.py) + plain '
                                        'PlantVillage photos (leaf-disease-train-field)',
        'pretrained': record.get('pretrained', False), 'imagenet': record.get('imagenet'),
        'dataset': 'plantvillage_grape (train side of the leaf-grouped split) composited on '
                   'field-like backgrounds; field_grape_small photos with role train '
                   '(field_manifest) as backgrounds only',
        'cache_tiles': meta['cache_tiles'], 'epochs_equivalent': meta['epochs_equivalent'],
        'steps': meta['steps'], 'training_seconds_total': meta['training_seconds'],
        'device': f"{meta.get('device', 'cpu')} ({meta.get('threads')} threads)",
        'args': meta['args'],
    }
    doc['metrics'] = {
        'validation': {
            'split': (f"leaf-grouped: photo-blocks, block size {split['block_size']}, "
                      f"validation fraction {split['val_fraction']}, seed "
                      f"{split['split_seed']}; test half by leaf block ({pv_test_blocks} "
                      f"blocks, seed {comp.meta['seed']})"),
            'images': int(len(pv_test_y)), 'accuracy': float((pv_pred == pv_test_y).mean()),
            'macro_f1_4_classes': float(np.mean([
                report['per_class'][lab]['f1'] for lab in field_eval.PV_LABELS])),
            'per_class': report['per_class'],
            'confusion_matrix': report['confusion_matrix'],
        },
        'field_test': dict(field_b, material=field_eval.material_words(
            comp, len(pv_test_y), pv_test_blocks)),
        'parity_max_abs_logit_diff': max_diff,
    }
    os.replace(tmp_path, out)
    card = card_from_dict(doc, card_path_for_model(out)).with_model(
        os.path.basename(out), sha256_file(out))
    write_card(card, card_path_for_model(out))
    LOG.info('%s: PlantVillage test-half accuracy %.4f, finding threshold %.3f, '
             'test half %s', out, doc['metrics']['validation']['accuracy'],
             op['finding_threshold'],
             {k: v for k, v in field_b.items() if k != 'per_kind'})
    return doc
