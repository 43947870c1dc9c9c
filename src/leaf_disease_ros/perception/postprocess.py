"""
Logits -> calibrated scores, top-k hypotheses, ``unknown`` rejection, disease flag.

Scores are ``softmax(logits / temperature)`` with the card's temperature. When the
best score is below the unknown threshold (or the tile is out of domain by its
embedding distance, when the card enables that) the tile's label is ``unknown``: a tired
robot should say "I don't know" rather than guess a disease. A tile is a disease
finding when its label is neither unknown nor one of the card's healthy or
background labels.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.perception.errors import InferenceError
from leaf_disease_ros.perception.model_card import UNKNOWN_LABEL

#: A logit (or embedding value) beyond this magnitude is no classifier's output: float32
#: keeps less than one decimal of a number this large, so the model's arithmetic
#: overflowed (an FP16 engine saturating, broken weights). Trained models stay within
#: tens.
MAX_ABS_OUTPUT = 1e6
#: what a user is told to do about a model whose outputs are not numbers
BROKEN_MODEL_FIX = ('the model (or its TensorRT engine) is broken: re-export it, rebuild '
                    'the engine, or check it with leaf-disease-classify on a known photo')


@dataclass(frozen=True)
class Classification:
    """
    The outcome for one tile.

    ``label_index`` is -1 for ``unknown``. ``top_k`` holds ``(label, score)`` pairs of
    the model's classes, best first, whatever the rejection decided. ``score`` is the
    best class's calibrated probability.
    """

    label: str
    label_index: int
    score: float
    top_k: Tuple[Tuple[str, float], ...]
    is_unknown: bool
    is_disease: bool


def broken_rows(*outputs: np.ndarray) -> np.ndarray:
    """
    Return ``(N,)`` bool: the rows where any of ``outputs`` is not a usable number.

    :param outputs: ``(N, C)`` or ``(N, D)`` arrays of one batch (logits, embeddings);
        a value that is NaN, infinite or beyond :data:`MAX_ABS_OUTPUT` breaks its row.
    """
    bad = np.zeros(len(outputs[0]), dtype=bool)
    for output in outputs:
        values = np.asarray(output, dtype=np.float64).reshape(len(bad), -1)
        with np.errstate(invalid='ignore'):
            bad |= ~(np.abs(values) <= MAX_ABS_OUTPUT).all(axis=1)
    return bad


def check_model_outputs(*outputs: np.ndarray) -> None:
    """
    Raise :class:`InferenceError` when a row of ``outputs`` is not usable numbers.

    Softmax of NaN is NaN and of a huge logit a certainty: either would be published
    as a confident label, so the caller drops the frame and counts it instead.
    """
    bad = broken_rows(*outputs)
    if bad.any():
        raise InferenceError(f'the model returned NaN, infinite or overflowing outputs '
                             f'(|value| > {MAX_ABS_OUTPUT:g}) for {int(bad.sum())} of '
                             f'{len(bad)} tiles; {BROKEN_MODEL_FIX}')


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """
    Return the row-wise softmax of ``logits / temperature`` as float32.

    :param logits: ``(N, C)`` float array.
    :param temperature: > 0; larger flattens the distribution.
    """
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)  # stable: exp of values <= 0
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled.astype(np.float32)


def finding_scores(probs: np.ndarray, labels: Sequence[str],
                   non_disease_labels: Sequence[str], finding_score: str) -> np.ndarray:
    """
    Return ``(N,)`` the score each tile's finding threshold is compared with.

    ``finding_score`` is the card's rule: ``top_label``, the best calibrated
    probability; ``disease_mass``, the sum of the probabilities of the disease labels
    (neither healthy nor background). The one definition the node, the replay and the
    field evaluation share.
    """
    probs = np.asarray(probs)
    if finding_score == 'disease_mass':
        not_disease = set(non_disease_labels)
        disease = np.array([label not in not_disease for label in labels])
        return probs[:, disease].sum(axis=1)
    return probs.max(axis=1)


def classify(probs: np.ndarray, labels: Sequence[str], non_disease_labels: Sequence[str],
             top_k: int, unknown_threshold: float,
             out_of_domain: Optional[np.ndarray] = None) -> List[Classification]:
    """
    Turn ``(N, C)`` probabilities into one :class:`Classification` per row.

    :param probs: ``(N, C)`` calibrated probabilities, columns in ``labels`` order.
    :param labels: the card's label list.
    :param non_disease_labels: labels that are not a disease (healthy, background).
    :param top_k: hypotheses kept per row (clamped to C).
    :param unknown_threshold: best score below this gives ``unknown``.
    :param out_of_domain: optional ``(N,)`` bool; True rows are ``unknown`` whatever
        their score (too far from the training data in embedding space).
    """
    probs = np.asarray(probs, dtype=np.float32)
    k = max(1, min(int(top_k), probs.shape[1]))
    # argsort of the negated scores, stable so ties keep label order.
    order = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    not_disease = set(non_disease_labels)
    results: List[Classification] = []
    far = (np.zeros(len(probs), dtype=bool) if out_of_domain is None
           else np.asarray(out_of_domain, dtype=bool))
    for row, ranked, is_far in zip(probs, order, far):
        best = int(ranked[0])
        score = float(row[best])
        top = tuple((labels[i], float(row[i])) for i in ranked)
        if score < unknown_threshold or is_far:
            results.append(Classification(UNKNOWN_LABEL, -1, score, top, True, False))
        else:
            label = labels[best]
            results.append(Classification(label, best, score, top, False,
                                          label not in not_disease))
    return results
