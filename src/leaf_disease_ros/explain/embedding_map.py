"""
The embedding map: 2-D projections of embeddings, the silhouette score, PNG and HTML pages.

- :func:`project` maps ``(N, D)`` embeddings to ``(N, 2)``: ``pca`` (NumPy, the
  two leading principal components) or ``tsne`` (scikit-learn, the ``explain``
  extra; seeded, PCA-initialised);
- :func:`silhouette_score` is the mean silhouette of the labelled points in the
  embedding space itself (Euclidean), computed in row chunks so memory stays
  ``O(chunk * N)``: 1 = tight, well separated classes, 0 = overlapping;
- :func:`render_map_png` draws the points coloured by label (the map colours of
  :mod:`leaf_disease_ros.geo.mapping`), misclassified points as crosses in the
  colour of their true label, with a legend (OpenCV, no matplotlib);
- :func:`map_html` writes one self-contained page (no network): an SVG scatter
  whose points show their thumbnail, label, prediction, score and file on hover.
"""

import base64
from dataclasses import dataclass
import html
import json
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.geo.mapping import label_colour_bgr
from leaf_disease_ros.perception.errors import LeafDiseaseError, MissingDependencyError

PROJECTIONS = ('pca', 'tsne')
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class MapPoint:
    """One embedded image: its label (folder), prediction, score, file and thumbnail JPEG."""

    label: str
    predicted: str
    score: float
    name: str
    thumbnail_jpeg: bytes = b''

    @property
    def misclassified(self) -> bool:
        """The prediction differs from the label."""
        return self.label != self.predicted


def project(embeddings: np.ndarray, method: str = 'pca', seed: int = 0) -> np.ndarray:
    """
    Return ``(N, 2)`` float32 coordinates of ``(N, D)`` embeddings.

    :raises MissingDependencyError: ``tsne`` without scikit-learn.
    :raises LeafDiseaseError: unknown method or fewer than 3 points.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if method not in PROJECTIONS:
        raise LeafDiseaseError(f'projection {method!r} is not one of {", ".join(PROJECTIONS)}')
    if x.ndim != 2 or len(x) < 3:
        raise LeafDiseaseError(f'need at least 3 embeddings to draw a map, got {len(x)}')
    if method == 'pca':
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return (centred @ vt[:2].T).astype(np.float32)
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:
        raise MissingDependencyError(
            "t-SNE needs scikit-learn: pip install 'leaf_disease_ros[explain]' (or "
            'scikit-learn); --projection pca needs nothing more') from exc
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed)
    return tsne.fit_transform(x.astype(np.float32)).astype(np.float32)


def silhouette_score(embeddings: np.ndarray, labels: Sequence[str],
                     chunk_rows: int = 512) -> float:
    """
    Return the mean silhouette coefficient of the labelled points (Euclidean distance).

    Points of a class with a single member score 0 (as in scikit-learn).

    :raises LeafDiseaseError: fewer than 2 classes.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    names = sorted(set(labels))
    if len(names) < 2:
        raise LeafDiseaseError('the silhouette score needs at least 2 classes')
    index = np.array([names.index(label) for label in labels])
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    squared = np.einsum('nd,nd->n', x, x)
    one_hot = np.eye(len(names))[index]  # (N, K)
    values = np.zeros(len(x))
    for start in range(0, len(x), chunk_rows):
        rows = slice(start, start + chunk_rows)
        d2 = squared[rows, None] - 2.0 * x[rows] @ x.T + squared[None, :]
        dist = np.sqrt(np.maximum(d2, 0.0))
        sums = dist @ one_hot  # (chunk, K): distance sums to each class
        own = index[rows]
        own_count = counts[own] - 1.0
        a = np.where(own_count > 0, sums[np.arange(len(own)), own] / np.maximum(own_count, 1),
                     0.0)
        means = sums / counts[None, :]
        means[np.arange(len(own)), own] = np.inf
        b = means.min(axis=1)
        s = np.where(own_count > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
        values[rows] = s
    return float(values.mean())


def _label_order(points: Sequence[MapPoint], labels: Sequence[str]) -> List[str]:
    seen = list(labels) + sorted({p.label for p in points} - set(labels))
    return [label for label in seen if any(p.label == label for p in points)]


def _hex(bgr: Tuple[int, int, int]) -> str:
    return '#%02x%02x%02x' % (bgr[2], bgr[1], bgr[0])


def _scaled(xy: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    low = xy.min(axis=0)
    span = np.maximum(xy.max(axis=0) - low, 1e-9)
    unit = (xy - low) / span
    out = np.empty_like(unit)
    out[:, 0] = margin + unit[:, 0] * (width - 2 * margin)
    out[:, 1] = height - margin - unit[:, 1] * (height - 2 * margin)
    return out


def render_map_png(xy: np.ndarray, points: Sequence[MapPoint], labels: Sequence[str],
                   title: str, size_px: int = 900) -> np.ndarray:
    """Return the scatter as a BGR image (legend at the right, title at the top)."""
    legend_px = 220
    image = np.full((size_px, size_px + legend_px, 3), 255, np.uint8)
    pixels = _scaled(np.asarray(xy, dtype=np.float64), size_px, size_px, 40)
    order = sorted(range(len(points)), key=lambda i: points[i].misclassified)
    for i in order:  # misclassified last, on top
        point = points[i]
        colour = label_colour_bgr(point.label, labels)
        x, y = int(round(pixels[i, 0])), int(round(pixels[i, 1]))
        if point.misclassified:
            cv2.drawMarker(image, (x, y), (0, 0, 0), cv2.MARKER_TILTED_CROSS, 11, 3)
            cv2.drawMarker(image, (x, y), colour, cv2.MARKER_TILTED_CROSS, 9, 1)
        else:
            cv2.circle(image, (x, y), 3, colour, -1, cv2.LINE_AA)
    cv2.putText(image, title, (10, 24), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    y = 60
    for label in _label_order(points, labels):
        count = sum(p.label == label for p in points)
        wrong = sum(p.label == label and p.misclassified for p in points)
        cv2.circle(image, (size_px + 12, y - 4), 6, label_colour_bgr(label, labels), -1)
        cv2.putText(image, f'{label} ({count}, {wrong} x)', (size_px + 24, y), _FONT, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        y += 24
    cv2.drawMarker(image, (size_px + 12, y + 6), (0, 0, 0), cv2.MARKER_TILTED_CROSS, 11, 2)
    cv2.putText(image, 'x: misclassified', (size_px + 24, y + 10), _FONT, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return image


def thumbnail_jpeg(image_bgr: np.ndarray, side_px: int = 72, quality: int = 75) -> bytes:
    """Return a JPEG thumbnail (longer side ``side_px``) of a BGR image."""
    h, w = image_bgr.shape[:2]
    scale = side_px / max(h, w)
    small = cv2.resize(image_bgr, (max(1, int(w * scale)), max(1, int(h * scale))),
                       interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode('.jpg', small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise LeafDiseaseError('OpenCV could not encode a thumbnail')
    return data.tobytes()


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
#map {{ border: 1px solid #ccc; background: #fff; }}
#tip {{ position: fixed; display: none; background: #fff; border: 1px solid #888;
        padding: 6px; font-size: 12px; pointer-events: none; max-width: 260px; }}
#tip img {{ display: block; max-width: 96px; margin-bottom: 4px; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.legend i {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px;
             margin-right: 4px; }}
circle:hover, path:hover {{ stroke: #000; stroke-width: 2; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary}</p>
<p class="legend">{legend} <span>&#10005; misclassified</span></p>
<svg id="map" width="{width}" height="{height}" viewBox="0 0 {width} {height}">{marks}</svg>
<div id="tip"></div>
<script>
const POINTS = {points};
const tip = document.getElementById('tip');
document.getElementById('map').addEventListener('mousemove', (event) => {{
  const index = event.target.getAttribute('data-i');
  if (index === null) {{ tip.style.display = 'none'; return; }}
  const p = POINTS[Number(index)];
  tip.innerHTML = (p.t ? '<img alt="thumbnail" src="data:image/jpeg;base64,' + p.t + '">' : '')
    + '<b>' + p.l + '</b> predicted ' + p.p + ' ' + p.s.toFixed(3) + '<br>' + p.n;
  tip.style.left = (event.clientX + 14) + 'px';
  tip.style.top = (event.clientY + 14) + 'px';
  tip.style.display = 'block';
}});
document.getElementById('map').addEventListener('mouseleave', () => {{
  tip.style.display = 'none';
}});
</script>
</body></html>
"""


def map_html(xy: np.ndarray, points: Sequence[MapPoint], labels: Sequence[str], title: str,
             summary: str, size_px: int = 800) -> str:
    """Return the self-contained HTML page of the map (thumbnails inlined as base64)."""
    pixels = _scaled(np.asarray(xy, dtype=np.float64), size_px, size_px, 20)
    marks: List[str] = []
    order = sorted(range(len(points)), key=lambda i: points[i].misclassified)
    for i in order:
        point = points[i]
        colour = _hex(label_colour_bgr(point.label, labels))
        x, y = pixels[i]
        if point.misclassified:
            marks.append(f'<path data-i="{i}" d="M{x - 5:.1f} {y - 5:.1f}l10 10m0 -10l-10 10" '
                         f'stroke="{colour}" stroke-width="3"/>')
        else:
            marks.append(f'<circle data-i="{i}" cx="{x:.1f}" cy="{y:.1f}" r="4" '
                         f'fill="{colour}"/>')
    legend = ' '.join(
        f'<span><i style="background:{_hex(label_colour_bgr(label, labels))}"></i>'
        f'{html.escape(label)}</span>' for label in _label_order(points, labels))
    data = [{'l': p.label, 'p': p.predicted, 's': round(p.score, 4), 'n': p.name,
             't': base64.b64encode(p.thumbnail_jpeg).decode('ascii')} for p in points]
    # '</' cannot end the script early once escaped
    payload = json.dumps(data).replace('</', '<\\/')
    return _HTML.format(title=html.escape(title), summary=html.escape(summary), legend=legend,
                        width=size_px, height=size_px, marks=''.join(marks), points=payload)


def subsample(count: int, labels: Sequence[str], max_points: int, seed: int = 0
              ) -> Optional[np.ndarray]:
    """Return sorted indices of at most ``max_points`` rows, stratified by label (None: all)."""
    if max_points <= 0 or count <= max_points:
        return None
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    chosen: List[int] = []
    share = max_points / count
    for name in names:
        rows = np.flatnonzero(np.asarray(labels) == name)
        keep = max(1, int(round(len(rows) * share)))
        chosen += rng.choice(rows, size=min(keep, len(rows)), replace=False).tolist()
    return np.sort(np.asarray(chosen[:max_points] if len(chosen) > max_points else chosen))
