"""
The season map: the findings of every pass merged into one set of features with history.

:func:`build_season` reads the passes' ``pass.json`` documents (:mod:`.season_task`)
and merges their features with the replay's own rule
(:class:`~leaf_disease_ros.geo.mapping.FindingMerger`: same label, centre closer than
``merge_radius_m``), the passes taken in time order and each pass's features in the
order it first saw them. A pass's feature is one sighting of the season feature
(its centre, best score and sighting count are kept per pass). Then, for every season
feature and every pass that did not see it, the pass **drove past without seeing
it** when a frame the model *judged* (inside its domain; frames without images, without
position or out of domain do not count) looked at it. Each pass says by which rule
(:class:`PassCover`, ``drove_past`` in the outputs):

- ``footprint``: the pass had camera geometry (the replay's locator placed findings
  with a camera model and a mount): the feature lies in the footprint of the image
  of at least one judged frame, or within ``footprint_tolerance_m`` of it
  (:mod:`.season_footprint`: the wedge from the camera to the canopy plane at the
  frame's position and heading);
- ``radius``: without camera geometry (``ground_positions`` false, no mount, a
  calibration of another image size, a result of an earlier version): the pass's
  judged path came within ``past_radius_m`` of the feature.

Otherwise the pass did not cover it. All of it is computed in one local east / north
frame around the season's origin (the first pass's first GPS position).

Each feature has its passes seen and missed, first and last seen (UTC), and a trend
over the passes that covered it, in time order:

- ``once``: covered by one pass only, which saw it;
- ``new``: the latest covering pass is the first that saw it (earlier ones missed it);
- ``gone``: the latest covering pass drove past without seeing it;
- ``growing`` / ``shrinking``: seen by the latest two covering passes, with at least
  1.5 times more / fewer sightings in the latest;
- ``persisting``: seen by the latest two covering passes otherwise.

The writers (all atomic): ``season.geojson`` (RFC 7946, per-pass properties),
``season.kml`` (one folder per pass, each placemark and track with the pass's
``TimeSpan`` for Google Earth's time slider, plus the season's features spanning
first to last seen), ``maps/pass_<id>.png`` and ``maps/new_since_last_pass.png``,
``coverage.json`` (with ``--rows``, each pass's coverage per row: :mod:`.season_rows`).
Dates are UTC in files; :mod:`.season_html` shows local time.
"""

from dataclasses import dataclass, field
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple
import xml.etree.ElementTree as ElementTree

import numpy as np

from leaf_disease_ros.geo.footprint import local_east_north_array_m, near_track
from leaf_disease_ros.geo.mapping import (FindingMerger, iso_utc, kml_element, KML_NAMESPACE,
                                          label_colour_bgr, MapFeature, Sighting,
                                          write_map_png)
from leaf_disease_ros.perception.atomic_io import atomic_write_bytes, atomic_write_json
from leaf_disease_ros.perception.json_fields import strict_json
from leaf_disease_ros.replay.season_footprint import PassFootprint, read_footprint

GEOJSON_FILE = 'season.geojson'
KML_FILE = 'season.kml'
COVERAGE_FILE = 'coverage.json'
MAPS_DIR = 'maps'
NEW_MAP_FILE = 'new_since_last_pass.png'
DEFAULT_PAST_RADIUS_M = 1.5
DEFAULT_FOOTPRINT_TOLERANCE_M = 0.5
RULE_FOOTPRINT = 'footprint'
RULE_RADIUS = 'radius'
TREND_RATIO = 1.5
Track = List[List[Tuple[float, float]]]
#: coverage fields of pass.json that are geometry, not figures: kept out of coverage.json
GEOMETRY_FIELDS = ('judged_track', 'held_track', 'footprint', 'footprint_note')


@dataclass
class PassSighting:
    """What one pass saw of a season feature: sightings, best score, confirmed ones."""

    count: int
    score_max: float
    confirmed_sightings: int
    first_stamp_ns: int
    last_stamp_ns: int


@dataclass
class SeasonFeature:
    """One spot of the season: its label, centre and history over the passes."""

    label: str
    latitude_deg: float
    longitude_deg: float
    seen: Dict[str, PassSighting] = field(default_factory=dict)
    missed: List[str] = field(default_factory=list)  # passes that drove past, in time order
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    trend: str = ''


@dataclass
class PassCover:
    """
    What one pass looked at, in the season's local frame (east / north metres).

    ``rule`` is :data:`RULE_FOOTPRINT` when ``footprint`` holds the pass's camera
    footprints, else :data:`RULE_RADIUS` (``note`` says why); ``held_track`` is None
    for a result of an earlier version that did not record it.
    """

    rule: str
    note: str
    footprint: Optional[PassFootprint]
    track: List[np.ndarray]
    judged_track: List[np.ndarray]
    held_track: Optional[List[np.ndarray]]
    past_radius_m: float
    tolerance_m: float
    frames_without_heading: int = 0

    def judged(self, points_en: np.ndarray) -> np.ndarray:
        """Return ``(M,)`` whether a judged frame of the pass looked at each point."""
        if self.footprint is not None:
            return self.footprint.judged.covers(points_en, self.tolerance_m)
        return near_track(points_en, self.judged_track, self.past_radius_m)

    def held(self, points_en: np.ndarray) -> Optional[np.ndarray]:
        """Return whether a frame held out of the domain looked at each point (None: unknown)."""
        if self.footprint is not None:
            return self.footprint.held.covers(points_en, self.tolerance_m)
        if self.held_track is None:
            return None
        return near_track(points_en, self.held_track, self.past_radius_m)

    def driven(self, points_en: np.ndarray) -> np.ndarray:
        """Return whether the pass's GPS track came within the past radius of each point."""
        return near_track(points_en, self.track, self.past_radius_m)

    def describe(self) -> Dict[str, Any]:
        """Return the rule for the outputs (``drove_past``)."""
        if self.footprint is not None:
            return {'rule': RULE_FOOTPRINT, 'tolerance_m': self.tolerance_m,
                    'camera': self.footprint.camera,
                    'frames_without_heading': self.frames_without_heading}
        return {'rule': RULE_RADIUS, 'radius_m': self.past_radius_m, 'why': self.note}


@dataclass
class Season:
    """The passes (time order) and the merged features with their history."""

    passes: List[Dict[str, Any]]
    features: List[SeasonFeature]
    merge_radius_m: float
    past_radius_m: float
    labels: List[str]
    footprint_tolerance_m: float = DEFAULT_FOOTPRINT_TOLERANCE_M
    origin: Tuple[float, float] = (0.0, 0.0)  # lat, lon of the local frame
    covers: Dict[str, PassCover] = field(default_factory=dict)

    def drove_past(self, bag_id: str) -> Dict[str, Any]:
        """Return how "drove past" was decided for a pass (:meth:`PassCover.describe`)."""
        cover = self.covers.get(bag_id)
        return cover.describe() if cover is not None else {
            'rule': RULE_RADIUS, 'radius_m': self.past_radius_m, 'why': ''}

    def east_north_m(self, latitudes_deg: Sequence[float], longitudes_deg: Sequence[float]
                     ) -> np.ndarray:
        """Return ``(N, 2)`` positions in the season's local frame."""
        return local_east_north_array_m(np.asarray(latitudes_deg, dtype=np.float64),
                                        np.asarray(longitudes_deg, dtype=np.float64),
                                        *self.origin)


def _track(document: Dict[str, Any], key: str) -> Track:
    return [[(float(p[0]), float(p[1])) for p in segment] for segment in document.get(key, [])]


def season_origin(passes: Sequence[Dict[str, Any]]) -> Tuple[float, float]:
    """Return the local frame's origin: the first pass's first position (else 0, 0)."""
    for document in passes:
        for key, source in (('track', document),
                            ('judged_track', document.get('coverage', {}))):
            for segment in _track(source, key):
                if segment:
                    return segment[0]
        for feature in document.get('features', []):
            return float(feature['latitude_deg']), float(feature['longitude_deg'])
    return 0.0, 0.0


def _track_en(track: Track, origin: Tuple[float, float]) -> List[np.ndarray]:
    return [local_east_north_array_m(np.array([p[0] for p in segment]),
                                     np.array([p[1] for p in segment]), *origin)
            for segment in track if segment]


def pass_cover(document: Dict[str, Any], origin: Tuple[float, float], past_radius_m: float,
               footprint_tolerance_m: float) -> PassCover:
    """Return what a pass looked at (:class:`PassCover`): its footprints, else its paths."""
    coverage = document.get('coverage', {})
    footprint, note = read_footprint(coverage, origin)
    held = (_track_en(_track(coverage, 'held_track'), origin) if 'held_track' in coverage
            else None)
    without_heading = 0
    if footprint is not None:
        without_heading = int(coverage['footprint'].get('frames_without_heading', 0))
    return PassCover(RULE_FOOTPRINT if footprint is not None else RULE_RADIUS, note,
                     footprint, _track_en(_track(document, 'track'), origin),
                     _track_en(_track(coverage, 'judged_track'), origin), held,
                     past_radius_m, footprint_tolerance_m, without_heading)


def _trend(feature: SeasonFeature, order: Dict[str, int]) -> str:
    covered = sorted(list(feature.seen) + feature.missed, key=order.__getitem__)
    if not covered:
        return ''
    last = covered[-1]
    if last not in feature.seen:
        return 'gone'
    if len(covered) == 1:
        return 'once'
    previous = covered[-2]
    if previous not in feature.seen:
        earlier_seen = [p for p in covered[:-1] if p in feature.seen]
        return 'persisting' if earlier_seen else 'new'
    now, before = feature.seen[last].count, feature.seen[previous].count
    if now >= TREND_RATIO * before:
        return 'growing'
    if before >= TREND_RATIO * now:
        return 'shrinking'
    return 'persisting'


def build_season(passes: Sequence[Dict[str, Any]], merge_radius_m: float,
                 past_radius_m: float = DEFAULT_PAST_RADIUS_M,
                 footprint_tolerance_m: float = DEFAULT_FOOTPRINT_TOLERANCE_M) -> Season:
    """Merge the passes' features into season features with history (module docstring)."""
    ordered = sorted(passes, key=lambda p: (p['start_ns'], p['bag_id']))
    merger = FindingMerger(merge_radius_m)
    history: Dict[int, Dict[str, PassSighting]] = {}
    labels: List[str] = []
    for document in ordered:
        for label in document.get('labels', []):
            if label not in labels:
                labels.append(label)
        for f in sorted(document['features'], key=lambda f: f['first_stamp_ns']):
            index = merger.add(Sighting(f['label'], f['score_max'], f['latitude_deg'],
                                        f['longitude_deg'], f['first_stamp_ns'],
                                        f['confirmed_sightings'] > 0))
            seen = history.setdefault(index, {})
            known = seen.get(document['bag_id'])
            if known is None:
                seen[document['bag_id']] = PassSighting(
                    f['count'], f['score_max'], f['confirmed_sightings'], f['first_stamp_ns'],
                    f['last_stamp_ns'])
            else:  # two features of one pass on one season spot
                known.count += f['count']
                known.score_max = max(known.score_max, f['score_max'])
                known.confirmed_sightings += f['confirmed_sightings']
                known.first_stamp_ns = min(known.first_stamp_ns, f['first_stamp_ns'])
                known.last_stamp_ns = max(known.last_stamp_ns, f['last_stamp_ns'])
    order = {document['bag_id']: i for i, document in enumerate(ordered)}
    origin = season_origin(ordered)
    covers = {document['bag_id']: pass_cover(document, origin, past_radius_m,
                                             footprint_tolerance_m) for document in ordered}
    merged_features = merger.features()
    features_en = local_east_north_array_m(
        np.array([f.latitude_deg for f in merged_features], dtype=np.float64),
        np.array([f.longitude_deg for f in merged_features], dtype=np.float64), *origin)
    looked = {bag: cover.judged(features_en) for bag, cover in covers.items()}
    features: List[SeasonFeature] = []
    for index, merged in enumerate(merged_features):
        seen = history.get(index, {})
        feature = SeasonFeature(merged.label, merged.latitude_deg, merged.longitude_deg,
                                seen=seen)
        for document in ordered:
            bag = document['bag_id']
            if bag not in seen and looked[bag][index]:
                feature.missed.append(bag)
        feature.first_seen_ns = min(s.first_stamp_ns for s in seen.values())
        feature.last_seen_ns = max(s.last_stamp_ns for s in seen.values())
        feature.trend = _trend(feature, order)
        features.append(feature)
    return Season(list(ordered), features, merge_radius_m, past_radius_m, labels,
                  footprint_tolerance_m, origin, covers)


def pass_name(document: Dict[str, Any]) -> str:
    """Return a short name of a pass: robot, UTC date and bag id."""
    return f"{document['robot']} {document['start_utc'][:10]} ({document['bag_id']})"


def _seen_passes(feature: SeasonFeature, season: Season) -> List[Dict[str, Any]]:
    return [p for p in season.passes if p['bag_id'] in feature.seen]


def feature_properties(feature: SeasonFeature, season: Season) -> Dict[str, Any]:
    """Return the GeoJSON properties of a season feature (per-pass history included)."""
    per_pass = []
    for document in season.passes:
        bag = document['bag_id']
        entry: Dict[str, Any] = {'pass': bag, 'robot': document['robot'],
                                 'start': document['start_utc']}
        if bag in feature.seen:
            seen = feature.seen[bag]
            entry.update(state='seen', count=seen.count, score_max=round(seen.score_max, 4),
                         confirmed_sightings=seen.confirmed_sightings)
        elif bag in feature.missed:
            entry['state'] = 'missed'
        else:
            entry['state'] = 'not_covered'
        per_pass.append(entry)
    return {
        'label': feature.label,
        'first_seen': iso_utc(feature.first_seen_ns),
        'last_seen': iso_utc(feature.last_seen_ns),
        'passes_seen': [p['bag_id'] for p in _seen_passes(feature, season)],
        'passes_missed': list(feature.missed),
        'trend': feature.trend,
        'sightings': sum(s.count for s in feature.seen.values()),
        'score_max': round(max(s.score_max for s in feature.seen.values()), 4),
        'confirmed': any(s.confirmed_sightings for s in feature.seen.values()),
        'per_pass': per_pass,
    }


def geojson_document(season: Season) -> Dict[str, Any]:
    """Return the season as an RFC 7946 FeatureCollection (Points, lon/lat, WGS84)."""
    return {
        'type': 'FeatureCollection',
        'features': [{
            'type': 'Feature',
            'geometry': {'type': 'Point', 'coordinates': [round(f.longitude_deg, 8),
                                                          round(f.latitude_deg, 8)]},
            'properties': feature_properties(f, season)} for f in season.features],
        'leaf_disease_ros': {
            'merge_radius_m': season.merge_radius_m, 'past_radius_m': season.past_radius_m,
            'footprint_tolerance_m': season.footprint_tolerance_m,
            'passes': [{'pass': p['bag_id'], 'robot': p['robot'], 'start': p['start_utc'],
                        'end': p['end_utc'], 'bag': p['bag'],
                        'drove_past': season.drove_past(p['bag_id'])}
                       for p in season.passes]},
    }


def kml_document(season: Season) -> bytes:
    """Return the season as KML 2.2: a folder per pass with its TimeSpan, and the season."""
    ElementTree.register_namespace('', KML_NAMESPACE)
    sub = kml_element

    def span(parent: ElementTree.Element, begin_ns: int, end_ns: int) -> None:
        element = sub(parent, 'TimeSpan')
        sub(element, 'begin', iso_utc(begin_ns))
        sub(element, 'end', iso_utc(end_ns))

    root = ElementTree.Element(f'{{{KML_NAMESPACE}}}kml')
    document = sub(root, 'Document')
    sub(document, 'name', 'leaf disease season')
    for label in season.labels or sorted({f.label for f in season.features}):
        style = sub(document, 'Style')
        style.set('id', f'finding_{label}')
        b, g, r = label_colour_bgr(label, season.labels)
        sub(sub(style, 'IconStyle'), 'color', f'ff{b:02x}{g:02x}{r:02x}')
    for document_pass in season.passes:
        bag = document_pass['bag_id']
        folder = sub(document, 'Folder')
        sub(folder, 'name', pass_name(document_pass))
        span(folder, document_pass['start_ns'], document_pass['end_ns'])
        for feature in season.features:
            if bag not in feature.seen:
                continue
            seen = feature.seen[bag]
            placemark = sub(folder, 'Placemark')
            sub(placemark, 'name', f'{feature.label} x{seen.count}')
            span(placemark, document_pass['start_ns'], document_pass['end_ns'])
            sub(placemark, 'styleUrl', f'#finding_{feature.label}')
            sub(sub(placemark, 'Point'), 'coordinates',
                f'{feature.longitude_deg:.8f},{feature.latitude_deg:.8f},0')
        for segment in _track(document_pass, 'track'):
            if len(segment) < 2:
                continue
            placemark = sub(folder, 'Placemark')
            sub(placemark, 'name', 'track')
            span(placemark, document_pass['start_ns'], document_pass['end_ns'])
            sub(sub(placemark, 'LineString'), 'coordinates',
                ' '.join(f'{lon:.8f},{lat:.8f},0' for lat, lon in segment))
    folder = sub(document, 'Folder')
    sub(folder, 'name', 'season: every spot, first to last seen')
    for feature in season.features:
        placemark = sub(folder, 'Placemark')
        sub(placemark, 'name', f'{feature.label} ({feature.trend})')
        sub(placemark, 'description',
            f'seen by {len(feature.seen)} pass(es), missed by {len(feature.missed)}; first '
            f'seen {iso_utc(feature.first_seen_ns)}, last seen {iso_utc(feature.last_seen_ns)}')
        span(placemark, feature.first_seen_ns, feature.last_seen_ns)
        sub(placemark, 'styleUrl', f'#finding_{feature.label}')
        sub(sub(placemark, 'Point'), 'coordinates',
            f'{feature.longitude_deg:.8f},{feature.latitude_deg:.8f},0')
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding='utf-8', xml_declaration=True)


def _map_features(season: Season, bag: str, only: Sequence[SeasonFeature] = ()
                  ) -> List[MapFeature]:
    chosen = only or [f for f in season.features if bag in f.seen]
    out = []
    for feature in chosen:
        seen = feature.seen[bag]
        out.append(MapFeature(feature.label, feature.latitude_deg, feature.longitude_deg,
                              seen.count, seen.score_max, seen.score_max, seen.first_stamp_ns,
                              seen.last_stamp_ns, seen.confirmed_sightings))
    return out


def new_in_last_pass(season: Season) -> List[SeasonFeature]:
    """Return the features the latest pass saw that no earlier pass had seen."""
    if not season.passes:
        return []
    last = season.passes[-1]['bag_id']
    return [f for f in season.features if last in f.seen and len(f.seen) == 1]


def pass_map_file(bag_id: str) -> str:
    """Return the map file of a pass, relative to the season folder."""
    return os.path.join(MAPS_DIR, f'pass_{bag_id}.png')


def write_season_files(season: Season, out_dir: str,
                       rows_per_pass: Optional[Dict[str, Dict[str, Any]]] = None) -> List[str]:
    """
    Write the season's GeoJSON, KML, maps and coverage; return the files (relative).

    :param rows_per_pass: coverage per row of each pass (``--rows``:
        :func:`~.season_rows.row_coverage`), added to ``coverage.json`` as ``rows``.
    """
    import json

    from leaf_disease_ros.perception.atomic_io import atomic_write_text

    os.makedirs(os.path.join(out_dir, MAPS_DIR), exist_ok=True)
    atomic_write_text(os.path.join(out_dir, GEOJSON_FILE),
                      json.dumps(geojson_document(season), indent=1) + '\n')
    atomic_write_bytes(os.path.join(out_dir, KML_FILE), kml_document(season))
    files = [GEOJSON_FILE, KML_FILE, COVERAGE_FILE]
    for document in season.passes:
        bag = document['bag_id']
        write_map_png(os.path.join(out_dir, pass_map_file(bag)), _map_features(season, bag),
                      _track(document, 'track'), season.labels,
                      title=f'{pass_name(document)}: findings seen on this pass')
        files.append(pass_map_file(bag))
    if season.passes:
        last = season.passes[-1]
        write_map_png(os.path.join(out_dir, MAPS_DIR, NEW_MAP_FILE),
                      _map_features(season, last['bag_id'], new_in_last_pass(season)),
                      _track(last, 'track'), season.labels,
                      title=f'new since the pass before: {pass_name(last)}')
        files.append(os.path.join(MAPS_DIR, NEW_MAP_FILE))
    documents = {}
    for p in season.passes:
        entry = dict({k: v for k, v in p['coverage'].items() if k not in GEOMETRY_FIELDS},
                     robot=p['robot'], start=p['start_utc'], end=p['end_utc'],
                     drove_past=season.drove_past(p['bag_id']))
        if rows_per_pass is not None:
            entry['rows'] = rows_per_pass.get(p['bag_id'], {})
        documents[p['bag_id']] = entry
    atomic_write_json(os.path.join(out_dir, COVERAGE_FILE), strict_json(documents))
    return files
