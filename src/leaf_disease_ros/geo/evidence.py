"""
Track-level evidence: which findings are repeated enough to go to the navigation stack.

One frame is weak evidence: glare, motion blur or an odd leaf makes a model call a
disease now and then. :class:`EvidenceTracker` lets a finding through (it is
*confirmed*) only when its disease label has been seen repeatedly, by either rule:

- **frames**: the label has findings on at least ``min_sightings`` of the last
  ``window_frames`` processed frames (this one included); works without GPS;
- **place**: the label has findings on at least ``min_sightings`` distinct frames
  at one spot: sightings of the label merged with the map's rule
  (:class:`~leaf_disease_ros.geo.mapping.FindingMerger`: nearest same-label centre
  closer than ``radius_m`` and, for ground positions, within ``gate_sigma`` sigmas of
  the two positions' combined covariance). It needs a position.

With ground positions (``FrameResult.positions``: each finding at its own leaf,
``geo/leaf_position.py``) every finding is its own sighting and a spot counts the
**distinct frames** that saw it: the same leaf seen from two frames confirms, two
leaves of one frame do not (two tiles of one frame never join one spot), and two
different leaves on consecutive frames do not either: such findings are confirmed by
the place rule only. A finding at the camera's position (no ground position: no
heading, a rejected ray) keeps the frame rule: one frame's findings of one label
are one sighting at the frame's position, confirmed by either rule. So however many
tiles of one frame call a disease, a single bad frame never confirms anything while
``min_sightings`` is 2 or more. ``min_sightings = 1`` lets every finding through (no
evidence required); ``radius_m = 0`` turns the place rule off (the frames rule then
decides for every finding).

Call :meth:`EvidenceTracker.update` once per processed frame, in stamp order (the
node's worker thread, the replay's loop). Image stamps going back (a bag that loops)
reset the tracker. Memory: ``window_frames`` label sets plus one small record per
distinct diseased spot (as the map). Pure Python: no ROS.
"""

from collections import deque
from typing import Deque, Dict, FrozenSet, List, Optional, Set

from leaf_disease_ros.geo.mapping import FindingMerger, Sighting, sighting_at
from leaf_disease_ros.perception.pipeline import FrameResult

#: stamps may wobble this much backwards (ns) before the tracker resets
BACKWARD_TOLERANCE_NS = 1_000_000_000


class EvidenceTracker:
    """Decides, frame by frame, which findings have repeated evidence (module docstring)."""

    def __init__(self, min_sightings: int, window_frames: int, radius_m: float,
                 gate_sigma: float = 0.0) -> None:
        if min_sightings < 1:
            raise ValueError(f'min_sightings must be >= 1, got {min_sightings}')
        if window_frames < min_sightings:
            raise ValueError(f'window_frames ({window_frames}) must be >= min_sightings '
                             f'({min_sightings})')
        if not radius_m >= 0.0:
            raise ValueError(f'radius_m must be >= 0, got {radius_m}')
        self.min_sightings = int(min_sightings)
        self.window_frames = int(window_frames)
        self.radius_m = float(radius_m)
        self.gate_sigma = float(gate_sigma)
        self.frames = 0
        self.resets = 0
        self.findings = 0
        self.confirmed_findings = 0
        self._reset()

    def _reset(self) -> None:
        self._recent: Deque[FrozenSet[str]] = deque(maxlen=self.window_frames)
        self._spots = FindingMerger(self.radius_m, self.gate_sigma)
        self._spot_frames: List[int] = []  # distinct frames per spot (index of the merger)
        self._spot_last: List[int] = []  # the last frame (self.frames) that counted per spot
        self._last_stamp_ns: Optional[int] = None

    def update(self, result: FrameResult, held: bool = False) -> FrozenSet[int]:
        """
        Add one processed frame; return the indices of its confirmed findings.

        :param result: the frame (call in stamp order).
        :param held: its findings are held back (the domain check): the frame counts
            as one without findings, so a held finding never confirms a later one.
        :returns: positions in ``result.detections`` of the findings that pass the
            frames rule or the place rule; the other findings stay unconfirmed.
        """
        if (self._last_stamp_ns is not None
                and result.stamp_ns < self._last_stamp_ns - BACKWARD_TOLERANCE_NS):
            self.resets += 1
            self._reset()
        self._last_stamp_ns = result.stamp_ns
        self.frames += 1
        if held:
            self._recent.append(frozenset())
            return frozenset()
        by_label: Dict[str, List[int]] = {}
        for index, detection in enumerate(result.detections):
            if detection.is_finding:
                by_label.setdefault(detection.label, []).append(index)
        self._recent.append(frozenset(by_label))
        confirmed: Set[int] = set()
        tag = result.geotag.geotag
        place = tag is not None and self.radius_m > 0.0
        for label, indices in by_label.items():
            seen = sum(1 for labels in self._recent if label in labels)
            self.findings += len(indices)
            at_camera = list(indices)
            if place:
                at_camera = []
                for i in indices:
                    position = result.position_of(i)
                    if position is None or not position.at_leaf:
                        at_camera.append(i)
                    elif self._count_spot(sighting_at(label, result.detections[i].score,
                                                      position, result.stamp_ns)) \
                            >= self.min_sightings:
                        confirmed.add(i)
            if at_camera:
                spot_seen = 0
                if place and tag is not None:
                    best = max(result.detections[i].score for i in at_camera)
                    spot_seen = self._count_spot(Sighting(label, best, tag.latitude_deg,
                                                          tag.longitude_deg, result.stamp_ns))
                if max(seen, spot_seen) >= self.min_sightings:
                    confirmed.update(at_camera)
        self.confirmed_findings += len(confirmed)
        return frozenset(confirmed)

    def _count_spot(self, sighting: Sighting) -> int:
        """Add a sighting; return the distinct frames (this one included) of its spot."""
        spot = self._spots.add(sighting)
        if spot == len(self._spot_frames):
            self._spot_frames.append(0)
            self._spot_last.append(-1)
        if self._spot_last[spot] != self.frames:
            self._spot_last[spot] = self.frames
            self._spot_frames[spot] += 1
        return self._spot_frames[spot]
