"""
Disease maps: merging repeated sightings, and the GeoJSON, KML and PNG writers.

A robot passing along a row sees the same diseased leaf in several consecutive
frames (and again on a later pass). :class:`FindingMerger` turns that stream of
sightings into map features with a greedy, online rule:

- sightings are added in time order; a sighting joins the feature **of the same
  label** whose centre is nearest to it, when that centre is closer than
  ``merge_radius_m`` (strictly); otherwise it starts a new feature;
- a feature's centre is the mean of its sightings' positions; it keeps the count,
  the best and mean score, and the first and last stamp (its time span);
- ``merge_radius_m = 0`` merges nothing;
- with ground positions (a sighting carrying its horizontal covariance, the leaf's own
  position from ``geo/leaf_position.py``) and ``gate_sigma > 0``, the radius follows
  the covariance: the sighting joins only when its offset from the centre is within
  ``gate_sigma`` sigmas of their combined covariance (Mahalanobis distance; the
  feature's covariance is the mean of its sightings'), still below
  ``merge_radius_m``: centimetres with RTK, the radius without it. A feature that
  already holds a sighting of the same frame (same stamp) is not joined: two tiles
  of one frame are two places by construction.

:meth:`FindingMerger.add` returns the index of the feature the sighting joined, so
:mod:`leaf_disease_ros.geo.evidence` counts repeated sightings of one spot with the
same rule. A sighting marked ``confirmed`` (it passed the evidence rule and went to
the navigation stack) makes its feature confirmed; the writers say which features
are confirmed and which are single, unconfirmed sightings.

Distances are measured on a local tangent plane around the first position seen
(:func:`~leaf_disease_ros.geo.geodesy.local_east_north_m`), exact to millimetres
over a vineyard block. A grid of cells ``merge_radius_m`` wide indexes the
features, so adding a sighting costs O(1) and memory grows with the number of
distinct diseased spots, never with the number of frames. :class:`TrackRecorder`
keeps the robot's track for the map in bounded memory (points closer than a step
are skipped; past a maximum the track is thinned by half and the step doubled) and
splits it at GPS outages: a reported outage, or a silence longer than ``max_gap_s``
between two fixes (no line is drawn where the robot's path is not known).

Writers: :func:`write_geojson` (RFC 7946: a FeatureCollection of Points,
``[longitude, latitude]`` order, WGS84, no ``crs`` member), :func:`write_kml` (KML
2.2, one folder per label plus the track) and :func:`write_map_png` (OpenCV: the
findings coloured by disease on a metric grid with the track). Every file is
written atomically. Pure Python + numpy + OpenCV: no ROS.

What people read (the PNG's legend, KML names and descriptions, GeoJSON's
``display_name``) uses the model card's display names (``Black rot``, not
``black_rot``; :meth:`~leaf_disease_ros.perception.model_card.ModelCard.display_name`);
the machine-readable ``label`` stays the card's label.
"""

from dataclasses import dataclass
import datetime
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np

from leaf_disease_ros.geo.geodesy import local_east_north_m, offset_latlon
from leaf_disease_ros.perception.atomic_io import atomic_write_bytes, atomic_write_text
from leaf_disease_ros.perception.model_card import humanize_label
from leaf_disease_ros.perception.plots import encode_png

KML_NAMESPACE = 'http://www.opengis.net/kml/2.2'
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours of the known diseases; other labels take the palette in order.
LABEL_COLOURS_BGR: Dict[str, Tuple[int, int, int]] = {
    'black_rot': (90, 30, 120),
    'esca': (0, 120, 230),
    'leaf_blight': (40, 40, 220),
}
_PALETTE_BGR = ((200, 120, 0), (160, 0, 160), (0, 160, 160), (120, 120, 0), (80, 80, 200))


@dataclass(frozen=True)
class Sighting:
    """One diseased tile of one frame, at the frame's position (WGS84 degrees)."""

    label: str
    score: float
    latitude_deg: float
    longitude_deg: float
    stamp_ns: int
    confirmed: bool = False  # passed the evidence rule (geo/evidence.py)
    #: (var_east, cov_east_north, var_north) m^2 of a ground position; zeros = unknown
    covariance_en_m2: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def has_covariance(self) -> bool:
        """Return whether the sighting carries a ground position's covariance."""
        return self.covariance_en_m2[0] > 0.0 and self.covariance_en_m2[2] > 0.0


def sighting_at(label: str, score: float, position: Any, stamp_ns: int,
                confirmed: bool = False) -> Sighting:
    """
    Return the sighting of a finding at a ``GroundPosition`` (``perception/positions.py``).

    A leaf position carries its covariance (the covariance gate); the camera's position
    (no ground position) does not: it merges by radius, as all tiles of a frame share it.
    """
    covariance = position.horizontal_covariance_m2() if position.at_leaf else (0.0, 0.0, 0.0)
    return Sighting(label, score, position.latitude_deg, position.longitude_deg, stamp_ns,
                    confirmed, covariance)


@dataclass(frozen=True)
class MapFeature:
    """
    One merged finding: a spot where ``label`` was seen ``count`` times.

    ``latitude_deg``/``longitude_deg`` is the mean position of the sightings;
    ``first_stamp_ns``/``last_stamp_ns`` their time span; ``confirmed_sightings``
    how many of them passed the evidence rule (0: an unconfirmed feature).
    """

    label: str
    latitude_deg: float
    longitude_deg: float
    count: int
    score_max: float
    score_mean: float
    first_stamp_ns: int
    last_stamp_ns: int
    confirmed_sightings: int = 0

    @property
    def confirmed(self) -> bool:
        """Whether a sighting of this feature passed the evidence rule."""
        return self.confirmed_sightings > 0


class _Cluster:
    """The running state of one feature (positions in local metres)."""

    __slots__ = ('label', 'east_m', 'north_m', 'count', 'score_max', 'score_sum',
                 'first_stamp_ns', 'last_stamp_ns', 'cell', 'confirmed_count',
                 'index', 'covariance', 'covariance_count', 'last_leaf_stamp_ns')

    def __init__(self, sighting: Sighting, east_m: float, north_m: float) -> None:
        self.label = sighting.label
        self.east_m = east_m
        self.north_m = north_m
        self.count = 1
        self.score_max = sighting.score
        self.score_sum = sighting.score
        self.first_stamp_ns = sighting.stamp_ns
        self.last_stamp_ns = sighting.stamp_ns
        self.cell: Tuple[int, int] = (0, 0)
        self.confirmed_count = int(sighting.confirmed)
        self.index = 0  # position in FindingMerger's list
        self.covariance = np.zeros(3)
        self.covariance_count = 0
        self.last_leaf_stamp_ns: Optional[int] = None
        self._add_covariance(sighting)

    def _add_covariance(self, sighting: Sighting) -> None:
        if sighting.has_covariance:
            self.covariance_count += 1
            self.covariance += (np.asarray(sighting.covariance_en_m2) - self.covariance) \
                / self.covariance_count
            self.last_leaf_stamp_ns = sighting.stamp_ns

    def add(self, sighting: Sighting, east_m: float, north_m: float) -> None:
        self._add_covariance(sighting)
        self.count += 1
        self.east_m += (east_m - self.east_m) / self.count
        self.north_m += (north_m - self.north_m) / self.count
        self.score_max = max(self.score_max, sighting.score)
        self.score_sum += sighting.score
        self.first_stamp_ns = min(self.first_stamp_ns, sighting.stamp_ns)
        self.last_stamp_ns = max(self.last_stamp_ns, sighting.stamp_ns)
        self.confirmed_count += int(sighting.confirmed)


class FindingMerger:
    """Merges sightings into map features online (rule in the module docstring)."""

    def __init__(self, merge_radius_m: float, gate_sigma: float = 0.0) -> None:
        if not merge_radius_m >= 0.0:
            raise ValueError(f'merge_radius_m must be >= 0, got {merge_radius_m}')
        if not gate_sigma >= 0.0:
            raise ValueError(f'gate_sigma must be >= 0, got {gate_sigma}')
        self._radius_m = float(merge_radius_m)
        self._gate_sigma = float(gate_sigma)
        # Cells at least 1 mm wide so a zero radius still indexes.
        self._cell_m = max(self._radius_m, 1e-3)
        self._origin: Optional[Tuple[float, float]] = None
        self._clusters: List[_Cluster] = []
        self._grid: Dict[Tuple[str, int, int], List[_Cluster]] = {}
        self.sightings = 0

    @property
    def merge_radius_m(self) -> float:
        """The merge radius in metres."""
        return self._radius_m

    @property
    def origin(self) -> Optional[Tuple[float, float]]:
        """Return the local plane's reference (latitude, longitude), None before a sighting."""
        return self._origin

    def _cell(self, east_m: float, north_m: float) -> Tuple[int, int]:
        return int(math.floor(east_m / self._cell_m)), int(math.floor(north_m / self._cell_m))

    def add(self, sighting: Sighting) -> int:
        """
        Add one sighting (call in time order for the documented result).

        :returns: the index of the feature it joined or started (the order of
            :meth:`features`).
        """
        if self._origin is None:
            self._origin = (sighting.latitude_deg, sighting.longitude_deg)
        east, north = local_east_north_m(sighting.latitude_deg, sighting.longitude_deg,
                                         *self._origin)
        self.sightings += 1
        cx, cy = self._cell(east, north)
        best: Optional[_Cluster] = None
        best_distance = self._radius_m
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for cluster in self._grid.get((sighting.label, cx + dx, cy + dy), ()):
                    distance = math.hypot(cluster.east_m - east, cluster.north_m - north)
                    if distance < best_distance and self._within_gate(
                            sighting, cluster, east - cluster.east_m, north - cluster.north_m):
                        best, best_distance = cluster, distance
        if best is None:
            cluster = _Cluster(sighting, east, north)
            cluster.cell = (cx, cy)
            cluster.index = len(self._clusters)
            self._clusters.append(cluster)
            self._grid.setdefault((sighting.label, cx, cy), []).append(cluster)
            return cluster.index
        best.add(sighting, east, north)
        cell = self._cell(best.east_m, best.north_m)
        if cell != best.cell:  # the centre moved into another cell: re-index it
            self._grid[(best.label,) + best.cell].remove(best)
            best.cell = cell
            self._grid.setdefault((best.label,) + cell, []).append(best)
        return best.index

    def _within_gate(self, sighting: Sighting, cluster: _Cluster, east_m: float,
                     north_m: float) -> bool:
        """Return whether the covariance rule lets ``sighting`` join ``cluster``."""
        if not sighting.has_covariance or cluster.covariance_count == 0:
            return True  # a camera position: the radius alone
        if cluster.last_leaf_stamp_ns == sighting.stamp_ns:
            return False  # another tile of the same frame: another place
        if self._gate_sigma <= 0.0:
            return True
        var_e, cov_en, var_n = (a + b for a, b in zip(sighting.covariance_en_m2,
                                                      cluster.covariance))
        determinant = var_e * var_n - cov_en * cov_en
        if determinant <= 0.0:
            return True
        squared = (var_n * east_m * east_m - 2.0 * cov_en * east_m * north_m
                   + var_e * north_m * north_m) / determinant
        return bool(squared <= self._gate_sigma ** 2)

    def features(self) -> List[MapFeature]:
        """Return the merged features in order of first sighting."""
        if self._origin is None:
            return []
        out = []
        for cluster in self._clusters:
            lat, lon = offset_latlon(self._origin[0], self._origin[1], cluster.east_m,
                                     cluster.north_m)
            out.append(MapFeature(
                label=cluster.label, latitude_deg=lat, longitude_deg=lon,
                count=cluster.count, score_max=cluster.score_max,
                score_mean=cluster.score_sum / cluster.count,
                first_stamp_ns=cluster.first_stamp_ns, last_stamp_ns=cluster.last_stamp_ns,
                confirmed_sightings=cluster.confirmed_count))
        return out


def merge_sightings(sightings: Sequence[Sighting], merge_radius_m: float,
                    gate_sigma: float = 0.0) -> List[MapFeature]:
    """Return the features of ``sightings`` (sorted by stamp first) merged within a radius."""
    merger = FindingMerger(merge_radius_m, gate_sigma)
    for sighting in sorted(sightings, key=lambda s: s.stamp_ns):
        merger.add(sighting)
    return merger.features()


class TrackRecorder:
    """
    The robot's track in bounded memory, as WGS84 points split into segments.

    A point closer than ``min_step_m`` to the last kept one is skipped; beyond
    ``max_points`` every second point is dropped and the step doubled. A call to
    :meth:`break_segment` (a fix reporting an outage) starts a new segment so the
    map does not draw a line across a GPS outage; so does a point whose stamp is
    more than ``max_gap_s`` from the previous point's (a silent receiver).
    """

    def __init__(self, min_step_m: float = 0.25, max_points: int = 5000,
                 max_gap_s: float = math.inf) -> None:
        if max_points < 4:
            raise ValueError(f'max_points must be >= 4, got {max_points}')
        self._min_step_m = float(min_step_m)
        self._max_points = max_points
        self._max_gap_ns = max_gap_s * 1e9
        self._points: List[Tuple[float, float, bool]] = []  # lat, lon, starts a segment
        self._new_segment = True
        self._last_stamp_ns: Optional[int] = None

    def add(self, latitude_deg: float, longitude_deg: float,
            stamp_ns: Optional[int] = None) -> None:
        """Add a position (degrees) at its fix stamp (ns; None: no gap check)."""
        if stamp_ns is not None:
            if (self._last_stamp_ns is not None
                    and abs(stamp_ns - self._last_stamp_ns) > self._max_gap_ns):
                self._new_segment = True
            self._last_stamp_ns = stamp_ns
        if self._points and not self._new_segment:
            last_lat, last_lon, _ = self._points[-1]
            east, north = local_east_north_m(latitude_deg, longitude_deg, last_lat, last_lon)
            if math.hypot(east, north) < self._min_step_m:
                return
        self._points.append((latitude_deg, longitude_deg, self._new_segment))
        self._new_segment = False
        if len(self._points) > self._max_points:
            # Keep segment starts and every second point; coarsen the step.
            self._points = [p for i, p in enumerate(self._points) if p[2] or i % 2 == 0]
            self._min_step_m *= 2.0

    def break_segment(self) -> None:
        """End the current segment (the next point starts a new one)."""
        self._new_segment = True

    def __len__(self) -> int:
        return len(self._points)

    def segments(self) -> List[List[Tuple[float, float]]]:
        """Return the track as segments of ``(latitude, longitude)`` points."""
        out: List[List[Tuple[float, float]]] = []
        for lat, lon, starts in self._points:
            if starts or not out:
                out.append([])
            out[-1].append((lat, lon))
        return out


# --- writers --------------------------------------------------------------------


def features_per_label(features: Sequence[MapFeature]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Return ``(features per label, confirmed features per label)``."""
    every: Dict[str, int] = {}
    confirmed: Dict[str, int] = {}
    for feature in features:
        every[feature.label] = every.get(feature.label, 0) + 1
        if feature.confirmed:
            confirmed[feature.label] = confirmed.get(feature.label, 0) + 1
    return every, confirmed


def iso_utc(stamp_ns: int) -> str:
    """Return a stamp (ns since the epoch) as ISO 8601 UTC with millisecond precision."""
    moment = datetime.datetime.fromtimestamp(stamp_ns / 1e9, tz=datetime.timezone.utc)
    return moment.strftime('%Y-%m-%dT%H:%M:%S.') + f'{moment.microsecond // 1000:03d}Z'


DisplayNames = Optional[Mapping[str, str]]


def shown_name(label: str, display_names: DisplayNames = None) -> str:
    """Return the name people read for ``label`` (the card's, else the label humanised)."""
    return (display_names or {}).get(label) or humanize_label(label)


def _feature_properties(feature: MapFeature, display_names: DisplayNames = None
                        ) -> Dict[str, Any]:
    return {
        'label': feature.label,
        'display_name': shown_name(feature.label, display_names),
        'count': feature.count,
        'score_max': round(feature.score_max, 4),
        'score_mean': round(feature.score_mean, 4),
        'first_seen': iso_utc(feature.first_stamp_ns),
        'last_seen': iso_utc(feature.last_stamp_ns),
        'first_stamp_ns': feature.first_stamp_ns,
        'last_stamp_ns': feature.last_stamp_ns,
        'confirmed': feature.confirmed,
        'confirmed_sightings': feature.confirmed_sightings,
    }


def geojson_document(features: Sequence[MapFeature],
                     properties: Optional[Dict[str, Any]] = None,
                     display_names: DisplayNames = None) -> Dict[str, Any]:
    """
    Return an RFC 7946 FeatureCollection of the features (Points, lon/lat order).

    Coordinates are rounded to 1e-8 degrees (about a millimetre). ``properties``
    (e.g. the model and merge radius) go in a foreign member ``leaf_disease_ros``.
    """
    document: Dict[str, Any] = {
        'type': 'FeatureCollection',
        'features': [{
            'type': 'Feature',
            'geometry': {'type': 'Point',
                         'coordinates': [round(f.longitude_deg, 8), round(f.latitude_deg, 8)]},
            'properties': _feature_properties(f, display_names),
        } for f in features],
    }
    if properties:
        document['leaf_disease_ros'] = dict(properties)
    return document


def write_geojson(path: str, features: Sequence[MapFeature],
                  properties: Optional[Dict[str, Any]] = None,
                  display_names: DisplayNames = None) -> None:
    """Write the features as GeoJSON (RFC 7946) atomically."""
    document = geojson_document(features, properties, display_names)
    atomic_write_text(path, json.dumps(document, indent=1) + '\n')


def label_colour_bgr(label: str, labels: Sequence[str] = ()) -> Tuple[int, int, int]:
    """Return the map colour of a label (fixed for known diseases, else a palette)."""
    if label in LABEL_COLOURS_BGR:
        return LABEL_COLOURS_BGR[label]
    others = [x for x in labels if x not in LABEL_COLOURS_BGR]
    index = others.index(label) if label in others else sum(map(ord, label))
    return _PALETTE_BGR[index % len(_PALETTE_BGR)]


def _kml_colour(bgr: Tuple[int, int, int]) -> str:
    blue, green, red = bgr
    return f'ff{blue:02x}{green:02x}{red:02x}'  # KML is aabbggrr


def kml_element(parent: ElementTree.Element, tag: str, text: Optional[str] = None
                ) -> ElementTree.Element:
    """Add the KML 2.2 element ``tag`` (with ``text``) under ``parent``: both KML writers."""
    element = ElementTree.SubElement(parent, f'{{{KML_NAMESPACE}}}{tag}')
    if text is not None:
        element.text = text
    return element


def kml_document(features: Sequence[MapFeature], track: Sequence[Sequence[Tuple[float, float]]]
                 = (), name: str = 'leaf disease findings',
                 display_names: DisplayNames = None) -> bytes:
    """
    Return a KML 2.2 document: one folder of Placemarks per label, plus the track.

    Each Placemark has the feature's time span (``TimeSpan``) and its figures as
    ``ExtendedData``; the track is a folder of LineStrings (one per segment).
    """
    ElementTree.register_namespace('', KML_NAMESPACE)
    sub = kml_element

    root = ElementTree.Element(f'{{{KML_NAMESPACE}}}kml')
    document = sub(root, 'Document')
    sub(document, 'name', name)
    labels = sorted({f.label for f in features})
    for label in labels:
        style = sub(document, 'Style')
        style.set('id', f'finding_{label}')
        icon_style = sub(style, 'IconStyle')
        sub(icon_style, 'color', _kml_colour(label_colour_bgr(label, labels)))
        icon = sub(icon_style, 'Icon')
        sub(icon, 'href', 'http://maps.google.com/mapfiles/kml/shapes/placemark_circle.png')
    track_style = sub(document, 'Style')
    track_style.set('id', 'track')
    line_style = sub(track_style, 'LineStyle')
    sub(line_style, 'color', 'ff808080')
    sub(line_style, 'width', '2')
    for label in labels:
        folder = sub(document, 'Folder')
        shown = shown_name(label, display_names)
        sub(folder, 'name', shown)
        for feature in (f for f in features if f.label == label):
            placemark = sub(folder, 'Placemark')
            sub(placemark, 'name', f'{shown} x{feature.count}')
            sub(placemark, 'description',
                f'{shown}: seen {feature.count} time(s) from {iso_utc(feature.first_stamp_ns)} '
                f'to {iso_utc(feature.last_stamp_ns)}; best score {feature.score_max:.3f}; '
                + ('confirmed (repeated evidence)' if feature.confirmed
                   else 'unconfirmed (not repeated: not sent to navigation)'))
            span = sub(placemark, 'TimeSpan')
            sub(span, 'begin', iso_utc(feature.first_stamp_ns))
            sub(span, 'end', iso_utc(feature.last_stamp_ns))
            sub(placemark, 'styleUrl', f'#finding_{label}')
            extended = sub(placemark, 'ExtendedData')
            for key, value in _feature_properties(feature, display_names).items():
                data = sub(extended, 'Data')
                data.set('name', key)
                sub(data, 'value', str(value))
            point = sub(placemark, 'Point')
            sub(point, 'coordinates',
                f'{feature.longitude_deg:.8f},{feature.latitude_deg:.8f},0')
    if any(len(segment) >= 2 for segment in track):
        folder = sub(document, 'Folder')
        sub(folder, 'name', 'robot track')
        for segment in track:
            if len(segment) < 2:
                continue
            placemark = sub(folder, 'Placemark')
            sub(placemark, 'name', 'track')
            sub(placemark, 'styleUrl', '#track')
            line = sub(placemark, 'LineString')
            sub(line, 'tessellate', '1')
            sub(line, 'coordinates',
                ' '.join(f'{lon:.8f},{lat:.8f},0' for lat, lon in segment))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding='utf-8', xml_declaration=True)


def write_kml(path: str, features: Sequence[MapFeature],
              track: Sequence[Sequence[Tuple[float, float]]] = (),
              name: str = 'leaf disease findings', display_names: DisplayNames = None) -> None:
    """Write the features (and track) as KML 2.2 atomically."""
    atomic_write_bytes(path, kml_document(features, track, name, display_names))


def _nice_step(span_m: float, target_lines: int = 8) -> float:
    raw = max(span_m / target_lines, 1e-3)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * power:
            return factor * power
    return 10.0 * power


def render_map(features: Sequence[MapFeature],
               track: Sequence[Sequence[Tuple[float, float]]] = (),
               labels: Sequence[str] = (), size_px: int = 900,
               title: str = '', display_names: DisplayNames = None) -> np.ndarray:
    """
    Draw findings and track on a local metric grid; return a BGR uint8 image.

    The grid is east/north metres from the south-west corner of everything drawn
    (north up, equal scale on both axes), whose latitude and longitude the legend
    gives; a north arrow and the grid step give direction and scale. A finding is a
    disc coloured by its label, its area growing with the sighting count; an
    unconfirmed one is a ring. The legend uses ``display_names``.

    :returns: ``(H, W, 3)`` uint8 image, ``W = size_px + legend``.
    """
    points = [(f.latitude_deg, f.longitude_deg) for f in features]
    points += [p for segment in track for p in segment]
    legend_w = 300
    margin = 60
    image = np.full((size_px, size_px + legend_w, 3), 255, dtype=np.uint8)
    if title:
        cv2.putText(image, title, (10, 22), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if not points:
        cv2.putText(image, 'no positioned findings and no track', (margin, size_px // 2),
                    _FONT, 0.7, (60, 60, 60), 1, cv2.LINE_AA)
        return image
    ref_lat = min(p[0] for p in points)
    ref_lon = min(p[1] for p in points)
    xy = np.array([local_east_north_m(lat, lon, ref_lat, ref_lon) for lat, lon in points])
    lo = xy.min(axis=0)
    hi = xy.max(axis=0)
    extent = 1.08 * float(max(hi[0] - lo[0], hi[1] - lo[1], 2.0))  # square, 4 % border
    lo = (lo + hi) / 2.0 - extent / 2.0
    scale = (size_px - 2 * margin) / extent

    def to_px(east: float, north: float) -> Tuple[int, int]:
        return (int(round(margin + (east - lo[0]) * scale)),
                int(round(size_px - margin - (north - lo[1]) * scale)))

    step = _nice_step(extent)
    value = math.ceil(lo[0] / step) * step
    while value <= lo[0] + extent:
        x, _ = to_px(value, lo[1])
        cv2.line(image, (x, margin), (x, size_px - margin), (225, 225, 225), 1)
        cv2.putText(image, f'{value:g}', (x - 10, size_px - margin + 18), _FONT, 0.4,
                    (90, 90, 90), 1, cv2.LINE_AA)
        value += step
    value = math.ceil(lo[1] / step) * step
    while value <= lo[1] + extent:
        _, y = to_px(lo[0], value)
        cv2.line(image, (margin, y), (size_px - margin, y), (225, 225, 225), 1)
        cv2.putText(image, f'{value:g}', (6, y + 4), _FONT, 0.4, (90, 90, 90), 1,
                    cv2.LINE_AA)
        value += step
    cv2.rectangle(image, (margin, margin), (size_px - margin, size_px - margin),
                  (160, 160, 160), 1)
    cv2.putText(image, 'east (m)', (size_px // 2 - 30, size_px - 15), _FONT, 0.45,
                (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(image, 'north (m)', (6, margin - 12), _FONT, 0.45, (60, 60, 60), 1,
                cv2.LINE_AA)
    for segment in track:
        pixels = np.array([to_px(*local_east_north_m(lat, lon, ref_lat, ref_lon))
                           for lat, lon in segment], dtype=np.int32)
        if len(pixels) >= 2:
            cv2.polylines(image, [pixels.reshape(-1, 1, 2)], False, (150, 150, 150), 1,
                          cv2.LINE_AA)
        elif len(pixels) == 1:
            cv2.circle(image, tuple(int(v) for v in pixels[0]), 1, (150, 150, 150), -1)
    all_labels = list(labels) or sorted({f.label for f in features})
    for feature in sorted(features, key=lambda f: -f.count):
        east, north = local_east_north_m(feature.latitude_deg, feature.longitude_deg,
                                         ref_lat, ref_lon)
        radius = int(round(3 + 2.5 * math.sqrt(feature.count)))
        colour = label_colour_bgr(feature.label, all_labels)
        centre = to_px(east, north)
        if feature.confirmed:  # a disc; an unconfirmed feature is a ring
            cv2.circle(image, centre, radius, colour, -1, cv2.LINE_AA)
            cv2.circle(image, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)
        else:
            cv2.circle(image, centre, radius, colour, 2, cv2.LINE_AA)
    # legend
    x0 = size_px + 10
    y = margin
    cv2.putText(image, 'findings (merged)', (x0, y), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    counts: Dict[str, Tuple[int, int]] = {}
    for feature in features:
        spots, seen = counts.get(feature.label, (0, 0))
        counts[feature.label] = (spots + 1, seen + feature.count)
    for label in sorted(counts):
        y += 26
        cv2.circle(image, (x0 + 8, y - 5), 7, label_colour_bgr(label, all_labels), -1,
                   cv2.LINE_AA)
        spots, seen = counts[label]
        cv2.putText(image, shown_name(label, display_names), (x0 + 22, y), _FONT, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, f'({spots} spots, {seen} sightings)', (x0 + 22, y + 16), _FONT,
                    0.4, (90, 90, 90), 1, cv2.LINE_AA)
        y += 14
    if any(not f.confirmed for f in features):
        y += 26
        cv2.circle(image, (x0 + 8, y - 5), 7, (90, 90, 90), 2, cv2.LINE_AA)
        cv2.putText(image, 'ring: unconfirmed', (x0 + 22, y), _FONT, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    y += 30
    cv2.line(image, (x0, y), (x0 + 20, y), (150, 150, 150), 1)
    cv2.putText(image, 'robot track', (x0 + 26, y + 4), _FONT, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    y += 26
    cv2.putText(image, f'grid: {step:g} m', (x0, y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    y += 22
    for line in ('origin (0, 0 m):', f'  latitude {ref_lat:.6f} deg',
                 f'  longitude {ref_lon:.6f} deg'):
        cv2.putText(image, line, (x0, y), _FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        y += 16
    # north arrow
    ax, ay = size_px + legend_w - 40, size_px - 90
    cv2.arrowedLine(image, (ax, ay + 40), (ax, ay), (0, 0, 0), 2, cv2.LINE_AA, tipLength=0.3)
    cv2.putText(image, 'N', (ax - 6, ay - 8), _FONT, 0.6, (0, 0, 0), 2, cv2.LINE_AA)
    return image


def write_map_png(path: str, features: Sequence[MapFeature],
                  track: Sequence[Sequence[Tuple[float, float]]] = (),
                  labels: Sequence[str] = (), title: str = '',
                  display_names: DisplayNames = None) -> None:
    """Render the map and write it as PNG atomically."""
    image = render_map(features, track, labels, title=title, display_names=display_names)
    atomic_write_bytes(path, encode_png(image))
