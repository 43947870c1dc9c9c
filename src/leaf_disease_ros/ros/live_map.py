"""
The node's live disease map: merged findings of a field run, written as GeoJSON as it goes.

On a field run without a recording, the operator still gets the map the replay would
draw. With ``live_map_dir`` set, the node hands every published frame to a
:class:`LiveMap`, which keeps the merged findings and writes ``findings.geojson`` in
that folder every ``live_map_period_s`` (when something changed) and once more when
the node stops. The rule is the replay's, by construction:

- a sighting is a tile that is a finding (``Detection.is_finding``) of a frame with a
  position (``GeotagResult.geotag``), at the finding's own ground position
  (``FrameResult.position_of``: the leaf, else the camera) and the frame's stamp
  (:func:`sightings_of`, the same selection as ``replay/runner.py``);
- sightings are merged by :class:`~leaf_disease_ros.geo.mapping.FindingMerger` with
  ``merge_radius_m`` and ``position_gate_sigma``, and written by
  :func:`~leaf_disease_ros.geo.mapping.write_geojson`
  (RFC 7946, atomically: a reader never sees half a file, and a crash leaves the last
  complete map).

Memory grows with the number of distinct diseased spots, never with the run length.
Thread-safe: the worker adds, a timer and the shutdown write. ROS-free.
"""

import os
import threading
from typing import Any, Dict, List, Mapping, Optional

from leaf_disease_ros.geo.mapping import (FindingMerger, MapFeature, Sighting, sighting_at,
                                          write_geojson)
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.pipeline import FrameResult

GEOJSON_FILE = 'findings.geojson'


def sightings_of(result: FrameResult) -> List[Sighting]:
    """Return the sightings of one frame: each finding at its position (none without one)."""
    out = []
    for index, detection in enumerate(result.detections):
        position = result.position_of(index) if detection.is_finding else None
        if position is not None:
            out.append(sighting_at(detection.label, detection.score, position,
                                   result.stamp_ns))
    return out


class LiveMap:
    """Merged findings of a run, written to ``<folder>/findings.geojson``."""

    def __init__(self, folder: str, merge_radius_m: float,
                 properties: Optional[Mapping[str, Any]] = None,
                 gate_sigma: float = 0.0) -> None:
        """
        Create the folder and write an empty map, so a bad folder fails at start.

        :param folder: output folder (created if missing).
        :param merge_radius_m: the replay's merge radius (``merge_radius_m``).
        :param properties: written in the GeoJSON's ``leaf_disease_ros`` member (model,
            node...).
        :param gate_sigma: ``position_gate_sigma`` (the covariance rule of the merge).

        :raises ConfigError: (``live_map_dir``) the folder cannot be created or written.
        """
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, GEOJSON_FILE)
        self._properties: Dict[str, Any] = dict(properties or {})
        self._merger = FindingMerger(merge_radius_m, gate_sigma)
        self._lock = threading.Lock()
        self._version = 0          # bumped by every sighting added
        self._written_version = -1
        self.findings_without_position = 0
        self.writes = 0
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise ConfigError('live_map_dir', f'cannot create {self.folder}: '
                                              f'{exc.strerror}') from exc
        try:
            self.write()
        except OSError as exc:
            raise ConfigError('live_map_dir', f'cannot write {self.path}: {exc.strerror}; '
                                              'give a folder this user can write') from exc

    @property
    def merge_radius_m(self) -> float:
        """The merge radius in metres."""
        return self._merger.merge_radius_m

    @property
    def sightings(self) -> int:
        """Sightings added so far."""
        with self._lock:
            return self._merger.sightings

    def features(self) -> List[MapFeature]:
        """Return the merged features so far (in order of first sighting)."""
        with self._lock:
            return self._merger.features()

    def add(self, result: FrameResult) -> int:
        """Add the sightings of one published frame; return how many it had."""
        found = sightings_of(result)
        with self._lock:
            if result.geotag.geotag is None:
                self.findings_without_position += sum(1 for d in result.detections
                                                      if d.is_finding)
            for sighting in found:
                self._merger.add(sighting)
            if found:
                self._version += 1
        return len(found)

    def write(self, force: bool = False) -> bool:
        """
        Write ``findings.geojson`` atomically if anything changed since the last write.

        :param force: write even when nothing changed.
        :returns: whether the file was written.
        :raises OSError: the file cannot be written (the previous one stays).
        """
        with self._lock:
            if not force and self._version == self._written_version:
                return False
            features = self._merger.features()
            version = self._version
            properties = dict(self._properties)
            properties.update({'merge_radius_m': self._merger.merge_radius_m,
                               'sightings': self._merger.sightings,
                               'findings_without_position': self.findings_without_position})
        write_geojson(self.path, features, properties)
        with self._lock:
            self._written_version = max(self._written_version, version)
            self.writes += 1
        return True
