"""
The vine rows of a season (``--rows``): the layout file read strictly, coverage per row.

The layout is GeoJSON (RFC 7946: longitude, latitude, WGS84): a ``FeatureCollection``
of ``LineString`` features, each the centre line of one vine row, with a ``row``
property (a string id, unique) and optionally a ``name``. :func:`load_row_layout`
refuses, with a :class:`RowLayoutError` naming the file, the feature (index and row
id) and the fix: a path that is not a regular file (a folder, a FIFO, a device), a
file over :data:`MAX_FILE_BYTES`, text that is not strict JSON (no NaN, no duplicate
keys), anything but a non-empty FeatureCollection, a geometry that is not a
LineString of two or more finite positions within longitude [-180, 180] and latitude
[-90, 90], a zero-length row or one longer than :data:`MAX_ROW_LENGTH_M`, a missing,
non-string or duplicate ``row``, more than :data:`MAX_ROWS` rows or
:data:`MAX_VERTICES` positions, and a ``crs`` other than WGS84 longitude / latitude.

:func:`row_coverage` cuts every row into pieces of at most :data:`SAMPLE_STEP_M`
and asks each pass (:class:`~.season_map.PassCover`) about the middle of each
piece: *covered* when a judged frame looked at it (its camera footprint, or within the
past radius of its judged path for a pass without camera geometry), *out of domain*
when only frames held out of the model's domain did, *driven* when the pass's GPS
track came within the past radius of it (or it was covered or out of domain). Per
pass and row: ``length_m``, ``covered_m``, ``covered_fraction``, ``out_of_domain_m``
(None for a result of an earlier version, which did not record held frames) and
``driven_m``, listed only for the rows a pass came near; per row over the season:
the passes that covered any of it, the best covered fraction, the latest pass that
covered it, and whether no pass ever covered it. Rows change the season's outputs,
never a bag's result: a rerun with another ``--rows`` replays nothing.
"""

from dataclasses import dataclass, field
import hashlib
import json
import math
import os
import stat
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.geodesy import local_east_north_m
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.json_fields import strict_json
from leaf_disease_ros.perception.output_paths import special_kind
from leaf_disease_ros.replay.season_map import Season

OPTION = '--rows'
ROWS_FILE = 'rows.json'
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_ROWS = 5000
MAX_VERTICES = 200_000
MAX_ROW_LENGTH_M = 5000.0
MAX_ID_CHARS = 200
SAMPLE_STEP_M = 0.5
FIX = ('give a GeoJSON FeatureCollection of LineString features (lon, lat in WGS84), one '
       'per vine row with a unique "row" string property (docs/season.md)')
_WGS84_NAMES = ('CRS84', 'EPSG::4326', 'EPSG:4326', 'WGS84', 'WGS 84')


class RowLayoutError(ConfigError):
    """The row layout file (``--rows``) cannot be read or is not a layout of rows."""

    def __init__(self, path: str, reason: str, fix: str = FIX) -> None:
        self.path = path
        super().__init__(OPTION, f'{path}: {reason}; {fix}')


@dataclass(frozen=True)
class Row:
    """One vine row: its id, name and centre line (WGS84 degrees, in order)."""

    row_id: str
    name: str
    latitudes_deg: Tuple[float, ...]
    longitudes_deg: Tuple[float, ...]


@dataclass(frozen=True)
class RowLayout:
    """The rows of a layout file, in file order, with the file's path and SHA-256."""

    path: str
    rows: Tuple[Row, ...]
    sha256: str = ''


def _read_bytes(path: str) -> bytes:
    if not os.path.lexists(path):
        raise RowLayoutError(path, 'does not exist', 'give the path of a row layout file')
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RowLayoutError(path, f'cannot be read ({exc.strerror or exc})',
                             'give a row layout file you can read') from exc
    if not stat.S_ISREG(mode):
        kind = ('a folder' if stat.S_ISDIR(mode)
                else special_kind(os.path.realpath(path)) or 'not a regular file')
        raise RowLayoutError(path, f'is {kind}, not a file',
                             'give a GeoJSON file (a FIFO or a device is never read)')
    try:
        with open(path, 'rb') as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RowLayoutError(path, f'cannot be read ({exc.strerror or exc})',
                             'give a row layout file you can read') from exc
    if len(data) > MAX_FILE_BYTES:
        raise RowLayoutError(path, f'is larger than {MAX_FILE_BYTES >> 20} MiB: not a row layout',
                             f'give at most {MAX_ROWS} rows of a block')
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f'{name} is not JSON (RFC 8259 has no NaN or infinity)')


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'the key {key[:40]!r} appears twice in one object')
        out[key] = value
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _where(index: int, row_id: str = '') -> str:
    return f'feature {index}' + (f' (row {row_id!r})' if row_id else '')


def _check_crs(document: Dict[str, Any], path: str) -> None:
    crs = document.get('crs')
    if crs is None:
        return
    name = crs.get('properties', {}).get('name', '') if isinstance(crs, dict) else ''
    name = name if isinstance(name, str) else ''
    if not any(token in name.upper().replace(' ', '') for token in
               (t.upper().replace(' ', '') for t in _WGS84_NAMES)):
        raise RowLayoutError(path, f'its crs is {_shown(name or crs)}, not WGS84 longitude / '
                             'latitude', 'export the layer as GeoJSON in EPSG:4326 (RFC 7946 '
                             'GeoJSON is always WGS84 lon, lat)')


def _positions(geometry: Any, path: str, where: str) -> Tuple[List[float], List[float]]:
    if not isinstance(geometry, dict):
        raise RowLayoutError(path, f'{where} has no geometry object',
                             'give each row a LineString geometry')
    kind = geometry.get('type')
    if kind != 'LineString':
        raise RowLayoutError(path, f'{where} is a {_shown(kind)} geometry, not a LineString',
                             'give each row its own LineString feature (split a '
                             'MultiLineString; a row is a line, not a Point or Polygon)')
    coordinates = geometry.get('coordinates')
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise RowLayoutError(path, f'{where} has {_shown(coordinates)} as coordinates, not '
                             'a list of 2 or more positions',
                             'give each row line at least its two ends as [lon, lat]')
    lats: List[float] = []
    lons: List[float] = []
    for k, position in enumerate(coordinates):
        if (not isinstance(position, list) or not 2 <= len(position) <= 3
                or any(isinstance(v, bool) or not isinstance(v, (int, float))
                       for v in position)):
            raise RowLayoutError(path, f'{where}: position {k} is {_shown(position)}, not '
                                 '[lon, lat] numbers', 'write each position as [lon, lat] '
                                 '(or [lon, lat, height]) in decimal degrees')
        lon, lat = float(position[0]), float(position[1])
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise RowLayoutError(path, f'{where}: position {k} is not finite',
                                 'write finite decimal degrees')
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise RowLayoutError(path, f'{where}: position {k} [{lon:g}, {lat:g}] is outside '
                                 'longitude [-180, 180], latitude [-90, 90]',
                                 'give [lon, lat] in WGS84 degrees, longitude first (not '
                                 'projected metres, not [lat, lon])')
        lats.append(lat)
        lons.append(lon)
    return lats, lons


def _length_m(lats: Sequence[float], lons: Sequence[float]) -> float:
    total = 0.0
    for k in range(1, len(lats)):
        east, north = local_east_north_m(lats[k], lons[k], lats[k - 1], lons[k - 1])
        total += math.hypot(east, north)
    return total


def _row_id(properties: Any, path: str, index: int) -> Tuple[str, str]:
    where = _where(index)
    if not isinstance(properties, dict) or 'row' not in properties:
        raise RowLayoutError(path, f'{where} has no "row" property',
                             'give every feature a unique "row" id, e.g. '
                             '"properties": {"row": "A12"}')
    row_id = properties['row']
    if not isinstance(row_id, str) or not row_id.strip():
        raise RowLayoutError(path, f'{where} has "row": {_shown(row_id)}, not a non-empty '
                             'string', f'write the id as a string, e.g. "row": '
                             f'"{row_id if isinstance(row_id, int) else "A12"}"')
    if len(row_id) > MAX_ID_CHARS:
        raise RowLayoutError(path, f'{where} has a "row" id of {len(row_id)} characters',
                             f'give ids of at most {MAX_ID_CHARS} characters')
    name = properties.get('name', '')
    if name is None:
        name = ''
    if not isinstance(name, str):
        raise RowLayoutError(path, f'{_where(index, row_id)} has "name": '
                             f'{_shown(name)}, not a string', 'write the name as a string '
                             'or leave it out')
    return row_id, name[:MAX_ID_CHARS]


def parse_row_layout(data: bytes, path: str) -> RowLayout:
    """
    Return the rows of a layout file's bytes (module docstring).

    :raises RowLayoutError: anything but a valid layout, naming the feature and the fix.
    """
    try:
        document = json.loads(data.decode('utf-8'), parse_constant=_no_constants,
                              object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        reason = str(exc) if len(str(exc)) <= 120 else str(exc)[:117] + '...'
        raise RowLayoutError(path, f'is not JSON ({reason})') from exc
    except RecursionError as exc:
        raise RowLayoutError(path, 'nests too deep to be a row layout') from exc
    if not isinstance(document, dict) or document.get('type') != 'FeatureCollection':
        found = document.get('type') if isinstance(document, dict) else type(document).__name__
        raise RowLayoutError(path, f'is a {_shown(found)}, not a GeoJSON FeatureCollection')
    _check_crs(document, path)
    features = document.get('features')
    if not isinstance(features, list) or not features:
        raise RowLayoutError(path, 'has no features (an empty FeatureCollection)')
    if len(features) > MAX_ROWS:
        raise RowLayoutError(path, f'has {len(features)} features, more than {MAX_ROWS} rows',
                             'split the layout per block and run a season per block')
    rows: List[Row] = []
    first_index: Dict[str, int] = {}
    vertices = 0
    for index, feature in enumerate(features):
        where = _where(index)
        if not isinstance(feature, dict) or feature.get('type') != 'Feature':
            raise RowLayoutError(path, f'{where} is not a GeoJSON Feature object')
        row_id, name = _row_id(feature.get('properties'), path, index)
        where = _where(index, row_id)
        if row_id in first_index:
            raise RowLayoutError(path, f'{where} repeats the row id of feature '
                                 f'{first_index[row_id]}', 'give every row its own id')
        first_index[row_id] = index
        coordinates = (feature.get('geometry') or {}).get('coordinates') \
            if isinstance(feature.get('geometry'), dict) else None
        vertices += len(coordinates) if isinstance(coordinates, list) else 0
        if vertices > MAX_VERTICES:
            raise RowLayoutError(path, f'has more than {MAX_VERTICES} positions (at {where})',
                                 'simplify the row lines (two ends per straight row '
                                 'suffice)')
        lats, lons = _positions(feature.get('geometry'), path, where)
        length_m = _length_m(lats, lons)
        if length_m < 0.01:
            raise RowLayoutError(path, f'{where} has zero length (its positions coincide)',
                                 'give the two ends of the row at least')
        if length_m > MAX_ROW_LENGTH_M:
            raise RowLayoutError(path, f'{where} is {length_m / 1000.0:.1f} km long, more than '
                                 f'{MAX_ROW_LENGTH_M / 1000.0:g} km: not a vine row',
                                 'check the positions are [lon, lat] of this block')
        rows.append(Row(row_id, name, tuple(lats), tuple(lons)))
    return RowLayout(path, tuple(rows), hashlib.sha256(data).hexdigest())


def load_row_layout(path: str) -> RowLayout:
    """
    Read a row layout file (module docstring).

    :raises RowLayoutError: unreadable, not a regular file, too large or not a layout.
    """
    return parse_row_layout(_read_bytes(path), path)


@dataclass
class _Samples:
    """The pieces of every row: middle (season frame, metres), length, row index."""

    points_en: np.ndarray
    lengths_m: np.ndarray
    row_index: np.ndarray
    boxes: np.ndarray  # (rows, 4): east min, north min, east max, north max


def _samples(season: Season, layout: RowLayout, step_m: float) -> _Samples:
    lats: List[float] = []
    lons: List[float] = []
    lengths: List[float] = []
    owner: List[int] = []
    for index, row in enumerate(layout.rows):
        for k in range(1, len(row.latitudes_deg)):
            a = (row.latitudes_deg[k - 1], row.longitudes_deg[k - 1])
            b = (row.latitudes_deg[k], row.longitudes_deg[k])
            length_m = math.hypot(*local_east_north_m(b[0], b[1], a[0], a[1]))
            if length_m <= 0.0:
                continue
            pieces = max(1, math.ceil(length_m / step_m))
            fractions = (np.arange(pieces) + 0.5) / pieces
            lats.extend(a[0] + fractions * (b[0] - a[0]))
            lons.extend(a[1] + fractions * (b[1] - a[1]))
            lengths.extend([length_m / pieces] * pieces)
            owner.extend([index] * pieces)
    points = season.east_north_m(lats, lons)
    row_index = np.asarray(owner, dtype=np.int64)
    boxes = np.zeros((len(layout.rows), 4))
    for index in range(len(layout.rows)):
        mine = points[row_index == index]
        boxes[index] = (*mine.min(axis=0), *mine.max(axis=0))
    return _Samples(points, np.asarray(lengths, dtype=np.float64), row_index, boxes)


def _reach_box(season: Season, bag_id: str) -> Optional[np.ndarray]:
    """Return the box (east min, north min, east max, north max) a pass could cover."""
    cover = season.covers[bag_id]
    parts = list(cover.track) + list(cover.judged_track) + list(cover.held_track or [])
    margin = cover.past_radius_m
    if cover.footprint is not None:
        for swept in (cover.footprint.judged, cover.footprint.held):
            if len(swept):
                parts.append(swept.poses[:, :2])
        margin = max(margin, cover.footprint.judged.reach_m + cover.tolerance_m)
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    every = np.vstack(parts)
    return np.concatenate([every.min(axis=0) - margin, every.max(axis=0) + margin])


@dataclass
class RowCoverage:
    """Coverage per pass and row, and per row over the season (module docstring)."""

    layout: RowLayout
    rows: List[Dict[str, Any]] = field(default_factory=list)
    per_pass: Dict[str, Dict[str, Dict[str, Any]]] = field(default_factory=dict)

    @property
    def never_covered(self) -> List[str]:
        """Return the ids of the rows no pass covered any part of, in file order."""
        return [r['row'] for r in self.rows if r['never_covered']]

    def document(self) -> Dict[str, Any]:
        """Return ``rows.json``: the layout file, the rows and those never covered."""
        return {'file': self.layout.path, 'sha256': self.layout.sha256,
                'sample_step_m': SAMPLE_STEP_M, 'rows': self.rows,
                'never_covered': self.never_covered}


def row_coverage(season: Season, layout: RowLayout, step_m: float = SAMPLE_STEP_M
                 ) -> RowCoverage:
    """Return the coverage of every row by every pass of the season (module docstring)."""
    samples = _samples(season, layout, step_m)
    count = len(layout.rows)
    lengths_m = np.bincount(samples.row_index, samples.lengths_m, minlength=count)
    result = RowCoverage(layout)
    covered_by: List[List[str]] = [[] for _ in range(count)]
    best = np.zeros(count)
    for document in season.passes:
        bag = document['bag_id']
        cover = season.covers[bag]
        box = _reach_box(season, bag)
        figures: Dict[str, Dict[str, Any]] = {}
        result.per_pass[bag] = figures
        if box is None:
            continue
        boxes = samples.boxes
        near_rows = np.flatnonzero((boxes[:, 0] <= box[2]) & (boxes[:, 2] >= box[0])
                                   & (boxes[:, 1] <= box[3]) & (boxes[:, 3] >= box[1]))
        if not len(near_rows):
            continue
        chosen = np.flatnonzero(np.isin(samples.row_index, near_rows))
        points = samples.points_en[chosen]
        owner = samples.row_index[chosen]
        weights = samples.lengths_m[chosen]
        judged = cover.judged(points)
        held = cover.held(points)
        out_of_domain = None if held is None else held & ~judged
        driven = cover.driven(points) | judged
        if held is not None:
            driven |= held

        def metres(mask: np.ndarray) -> np.ndarray:
            return np.bincount(owner, weights * mask, minlength=count)
        covered_m, driven_m = metres(judged), metres(driven)
        held_m = None if out_of_domain is None else metres(out_of_domain)
        for index in (int(i) for i in near_rows):
            if driven_m[index] <= 0.0:
                continue
            row = layout.rows[index]
            fraction = float(covered_m[index] / lengths_m[index])
            figures[row.row_id] = {
                'length_m': round(float(lengths_m[index]), 2),
                'covered_m': round(float(covered_m[index]), 2),
                'covered_fraction': round(fraction, 4),
                'out_of_domain_m': None if held_m is None else round(float(held_m[index]), 2),
                'driven_m': round(float(driven_m[index]), 2)}
            if covered_m[index] > 0.0:
                covered_by[index].append(bag)
                best[index] = max(best[index], fraction)
    starts = {p['bag_id']: p['start_utc'] for p in season.passes}
    for index, row in enumerate(layout.rows):
        latest = covered_by[index][-1] if covered_by[index] else None
        result.rows.append({
            'row': row.row_id, 'name': row.name,
            'length_m': round(float(lengths_m[index]), 2),
            'passes_covered': covered_by[index],
            'covered_fraction_best': round(float(best[index]), 4),
            'last_covered': None if latest is None else {'pass': latest,
                                                         'start': starts[latest]},
            'never_covered': not covered_by[index]})
    return result


def write_rows_file(coverage: RowCoverage, out_dir: str) -> str:
    """Write ``rows.json`` (:meth:`RowCoverage.document`) atomically; return its name."""
    atomic_write_json(os.path.join(out_dir, ROWS_FILE), strict_json(coverage.document()))
    return ROWS_FILE
