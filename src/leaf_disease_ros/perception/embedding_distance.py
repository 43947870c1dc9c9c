"""
Distance to the training data in embedding space: the card's ``embedding_distance`` section.

A model whose ONNX file has a second output, the penultimate-layer features
(``output.embedding_name`` in the card, ``(N, D)`` float32), can say how far a tile
is from what it was trained on. The distance is the Mahalanobis distance to the
nearest class mean under one covariance shared by the classes (the within-class
scatter of the training split), in the probabilistic-PCA form that keeps the card
small: the ``K`` leading eigenvectors (``basis``, ``(D, K)``) with their variances,
and one residual variance for the ``D - K`` other directions::

    d_c(x)^2 = sum_k ((x - mu_c) . v_k)^2 / lambda_k
               + (|x - mu_c|^2 - sum_k ((x - mu_c) . v_k)^2) / sigma_res^2
    distance(x) = sqrt(min_c d_c(x)^2 / D)

(divided by ``D`` so a training tile sits near 1 whatever the feature size). The
section (written by ``leaf-disease-export``)::

    "embedding_distance": {
      "kind": "mahalanobis_ppca",
      "class_means": {"dtype": "float32", "shape": [C, D], "base64": "..."},
      "basis": {"dtype": "float32", "shape": [D, K], "base64": "..."},
      "variances": [K numbers], "residual_variance": 0.01,
      "unknown_threshold": 1.9, "use_for_unknown": true,
      ...free-form record: how it was fitted, the threshold rule, AUROC checks
    }

With ``use_for_unknown`` true (and a backend that returns the embedding) the
pipeline labels a tile ``unknown`` when its distance exceeds ``unknown_threshold``,
whatever its softmax score. Cards without the section work as before.
"""

import base64
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from leaf_disease_ros.perception.json_fields import FieldReader

KIND = 'mahalanobis_ppca'
_KNOWN_KEYS = ('kind', 'class_means', 'basis', 'variances', 'residual_variance',
               'unknown_threshold', 'use_for_unknown')


def encode_array(array: np.ndarray) -> Dict[str, Any]:
    """Return the JSON form of a float32 array: dtype, shape and little-endian base64 bytes."""
    data = np.ascontiguousarray(array, dtype='<f4')
    return {'dtype': 'float32', 'shape': list(data.shape),
            'base64': base64.b64encode(data.tobytes()).decode('ascii')}


def decode_array(reader: FieldReader, key: str, shape: Tuple[int, ...]) -> np.ndarray:
    """Read the array at ``key`` (see :func:`encode_array`); ``-1`` in ``shape`` is free."""
    section = reader.section(key)
    section.choice('dtype', ('float32',))
    got = section.raw('shape')
    if (not isinstance(got, list) or len(got) != len(shape)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in got)
            or any(want not in (-1, v) for want, v in zip(shape, got))):
        raise section.fail('shape', f'expected {list(shape)} (-1: any), got {got!r}')
    text = section.text('base64')
    try:
        raw = base64.b64decode(text.encode('ascii'), validate=True)
    except ValueError as exc:
        raise section.fail('base64', f'is not base64: {exc}') from exc
    if len(raw) != 4 * int(np.prod(got)):
        raise section.fail('base64', f'holds {len(raw)} bytes, shape {got} needs '
                           f'{4 * int(np.prod(got))}')
    array = np.frombuffer(raw, dtype='<f4').reshape(got).astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise section.fail('base64', 'holds NaN or infinite values')
    return array


class EmbeddingDistance:
    """The fitted distance of a card (read-only); :meth:`distances` scores embeddings."""

    def __init__(self, class_means: np.ndarray, basis: np.ndarray, variances: np.ndarray,
                 residual_variance: float, unknown_threshold: Optional[float] = None,
                 use_for_unknown: bool = False,
                 record: Optional[Mapping[str, Any]] = None) -> None:
        """
        Hold the statistics.

        :param class_means: ``(C, D)`` class means of the training embeddings.
        :param basis: ``(D, K)`` orthonormal leading eigenvectors of the shared covariance.
        :param variances: ``(K,)`` their eigenvalues (> 0).
        :param residual_variance: mean eigenvalue of the other ``D - K`` directions (> 0).
        :param unknown_threshold: distance above which a tile is out of domain.
        :param use_for_unknown: whether the pipeline applies the threshold.
        :param record: free-form facts (how it was fitted, checks), kept in the card.
        """
        self.class_means = np.asarray(class_means, dtype=np.float32)
        self.basis = np.asarray(basis, dtype=np.float32)
        self.variances = np.asarray(variances, dtype=np.float32)
        self.residual_variance = float(residual_variance)
        self.unknown_threshold = unknown_threshold
        self.use_for_unknown = bool(use_for_unknown)
        self.record: Dict[str, Any] = dict(record or {})

    @property
    def size(self) -> int:
        """Embedding size ``D``."""
        return int(self.class_means.shape[1])

    def __eq__(self, other: object) -> bool:
        """Compare every statistic (arrays by value)."""
        if not isinstance(other, EmbeddingDistance):
            return NotImplemented
        return (np.array_equal(self.class_means, other.class_means)
                and np.array_equal(self.basis, other.basis)
                and np.array_equal(self.variances, other.variances)
                and self.residual_variance == other.residual_variance
                and self.unknown_threshold == other.unknown_threshold
                and self.use_for_unknown == other.use_for_unknown
                and self.record == other.record)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    def squared_by_class(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` squared PPCA Mahalanobis distances, divided by ``D``."""
        x = np.asarray(embeddings, dtype=np.float64)
        means = self.class_means.astype(np.float64)
        basis = self.basis.astype(np.float64)
        inv_var = 1.0 / self.variances.astype(np.float64)
        # (x - mu_c) . v_k = x . v_k - mu_c . v_k: one (N, K) product for every class
        proj_x = x @ basis
        proj_mu = means @ basis
        sq_x = np.einsum('nd,nd->n', x, x)
        sq_mu = np.einsum('cd,cd->c', means, means)
        cross = x @ means.T
        total = sq_x[:, None] - 2.0 * cross + sq_mu[None, :]             # |x - mu_c|^2
        proj = proj_x[:, None, :] - proj_mu[None, :, :]                   # (N, C, K)
        inside = np.einsum('nck,nck,k->nc', proj, proj, inv_var)
        inside_plain = np.einsum('nck,nck->nc', proj, proj)
        residual = np.maximum(total - inside_plain, 0.0) / self.residual_variance
        return (inside + residual) / float(self.size)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` float32 distances to the nearest class (about 1 on training data)."""
        return np.sqrt(self.squared_by_class(embeddings).min(axis=1)).astype(np.float32)

    def out_of_domain(self, distances: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` bool: rows the pipeline labels unknown (all False when not in use)."""
        if not self.use_for_unknown or self.unknown_threshold is None:
            return np.zeros(len(distances), dtype=bool)
        return np.asarray(distances) > self.unknown_threshold

    def to_dict(self) -> Dict[str, Any]:
        """Return the card section (the inverse of :func:`distance_from_section`)."""
        doc: Dict[str, Any] = dict(self.record)
        doc.update({
            'kind': KIND,
            'class_means': encode_array(self.class_means),
            'basis': encode_array(self.basis),
            'variances': [float(v) for v in self.variances],
            'residual_variance': self.residual_variance,
            'use_for_unknown': self.use_for_unknown,
        })
        if self.unknown_threshold is not None:
            doc['unknown_threshold'] = self.unknown_threshold
        return doc


def fit_distance(embeddings: np.ndarray, label_indices: np.ndarray, num_classes: int,
                 components: int = 32, record: Optional[Mapping[str, Any]] = None
                 ) -> EmbeddingDistance:
    """
    Fit the distance on training embeddings (class means, shared covariance, PPCA).

    :param embeddings: ``(N, D)`` features of the training images.
    :param label_indices: ``(N,)`` their class indices; every class needs one row.
    :param components: ``K``, leading directions kept (clamped to ``D - 1``).

    :raises ValueError: a class has no rows, or the features are degenerate.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(label_indices)
    counts = np.bincount(y, minlength=num_classes)
    if x.ndim != 2 or len(x) != len(y) or np.any(counts == 0):
        raise ValueError(f'need (N, D) embeddings and a row of every class, got shape '
                         f'{x.shape} and class counts {counts.tolist()}')
    means = np.stack([x[y == c].mean(axis=0) for c in range(num_classes)])
    centred = x - means[y]
    covariance = centred.T @ centred / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    size = x.shape[1]
    keep = max(1, min(int(components), size - 1))
    floor = max(float(eigenvalues[0]) * 1e-6, 1e-12)
    variances = np.maximum(eigenvalues[:keep], floor)
    residual = max(float(np.mean(eigenvalues[keep:])), floor)
    return EmbeddingDistance(means, eigenvectors[:, :keep], variances, residual,
                             record=record)


def distance_from_section(reader: FieldReader, num_classes: int,
                          embedding_size: int) -> EmbeddingDistance:
    """Read the card's ``embedding_distance`` section (``reader`` wraps it)."""
    reader.choice('kind', (KIND,))
    means = decode_array(reader, 'class_means', (num_classes, embedding_size))
    basis = decode_array(reader, 'basis', (embedding_size, -1))
    count = basis.shape[1]
    variances = reader.numbers('variances', count, positive=True,
                               what=' (one per basis column)')
    residual = reader.number('residual_variance', positive=True)
    threshold = (None if reader.raw('unknown_threshold', None) is None
                 else reader.number('unknown_threshold', positive=True))
    use = reader.raw('use_for_unknown', False)
    if not isinstance(use, bool):
        raise reader.fail('use_for_unknown', f'expected true or false, got {use!r}')
    if use and threshold is None:
        raise reader.fail('unknown_threshold', 'is required when use_for_unknown is true')
    record = {k: v for k, v in reader.doc.items() if k not in _KNOWN_KEYS}
    return EmbeddingDistance(means, basis, np.asarray(variances, dtype=np.float32), residual,
                             threshold, use, record)
