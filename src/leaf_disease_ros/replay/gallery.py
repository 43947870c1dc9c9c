"""
The replay's gallery: the most confident findings and the most uncertain tiles, explained.

:class:`GalleryCollector` sees every processed frame (:meth:`GalleryCollector.add`)
and keeps, in bounded memory, the ``size`` disease findings with the highest score
and the ``size`` classified tiles with the lowest top-1 score (unknown tiles
included): a copy of each tile (at most :data:`MAX_TILE_PX` on a side) with its
label, top-k, box, image stamp, bag log time and position. A leaf seen in several
consecutive frames is kept once per section (a new tile of the same label within
:data:`SAME_LEAF_S` seconds and :data:`SAME_LEAF_M` metres replaces the old one only
when it ranks higher).

After the replay, :meth:`GalleryCollector.explain` computes the saliency of every
kept tile with the replay's backend in one batched call
(:func:`leaf_disease_ros.explain.saliency.explain_tiles`; occlusion on a 5 x 5 grid,
26 inferences per tile) and renders the overlays that ``report.html`` shows.
"""

from dataclasses import dataclass, field
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from leaf_disease_ros.explain.overlay import saliency_picture
from leaf_disease_ros.explain.saliency import explain_tiles
from leaf_disease_ros.geo.geodesy import distance_m
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.pipeline import Detection, FrameResult

MAX_TILE_PX = 256
SAME_LEAF_S = 2.0
SAME_LEAF_M = 1.0
GALLERY_GRID = 5
DEFAULT_SIZE = 6
SECTIONS = ('confident', 'uncertain')


@dataclass(eq=False)  # identity: two tiles of equal score are still two tiles
class GalleryTile:
    """One kept tile and what the report says about it."""

    rank_key: float  # larger is better for its section
    tile_bgr: np.ndarray
    label: str
    score: float
    top_k: Tuple[Tuple[str, float], ...]
    box_xyxy_px: Tuple[int, int, int, int]
    stamp_ns: int
    log_time_ns: int
    latitude_deg: Optional[float]
    longitude_deg: Optional[float]
    fix_status: Optional[int]
    distance: Optional[float]
    overlay_jpeg: bytes = b''
    saliency_label: str = ''
    saliency_method: str = ''
    extra: Dict[str, Any] = field(default_factory=dict)


def _tile_copy(frame_bgr: np.ndarray, box: Tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    tile = frame_bgr[y0:y1, x0:x1]
    side = max(tile.shape[:2])
    if side > MAX_TILE_PX:
        scale = MAX_TILE_PX / side
        tile = cv2.resize(tile, (max(1, int(tile.shape[1] * scale)),
                                 max(1, int(tile.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(tile).copy()


class GalleryCollector:
    """Keeps the best ``size`` tiles of each section while a replay streams (bounded)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = max(0, int(size))
        self.sections: Dict[str, List[GalleryTile]] = {name: [] for name in SECTIONS}
        self.saliency: Dict[str, Any] = {}

    def add(self, frame_bgr: Callable[[], np.ndarray], result: FrameResult,
            log_time_ns: int) -> None:
        """
        Consider every tile of one processed frame.

        ``frame_bgr`` returns the frame at the camera's full size; it is called only when
        a tile is kept (the replay may have decoded the frame at reduced size and
        decodes it again for the gallery's few tiles).
        """
        if not self.size or not result.detections:
            return
        tag = result.geotag.geotag
        for detection in result.detections:
            if detection.is_finding:
                self._offer('confident', detection.score, frame_bgr, detection, result,
                            log_time_ns, tag)
            self._offer('uncertain', -detection.score, frame_bgr, detection, result,
                        log_time_ns, tag)

    def _same_leaf(self, kept: GalleryTile, label: str, stamp_ns: int,
                   position: Optional[Tuple[float, float]]) -> bool:
        if kept.label != label or abs(kept.stamp_ns - stamp_ns) > SAME_LEAF_S * 1e9:
            return False
        if position is None or kept.latitude_deg is None or kept.longitude_deg is None:
            return True
        return distance_m(kept.latitude_deg, kept.longitude_deg, *position) <= SAME_LEAF_M

    def _offer(self, section: str, key: float, frame_bgr: Callable[[], np.ndarray],
               detection: Detection,
               result: FrameResult, log_time_ns: int, tag: Any) -> None:
        kept = self.sections[section]
        full = len(kept) >= self.size
        if full and key <= kept[-1].rank_key:
            return
        position = None if tag is None else (tag.latitude_deg, tag.longitude_deg)
        twin = next((k for k in kept if self._same_leaf(k, detection.label, result.stamp_ns,
                                                        position)), None)
        if twin is not None:
            if key <= twin.rank_key:
                return
            kept.remove(twin)
        elif full:
            kept.pop()
        kept.append(GalleryTile(
            rank_key=key, tile_bgr=_tile_copy(frame_bgr(), detection.box_xyxy_px),
            label=detection.label, score=detection.score, top_k=detection.top_k,
            box_xyxy_px=detection.box_xyxy_px, stamp_ns=result.stamp_ns,
            log_time_ns=log_time_ns,
            latitude_deg=None if tag is None else tag.latitude_deg,
            longitude_deg=None if tag is None else tag.longitude_deg,
            fix_status=None if tag is None else tag.status, distance=detection.distance))
        kept.sort(key=lambda t: t.rank_key, reverse=True)

    def tiles(self) -> List[GalleryTile]:
        """Return every kept tile, confident section first."""
        return [tile for name in SECTIONS for tile in self.sections[name]]

    def explain(self, backend: Any, card: ModelCard, grid: int = GALLERY_GRID) -> None:
        """Compute every kept tile's saliency with ``backend`` (batched) and render it."""
        tiles = self.tiles()
        if not tiles:
            return
        start = time.perf_counter()
        run = explain_tiles([t.tile_bgr for t in tiles], backend, card, 'occlusion', grid=grid)
        for tile, saliency in zip(tiles, run.maps):
            picture = saliency_picture(tile.tile_bgr, saliency.heat, tile.label, tile.score,
                                       saliency.method)
            ok, data = cv2.imencode('.jpg', picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
            tile.overlay_jpeg = data.tobytes() if ok else b''
            tile.saliency_label = saliency.label
            tile.saliency_method = saliency.method
        self.saliency = {'method': 'occlusion', 'grid': grid, 'tiles': len(tiles),
                         'inferences': run.inferences, 'batched_calls': run.batches,
                         'ms_per_tile': 1e3 * (time.perf_counter() - start) / len(tiles)}
