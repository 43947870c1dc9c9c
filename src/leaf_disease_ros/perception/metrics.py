"""
Classification metrics: confusion matrix, accuracy, macro-F1, per-class P/R/F1, ECE.

One implementation for training, export, the classify CLI and the replay report, so
a figure means the same thing everywhere. Conventions: rows of the confusion matrix
are the true class, columns the predicted class; a class that is never predicted
has precision 0, a class that never occurs has recall 0 and is left out of the
macro average (``support == 0``), as scikit-learn does with ``zero_division=0``
restricted to present labels.
"""

from typing import Any, Dict, List, Sequence

import numpy as np
from numpy.typing import ArrayLike


def confusion_matrix(true_idx: Sequence[int], pred_idx: Sequence[int],
                     num_classes: int) -> np.ndarray:
    """
    Return the ``(C, C)`` int64 confusion matrix (rows true, columns predicted).

    Predictions outside ``[0, C)`` (for example -1 for ``unknown``) are dropped from
    the matrix; count them separately.
    """
    true_arr = np.asarray(true_idx, dtype=np.int64)
    pred_arr = np.asarray(pred_idx, dtype=np.int64)
    keep = (pred_arr >= 0) & (pred_arr < num_classes) & (true_arr >= 0)
    flat = true_arr[keep] * num_classes + pred_arr[keep]
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def classification_report(true_idx: ArrayLike, pred_idx: ArrayLike,
                          labels: Sequence[str]) -> Dict[str, Any]:
    """
    Return accuracy, macro-F1, per-class figures and the confusion matrix.

    ``pred_idx`` may contain -1 (rejected as unknown): such a sample counts as wrong
    for accuracy and recall, and is reported as ``unknown_count``.

    Returns a JSON-ready dict: ``count``, ``accuracy``, ``macro_f1``,
    ``unknown_count``, ``per_class`` (label -> precision, recall, f1, support),
    ``labels`` and ``confusion_matrix`` (list of lists).
    """
    true_arr = np.asarray(true_idx, dtype=np.int64)
    pred_arr = np.asarray(pred_idx, dtype=np.int64)
    num_classes = len(labels)
    # One (true, predicted) count table, the unknown predictions (-1) in the last column.
    columns = np.where((pred_arr >= 0) & (pred_arr < num_classes), pred_arr, num_classes)
    keep = (true_arr >= 0) & (true_arr < num_classes)
    flat = true_arr[keep] * (num_classes + 1) + columns[keep]
    counts = np.bincount(flat, minlength=num_classes * (num_classes + 1))
    return classification_report_from_counts(counts.reshape(num_classes, num_classes + 1),
                                             labels)


def expected_calibration_error(probs: np.ndarray, true_idx: ArrayLike,
                               bins: int = 15) -> float:
    """
    Return the ECE of top-1 confidence over ``bins`` equal-width bins.

    :param probs: ``(N, C)`` probabilities.
    :param true_idx: ``(N,)`` true class indices.
    :param bins: number of confidence bins over (0, 1].
    """
    probs = np.asarray(probs, dtype=np.float64)
    true_arr = np.asarray(true_idx, dtype=np.int64)
    if probs.shape[0] == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == true_arr).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes in bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side='left') - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if np.any(mask):
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def format_report(report: Dict[str, Any]) -> str:
    """Return a plain-text table of a :func:`classification_report` result."""
    labels = report['labels']
    width = max(12, *(len(label) for label in labels))
    lines = [f"images: {report['count']}   accuracy: {report['accuracy']:.4f}   "
             f"macro-F1: {report['macro_f1']:.4f}   unknown: {report['unknown_count']}",
             '',
             f"{'class':<{width}}  precision  recall     f1  support"]
    for label in labels:
        row = report['per_class'][label]
        lines.append(f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                     f"{row['f1']:5.4f}  {row['support']:7d}")
    lines += ['', 'confusion matrix (rows: true, columns: predicted)']
    header = ' ' * width + '  ' + ' '.join(f'{label[:10]:>10}' for label in labels)
    lines.append(header)
    for label, row in zip(labels, report['confusion_matrix']):
        lines.append(f'{label:<{width}}  ' + ' '.join(f'{v:>10d}' for v in row))
    return '\n'.join(lines)


def classification_report_from_counts(pair_counts: np.ndarray,
                                      labels: Sequence[str]) -> Dict[str, Any]:
    """
    Return :func:`classification_report` of samples given as counts of (true, predicted).

    For streams too long to keep every sample (a replay of a long bag): the result is
    the same dict, figure for figure, as ``classification_report`` on the samples.

    :param pair_counts: ``(C, C + 1)`` counts; ``pair_counts[t, p]`` samples of true
        class ``t`` predicted as ``p``; the last column counts ``unknown`` (-1).
    :param labels: the ``C`` class labels in index order.
    """
    counts = np.asarray(pair_counts, dtype=np.int64)
    num_classes = len(labels)
    if counts.shape != (num_classes, num_classes + 1):
        raise ValueError(f'pair_counts has shape {counts.shape}, expected '
                         f'({num_classes}, {num_classes + 1})')
    matrix = counts[:, :num_classes]
    count = int(counts.sum())
    correct = int(np.trace(matrix))
    support = counts.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class: Dict[str, Dict[str, float]] = {}
    f1s: List[float] = []
    for index, label in enumerate(labels):
        tp = float(matrix[index, index])
        precision = tp / predicted[index] if predicted[index] else 0.0
        recall = tp / support[index] if support[index] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {'precision': precision, 'recall': recall, 'f1': f1,
                            'support': int(support[index])}
        if support[index]:
            f1s.append(f1)
    return {
        'count': count,
        'accuracy': correct / count if count else 0.0,
        'macro_f1': float(np.mean(f1s)) if f1s else 0.0,
        'unknown_count': int(counts[:, num_classes].sum()),
        'per_class': per_class,
        'labels': list(labels),
        'confusion_matrix': matrix.tolist(),
    }


def auroc(negative_scores: ArrayLike, positive_scores: ArrayLike) -> float:
    """
    Return the area under the ROC curve of a score that should be higher for positives.

    The Mann-Whitney statistic: the probability that a random positive scores above a
    random negative, ties counting one half. 0.5 is chance, 1.0 perfect separation.

    :raises ValueError: either side is empty.
    """
    negative = np.asarray(negative_scores, dtype=np.float64).ravel()
    positive = np.asarray(positive_scores, dtype=np.float64).ravel()
    if not len(negative) or not len(positive):
        raise ValueError('AUROC needs at least one negative and one positive score')
    scores = np.concatenate([negative, positive])
    order = np.argsort(scores, kind='mergesort')
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks (1-based) over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end + 1)
    count = len(positive)
    rank_sum = ranks[len(negative):].sum()
    return float((rank_sum - count * (count + 1) / 2.0) / (count * len(negative)))
