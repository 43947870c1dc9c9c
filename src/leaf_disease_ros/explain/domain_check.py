"""
Which score tells in-domain from out-of-domain tiles better: softmax or embedding distance.

The rule the export (and ``leaf-disease-embed --ood``) applies before the pipeline may
use the embedding distance for ``unknown``:

1. the distance is fitted on the training split's embeddings
   (:func:`leaf_disease_ros.perception.embedding_distance.fit_distance`);
2. its threshold is the largest one that rejects at most ``max_reject`` of the
   validation images (the same budget as the softmax threshold);
3. on a check set of in-domain images (validation) and out-of-domain images (field
   tiles, non-leaf tiles...), the AUROC of the distance and the AUROC of the softmax
   score (1 - calibrated top-1 probability) are computed; the distance is used for
   ``unknown`` only when its AUROC is higher.
"""

from typing import Any, Dict, Optional

import numpy as np

from leaf_disease_ros.perception.embedding_distance import EmbeddingDistance
from leaf_disease_ros.perception.metrics import auroc
from leaf_disease_ros.perception.postprocess import softmax

DISTANCE_RULE = ('largest distance threshold rejecting at most {reject:.1%} of validation '
                 'images (quantile of their distances)')


def distance_threshold(validation_distances: np.ndarray, max_reject: float) -> float:
    """Return the largest threshold rejecting at most ``max_reject`` of the validation rows."""
    values = np.sort(np.asarray(validation_distances, dtype=np.float64))
    if not len(values):
        raise ValueError('no validation distances to choose a threshold on')
    allowed = int(np.floor(max_reject * len(values)))
    return float(values[len(values) - 1 - allowed]) if allowed < len(values) else 0.0


def compare_scores(distance: EmbeddingDistance, temperature: float,
                   in_logits: np.ndarray, in_embeddings: np.ndarray,
                   out_logits: np.ndarray, out_embeddings: np.ndarray,
                   threshold: Optional[float] = None,
                   softmax_threshold: Optional[float] = None) -> Dict[str, Any]:
    """
    Return the AUROC of both scores (in-domain negative, out-of-domain positive) and more.

    With ``threshold`` (distance) or ``softmax_threshold`` (the card's unknown
    threshold): also the share of each side that rule rejects.
    """
    in_distance = distance.distances(in_embeddings)
    out_distance = distance.distances(out_embeddings)
    in_softmax = 1.0 - softmax(in_logits, temperature).max(axis=1)
    out_softmax = 1.0 - softmax(out_logits, temperature).max(axis=1)
    result: Dict[str, Any] = {
        'in_domain': int(len(in_distance)),
        'out_of_domain': int(len(out_distance)),
        'auroc_distance': auroc(in_distance, out_distance),
        'auroc_softmax': auroc(in_softmax, out_softmax),
        'median_distance_in_domain': float(np.median(in_distance)),
        'median_distance_out_of_domain': float(np.median(out_distance)),
        'mean_top1_score_out_of_domain': float(1.0 - out_softmax.mean()),
    }
    if threshold is not None:
        result['distance_threshold'] = threshold
        result['in_domain_rejected_by_distance'] = float(np.mean(in_distance > threshold))
        result['out_of_domain_rejected_by_distance'] = float(np.mean(out_distance > threshold))
    if softmax_threshold is not None:
        result['softmax_threshold'] = softmax_threshold
        result['in_domain_rejected_by_softmax'] = float(
            np.mean(1.0 - in_softmax < softmax_threshold))
        result['out_of_domain_rejected_by_softmax'] = float(
            np.mean(1.0 - out_softmax < softmax_threshold))
    result['distance_separates_better'] = result['auroc_distance'] > result['auroc_softmax']
    return result
