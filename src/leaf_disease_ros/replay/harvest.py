"""
Harvesting a recording's tiles for labelling: ``leaf-disease-replay BAG --harvest-tiles DIR``.

:class:`TileHarvester` watches the replay's frames (it is a frame observer of
:mod:`.runner`) and keeps the ``max_tiles`` classified tiles the model was **least
sure of**, then writes them as a class-folder dataset that ``leaf-disease-train
--init-from`` reads once a person has corrected the labels by moving files::

    DIR/
      index.csv                  one row per tile: file, predicted label, uncertainty,
                                 score, stamp, position, box, top-k scores, model id
      black_rot/ esca/ healthy/ leaf_blight/ unknown/ ...   (the predicted labels)
        00001_t1757665812.250000000_lat44.8931234_lon-0.1541234_x256y0.png
        00002_t1757665813.000000000_nofix_x0y0.png

- **Uncertainty** is ``1 - margin``, the margin being the calibrated score of the best
  class minus that of the second (``top_k`` must be 2 or more; with ``top_k: 1`` the
  second score is taken as ``1 - best``, its largest possible value). A tile whose
  two best classes are close is the most useful one to label; ``unknown`` tiles, whose
  best score is low, rank high too.
- **File names** start with the rank over the whole harvest (1 = most uncertain), so
  every folder lists its most uncertain tiles first; then the frame's header stamp
  (``t<seconds>.<nanoseconds>``), its position (``lat<deg>_lon<deg>``, or ``nofix``)
  and the tile's top-left corner in the frame. The predicted label is the folder and
  is not in the name: a file moved to another folder carries no stale label.
- Tiles are PNG (lossless: the pixels the model saw, at the frame's resolution).
- Memory and disk are bounded by ``max_tiles``: tiles are written to a staging folder
  inside DIR as they come, and one that falls out of the most uncertain
  ``max_tiles`` is deleted at once. :meth:`TileHarvester.commit` moves the kept
  tiles into their label folders and writes the index; :meth:`TileHarvester.abort`
  removes the staging folder.
- Nothing is ever written over: DIR must be new or empty, and neither be, hold nor
  lie inside an input (:func:`check_harvest_folder`). Staging folders left by a killed
  harvest (``.harvest-staging-*``, nothing else in DIR) do not count: they are removed.
"""

import csv
from dataclasses import dataclass
import heapq
import io
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.geo.mapping import iso_utc
from leaf_disease_ros.perception.atomic_io import atomic_write_text
from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.output_paths import (check_apart_from_inputs,
                                                      check_output_folder)
from leaf_disease_ros.perception.pipeline import Detection, FrameResult

INDEX_FILE = 'index.csv'
STAGING_PREFIX = '.harvest-staging-'
HARVEST_COMMAND = 'leaf-disease-replay --harvest-tiles'
DEFAULT_HARVEST_MAX = 500  # a labelling session; PNG tiles of 256 px take ~150 kB
UNCERTAINTY_RULE = ('1 - margin: the best calibrated score minus the second best; '
                    'rank 1 is the most uncertain tile')
INDEX_COLUMNS = ('rank', 'file', 'predicted_label', 'uncertainty', 'score', 'stamp_ns',
                 'stamp_utc', 'latitude_deg', 'longitude_deg', 'fix_status', 'position',
                 'box_x0', 'box_y0', 'box_x1', 'box_y1', 'top_k', 'model_id', 'bag')
_NS_PER_S = 1_000_000_000


def uncertainty(detection: Detection) -> float:
    """Return ``1 - (best score - second best score)`` of a tile, in [0, 1]."""
    scores = [score for _, score in detection.top_k]
    best = scores[0] if scores else detection.score
    second = scores[1] if len(scores) > 1 else 1.0 - best
    return float(min(1.0, max(0.0, 1.0 - (best - second))))


def stale_staging(path: str) -> List[str]:
    """Return the staging folders a killed harvest left in ``path`` (full paths)."""
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if name.startswith(STAGING_PREFIX)
                  and os.path.isdir(os.path.join(path, name))
                  and not os.path.islink(os.path.join(path, name)))


def check_harvest_folder(path: str, inputs: Sequence[str] = ()) -> None:
    """
    Refuse a harvest folder that holds anything: a harvest never writes over files.

    Staging folders of a killed harvest do not count (:func:`stale_staging`).

    :raises DatasetError: ``path`` is a file, or a folder that is not empty (it may hold
        an earlier harvest whose labels someone corrected).
    :raises OutputError: ``path`` is, holds or lies inside an input, or is a special file.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise DatasetError(f'--harvest-tiles {path} is a file; give a new folder')
    stale = {os.path.basename(p) for p in stale_staging(path)}
    if os.path.isdir(path) and set(os.listdir(path)) - stale:
        raise DatasetError(
            f'--harvest-tiles {path} is not empty (an earlier harvest, perhaps with '
            'corrected labels): a harvest never writes over files; give a new folder, '
            f'e.g. --harvest-tiles {path.rstrip(os.sep) or path}_2')
    if stale:
        check_apart_from_inputs(path, inputs, '--harvest-tiles', folder=True)
    else:
        check_output_folder(path, inputs, what='--harvest-tiles', command=HARVEST_COMMAND,
                            allow_rerun=False)


@dataclass(frozen=True)
class _Kept:
    """A staged tile: what the index needs, and where the PNG waits."""

    uncertainty: float
    sequence: int
    staged: str
    label: str
    score: float
    stamp_ns: int
    latitude_deg: Optional[float]
    longitude_deg: Optional[float]
    fix_status: Optional[int]
    position: str
    box: Tuple[int, int, int, int]
    top_k: Tuple[Tuple[str, float], ...]


def tile_file_name(rank: int, width: int, stamp_ns: int, latitude_deg: Optional[float],
                   longitude_deg: Optional[float], box: Sequence[int]) -> str:
    """Return a harvested tile's file name (module docstring)."""
    seconds, nanoseconds = divmod(int(stamp_ns), _NS_PER_S)
    where = ('nofix' if latitude_deg is None or longitude_deg is None
             else f'lat{latitude_deg:.7f}_lon{longitude_deg:.7f}')
    return (f'{rank:0{width}d}_t{seconds}.{nanoseconds:09d}_{where}_x{int(box[0])}'
            f'y{int(box[1])}.png')


class TileHarvester:
    """Keeps the most uncertain tiles of a replay and writes them by predicted label."""

    def __init__(self, folder: str, max_tiles: int = DEFAULT_HARVEST_MAX,
                 model_id: str = '', bag: str = '', inputs: Sequence[str] = ()) -> None:
        """
        Prepare ``folder`` (created; it must be new or empty, and apart from ``inputs``).

        :raises DatasetError: the folder holds files, or ``max_tiles`` < 1.
        :raises OutputError: the folder is, holds or lies inside an input.
        :raises OSError: the folder cannot be created.
        """
        if max_tiles < 1:
            raise DatasetError(f'--harvest-max must be at least 1, got {max_tiles}')
        check_harvest_folder(folder, inputs)
        for stale in stale_staging(folder):
            shutil.rmtree(stale, ignore_errors=True)
        self.folder = folder
        self.max_tiles = int(max_tiles)
        self.model_id = model_id
        self.bag = bag
        self._created = not os.path.exists(folder)
        os.makedirs(folder, exist_ok=True)
        self._staging = tempfile.mkdtemp(prefix='.harvest-staging-', dir=folder)
        self._heap: List[Tuple[float, int, _Kept]] = []  # (uncertainty, -sequence, tile)
        self._sequence = 0
        self.tiles_seen = 0

    def observe(self, image_bgr: np.ndarray, result: FrameResult, truth: Any = None) -> None:
        """Consider every classified tile of one frame (a frame observer of the runner)."""
        tag = result.geotag.geotag
        for detection in result.detections:
            self.tiles_seen += 1
            value = uncertainty(detection)
            self._sequence += 1
            key = (value, -self._sequence)
            if len(self._heap) >= self.max_tiles and key <= self._heap[0][:2]:
                continue  # surer than every kept tile
            x0, y0, x1, y1 = detection.box_xyxy_px
            ok, png = cv2.imencode('.png', image_bgr[y0:y1, x0:x1])
            if not ok:
                raise DatasetError(f'cannot encode a tile of the frame at stamp '
                                   f'{result.stamp_ns} as PNG')
            staged = os.path.join(self._staging, f'{self._sequence}.png')
            with open(staged, 'wb') as stream:
                stream.write(png.tobytes())
            kept = _Kept(
                uncertainty=value, sequence=self._sequence, staged=staged,
                label=detection.label, score=detection.score, stamp_ns=result.stamp_ns,
                latitude_deg=None if tag is None else tag.latitude_deg,
                longitude_deg=None if tag is None else tag.longitude_deg,
                fix_status=None if tag is None else tag.status, position=result.geotag.reason,
                box=detection.box_xyxy_px, top_k=detection.top_k)
            heapq.heappush(self._heap, (key[0], key[1], kept))
            if len(self._heap) > self.max_tiles:
                _, _, dropped = heapq.heappop(self._heap)
                os.unlink(dropped.staged)

    def commit(self) -> Dict[str, Any]:
        """
        Move the kept tiles into ``folder/<predicted label>/`` and write the index.

        :returns: the harvest's summary (for the report and the command's output).
        """
        tiles = sorted((kept for _, _, kept in self._heap),
                       key=lambda k: (-k.uncertainty, k.sequence))
        width = max(5, len(str(len(tiles))))
        rows: List[List[Any]] = []
        by_label: Dict[str, int] = {}
        for rank, tile in enumerate(tiles, start=1):
            name = tile_file_name(rank, width, tile.stamp_ns, tile.latitude_deg,
                                  tile.longitude_deg, tile.box)
            label_dir = os.path.join(self.folder, tile.label)
            os.makedirs(label_dir, exist_ok=True)
            os.replace(tile.staged, os.path.join(label_dir, name))
            by_label[tile.label] = by_label.get(tile.label, 0) + 1
            rows.append([
                rank, f'{tile.label}/{name}', tile.label, f'{tile.uncertainty:.4f}',
                f'{tile.score:.4f}', tile.stamp_ns, iso_utc(tile.stamp_ns),
                '' if tile.latitude_deg is None else f'{tile.latitude_deg:.8f}',
                '' if tile.longitude_deg is None else f'{tile.longitude_deg:.8f}',
                '' if tile.fix_status is None else tile.fix_status, tile.position,
                *tile.box, ' '.join(f'{label}:{score:.4f}' for label, score in tile.top_k),
                self.model_id, self.bag])
        text = io.StringIO()
        writer = csv.writer(text, lineterminator='\n')
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
        atomic_write_text(os.path.join(self.folder, INDEX_FILE), text.getvalue())
        shutil.rmtree(self._staging, ignore_errors=True)
        self._heap = []
        return {'folder': os.path.abspath(self.folder), 'index': INDEX_FILE,
                'tiles_classified': self.tiles_seen, 'tiles_harvested': len(tiles),
                'max_tiles': self.max_tiles, 'by_label': dict(sorted(by_label.items())),
                'uncertainty': UNCERTAINTY_RULE}

    def abort(self) -> None:
        """Remove the staged tiles (and the folder, when this harvest created it)."""
        shutil.rmtree(self._staging, ignore_errors=True)
        self._heap = []
        if self._created:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass  # not empty: leave what someone else put there


def harvest_lines(summary: Dict[str, Any]) -> List[str]:
    """Return the report.md section of a harvest."""
    labels = ', '.join(f'{label} {count}' for label, count in summary['by_label'].items())
    return ['## Harvested tiles', '',
            f"{summary['tiles_harvested']} of {summary['tiles_classified']} classified tiles "
            f"(at most {summary['max_tiles']}, most uncertain first: {summary['uncertainty']}) "
            f"in `{summary['folder']}`, by predicted label: {labels or 'none'}; index "
            f"`{summary['index']}`. Correct the labels by moving files between the folders, "
            'then fine-tune: docs/adaptation.md.', '']
