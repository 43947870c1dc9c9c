"""
Classification metrics: confusion matrix, accuracy, macro-F1, per-class P/R/F1, ECE.

One implementation for training, export, the classify CLI and the replay report, so
a figure means the same thing everywhere. Conventions: rows of the confusion matrix
are the true class, columns the predicted class. A figure whose denominator is zero
is not applicable (``None`` in JSON, ``n/a`` in text), never a 0 beside a perfect
average: a class with no samples (``support == 0``) has no recall and no F1, and is
left out of the macro average, whose classes ``macro_f1_labels`` lists (as
scikit-learn does when given only the present labels). A class with samples that is
never predicted has precision 0 (scikit-learn's ``zero_division=0``); a class neither
present nor predicted has no precision either.
"""

from typing import Any, Dict, List, Optional, Sequence

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
    ``macro_f1_labels`` (the classes it averages: those with samples),
    ``unknown_count``, ``per_class`` (label -> precision, recall, f1, support; a
    figure that does not apply is ``None``), ``labels`` and ``confusion_matrix``
    (list of lists).
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


NOT_APPLICABLE = 'n/a'


def format_figure(value: Optional[float], digits: int = 4) -> str:
    """Return ``value`` with ``digits`` decimals, or ``n/a`` when it does not apply."""
    return NOT_APPLICABLE if value is None else f'{value:.{digits}f}'


def macro_average_note(report: Dict[str, Any]) -> str:
    """
    Say which classes the macro average covers, when it is not all of them.

    Returns ``''`` when every class has samples, else for example
    ``'over 4 of 5 classes (background: no samples, n/a)'``.
    """
    covered = report['macro_f1_labels']
    absent = [label for label in report['labels'] if label not in covered]
    if not absent:
        return ''
    return (f"over {len(covered)} of {len(report['labels'])} classes "
            f"({', '.join(absent)}: no samples, {NOT_APPLICABLE})")


def format_report(report: Dict[str, Any]) -> str:
    """
    Return a plain-text table of a :func:`classification_report` result.

    Columns are as wide as the longest label; ``unknown`` is shown when some sample was
    predicted unknown (argmax reports never are); figures that do not apply read
    ``n/a``, and the macro average says which classes it covers.
    """
    labels = report['labels']
    width = max(len('class'), *(len(label) for label in labels))
    note = macro_average_note(report)
    head = (f"images: {report['count']}   accuracy: {report['accuracy']:.4f}   "
            f"macro-F1: {report['macro_f1']:.4f}" + (f' {note}' if note else ''))
    if report['unknown_count']:
        head += f"   unknown: {report['unknown_count']} (counted wrong)"
    lines = [head, '', f"{'class':<{width}}  precision  recall      f1  support"]
    for label in labels:
        row = report['per_class'][label]
        lines.append(f"{label:<{width}}  {format_figure(row['precision']):>9}  "
                     f"{format_figure(row['recall']):>6}  {format_figure(row['f1']):>6}  "
                     f"{row['support']:7d}")
    lines += ['', 'confusion matrix (rows: true, columns: predicted)']
    column = max(len(label) for label in labels)
    lines.append(' ' * width + '  ' + ' '.join(f'{label:>{column}}' for label in labels))
    for label, row in zip(labels, report['confusion_matrix']):
        lines.append(f'{label:<{width}}  ' + ' '.join(f'{v:>{column}d}' for v in row))
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
    per_class: Dict[str, Dict[str, Any]] = {}
    f1s: List[float] = []
    covered: List[str] = []
    for index, label in enumerate(labels):
        tp = float(matrix[index, index])
        precision: Optional[float] = None
        if predicted[index]:
            precision = tp / predicted[index]
        elif support[index]:
            precision = 0.0  # present, never predicted: zero_division=0
        recall: Optional[float] = None
        f1: Optional[float] = None
        if support[index]:
            recall = tp / support[index]
            f1 = (2 * precision * recall / (precision + recall)
                  if precision is not None and precision + recall else 0.0)
            f1s.append(f1)
            covered.append(label)
        per_class[label] = {'precision': precision, 'recall': recall, 'f1': f1,
                            'support': int(support[index])}
    return {
        'count': count,
        'accuracy': correct / count if count else 0.0,
        'macro_f1': float(np.mean(f1s)) if f1s else 0.0,
        'macro_f1_labels': covered,
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
