"""
One bag of a season, replayed exactly as ``leaf-disease-replay`` does: the task body.

:func:`replay_bag` is what a Ray task runs (:mod:`.season` wraps it; this module
never imports Ray, so it is tested and benchmarked without it). It:

1. makes the bag's result folder ``season/bags/<id>/`` with the replay's own staging
   rule (:class:`~leaf_disease_ros.replay.report_folder.ReportFolder`: built in a
   hidden folder beside it and renamed into place when complete; a killed worker
   leaves only a staging folder, removed on the next run), and records the worker
   (host, pid) in it;
2. loads the backend with ``threads`` intra-op threads (and OpenCV limited to as
   many), replays with :func:`~leaf_disease_ros.replay.runner.run_replay` and writes
   the replay's report (:func:`~leaf_disease_ros.replay.report.write_report`), so the
   folder is an ordinary replay report;
3. adds ``pass.json``: what the season map needs from the pass (:func:`pass_summary`):
   the run key, the robot, the pass's time span, its merged findings, its GPS track,
   its coverage along the track (:class:`CoverageObserver`) and, when the replay had
   camera geometry, the poses of its judged frames and the image's footprint
   (:mod:`.season_footprint`): what the camera looked at, for "drove past".

A :class:`~leaf_disease_ros.perception.errors.LeafDiseaseError` (a corrupt bag, wrong
topics, a bad model) is returned as a failed result, not raised: the driver retries
the bag once and then reports it. An ``OSError`` whose errno says the storage
hiccuped (a network file system: ``EIO``, ``ETIMEDOUT``, ``ESTALE``, ...) is raised
as :class:`TransientStorageError`, which the Ray task retries (``retry_exceptions``).
"""

from dataclasses import dataclass, field
import errno
import math
import os
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.geodesy import local_east_north_m
from leaf_disease_ros.geo.mapping import iso_utc, TrackRecorder
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.config import validate_parameters
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.pipeline import FrameResult
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.report_folder import ReportFolder
from leaf_disease_ros.replay.runner import ReplayOptions, ReplayState, run_replay
from leaf_disease_ros.replay.season_footprint import footprint_document, PoseRecorder
from leaf_disease_ros.replay.season_store import SeasonBag
from leaf_disease_ros.ros.conversions import GroundTruthBox
from leaf_disease_ros.ros.diagnostics import (domain_verdict, DomainRule, DomainWindow,
                                              holds_findings)

PASS_FILE = 'pass.json'
WORKER_FILE = 'worker.json'
#: 2: coverage has held_track and footprint (format 1 results are read with the radius rule)
PASS_FORMAT = 2
#: errno values of storage that may answer on a second try (network file systems)
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN,
                              errno.EBUSY, errno.ECONNRESET, errno.EHOSTUNREACH})
STATUS_DONE = 'done'
STATUS_FAILED = 'failed'


class TransientStorageError(LeafDiseaseError):
    """The bag's storage failed in a way a retry may cure (Ray retries the task)."""


@dataclass(frozen=True)
class BagJob:
    """Everything one task needs (pickled to the worker): bag, where, how, the key."""

    bag: SeasonBag
    bags_dir: str
    key: str
    parameters: Dict[str, Any]
    inputs: Tuple[str, ...] = ()
    threads: int = 1
    robot_from: str = 'folder'
    write_bag: bool = True
    gallery_size: int = 0
    max_frames: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def _path_length_m(points: Sequence[Tuple[float, float]]) -> float:
    total = 0.0
    for (lat0, lon0), (lat1, lon1) in zip(points, points[1:]):
        east, north = local_east_north_m(lat1, lon1, lat0, lon0)
        total += math.hypot(east, north)
    return total


def track_length_m(segments: Sequence[Sequence[Tuple[float, float]]]) -> float:
    """Return the length of a track given as segments of (lat, lon) points, in metres."""
    return sum(_path_length_m(list(segment)) for segment in segments)


class CoverageObserver:
    """
    Where the pass looked: positions of the frames the model judged, and of held ones.

    Sees every processed frame (a replay observer) and runs the node's domain check
    on it with the same window and rule as the runner (the same pure functions, so
    it agrees with the runner's ``findings_held``): a positioned frame goes to the
    *judged* track (its findings, if any, went to the map) or to the *held* track
    (out of the model's domain: nothing could be seen). Both are
    :class:`~leaf_disease_ros.geo.mapping.TrackRecorder` s: bounded memory. Each
    positioned frame's pose also goes to a
    :class:`~.season_footprint.PoseRecorder` (thinned, bounded), and the frame sizes
    of judged frames are counted (the footprint is made for the most common one).
    """

    #: reads only the results: the replay may decode frames at reduced size
    reads_pixels = False

    def __init__(self, parameters: Dict[str, Any], background_labels: Sequence[str],
                 max_gap_s: float) -> None:
        self.window = DomainWindow(parameters['domain_window_tiles'], background_labels)
        self.rule = DomainRule.from_parameters(parameters)
        self.judged = TrackRecorder(min_step_m=0.25, max_gap_s=max_gap_s)
        self.held = TrackRecorder(min_step_m=0.25, max_gap_s=max_gap_s)
        self.poses = PoseRecorder(parameters['heading_window_s'],
                                  parameters['min_speed_for_heading_mps'],
                                  parameters['heading_hold_s'], max_gap_s)
        self.frame_sizes: Dict[Tuple[int, int], int] = {}
        self.frames_judged = 0
        self.frames_held = 0
        self.frames_without_position = 0

    def observe(self, image_bgr: np.ndarray, result: FrameResult,
                truth: Optional[List[GroundTruthBox]]) -> None:
        """Take one processed frame (see :class:`~.runner.FrameObserver`)."""
        self.window.add_frame(result)
        held = holds_findings(domain_verdict(self.window.shares(), self.rule), self.rule)
        tag = result.geotag.geotag
        if tag is None:
            self.frames_without_position += 1
            return
        if held:
            self.frames_held += 1
            self.held.add(tag.latitude_deg, tag.longitude_deg, result.stamp_ns)
            self.judged.break_segment()
        else:
            self.frames_judged += 1
            self.judged.add(tag.latitude_deg, tag.longitude_deg, result.stamp_ns)
            self.held.break_segment()
            size = (result.frame_height_px, result.frame_width_px)
            self.frame_sizes[size] = self.frame_sizes.get(size, 0) + 1
        self.poses.add(result.stamp_ns, tag.latitude_deg, tag.longitude_deg, not held)

    def frame_hw_px(self) -> Optional[Tuple[int, int]]:
        """Return the most common ``(height, width)`` of the judged frames (None: none)."""
        if not self.frame_sizes:
            return None
        return max(self.frame_sizes.items(), key=lambda item: (item[1], item[0]))[0]


def coverage(state: ReplayState, observer: CoverageObserver) -> Dict[str, Any]:
    """
    Return a pass's coverage along its track: driven, judged, held, without images.

    ``driven_m`` is the GPS track's length; ``judged_m`` the path of the frames the
    model judged in its domain; ``out_of_domain_m`` that of the frames whose findings
    were held; ``without_images_m`` the rest of the driven track (no frame, or no
    decodable one). Frame counts add the frames without position (no GPS at their
    stamp) and the frames skipped (no image could be classified). ``judged_track`` and
    ``held_track`` are the paths themselves (the radius rule); ``footprint`` is what the
    camera looked at (:func:`~.season_footprint.footprint_document`), or null with
    ``footprint_note`` saying why (then the season map uses the radius rule).
    """
    driven = state.track.segments()
    judged = observer.judged.segments()
    held = observer.held.segments()
    driven_m = track_length_m(driven)
    judged_m = track_length_m(judged)
    held_m = track_length_m(held)
    observer.poses.finish()
    footprint, note = footprint_document(getattr(state, 'locator', None),
                                         observer.frame_hw_px(), observer.poses)
    return {
        'driven_m': round(driven_m, 2),
        'judged_m': round(judged_m, 2),
        'out_of_domain_m': round(held_m, 2),
        'without_images_m': round(max(0.0, driven_m - judged_m - held_m), 2),
        'frames_read': state.frames_read,
        'frames_judged': observer.frames_judged,
        'frames_out_of_domain': observer.frames_held,
        'frames_without_position': observer.frames_without_position,
        'frames_without_image': sum(state.skipped.values()),
        'judged_track': [[[round(lat, 8), round(lon, 8)] for lat, lon in segment]
                         for segment in judged],
        'held_track': [[[round(lat, 8), round(lon, 8)] for lat, lon in segment]
                       for segment in held],
        'footprint': footprint,
        'footprint_note': note,
    }


def namespace_of(topic: str) -> str:
    """Return the first name of a topic with a namespace (``/robot2/camera/x`` -> robot2)."""
    parts = [part for part in topic.split('/') if part]
    return parts[0] if len(parts) >= 3 else ''


def pass_summary(job: BagJob, state: ReplayState, metrics: Dict[str, Any],
                 observer: CoverageObserver, worker: Dict[str, Any]) -> Dict[str, Any]:
    """Return the document of ``pass.json`` (what the season map reads of a pass)."""
    robot = job.bag.robot
    robot_source = 'mapping or folder'
    if not robot:
        robot = namespace_of(state.topics.image)
        robot_source = 'image topic namespace'
        if not robot:
            robot, robot_source = job.bag.folder_robot, 'folder (the image topic has no namespace)'
    start_ns = state.first_log_time_ns or 0
    end_ns = state.last_log_time_ns or start_ns
    features = [{
        'label': f.label, 'latitude_deg': f.latitude_deg, 'longitude_deg': f.longitude_deg,
        'count': f.count, 'score_max': f.score_max, 'score_mean': f.score_mean,
        'first_stamp_ns': f.first_stamp_ns, 'last_stamp_ns': f.last_stamp_ns,
        'confirmed_sightings': f.confirmed_sightings} for f in state.merger.features()]
    return {
        'format': PASS_FORMAT,
        'status': STATUS_DONE,
        'bag_id': job.bag.bag_id,
        'bag': job.bag.path,
        'key': job.key,
        'robot': robot,
        'robot_source': robot_source,
        'start_ns': start_ns,
        'end_ns': end_ns,
        'start_utc': iso_utc(start_ns),
        'end_utc': iso_utc(end_ns),
        'complete': metrics['bag']['complete'],
        'truncated_reason': metrics['bag']['truncated_reason'],
        'model': state.model,
        'merge_radius_m': state.parameters['merge_radius_m'],
        'labels': list(state.labels),
        'features': features,
        'track': [[[round(lat, 8), round(lon, 8)] for lat, lon in segment]
                  for segment in state.track.segments()],
        'coverage': coverage(state, observer),
        'frames_processed': state.frames_processed,
        'findings_held': state.findings_held,
        'wall_s': round(state.wall_s, 3),
        'worker': worker,
    }


def _failed(job: BagJob, exc: BaseException, worker: Dict[str, Any]) -> Dict[str, Any]:
    return {'status': STATUS_FAILED, 'bag_id': job.bag.bag_id, 'bag': job.bag.path,
            'key': job.key, 'error': str(exc) or type(exc).__name__,
            'error_type': type(exc).__name__, 'worker': worker}


def replay_bag(job: BagJob) -> Dict[str, Any]:
    """
    Replay one bag into ``bags_dir/<id>/`` and return its ``pass.json`` document.

    :returns: the pass summary, or a failed result (``status`` ``failed``, ``error``).
    :raises TransientStorageError: the storage hiccuped (retry the task).
    """
    import cv2

    started = time.perf_counter()
    cv2.setNumThreads(max(1, job.threads))
    worker = {'host': socket.gethostname(), 'pid': os.getpid()}
    folder: Optional[ReportFolder] = None
    backend: Any = None
    try:
        folder = ReportFolder(os.path.join(job.bags_dir, job.bag.bag_id), inputs=job.inputs)
        atomic_write_json(os.path.join(folder.staging, WORKER_FILE), worker)
        params = validate_parameters(dict(job.parameters, onnx_intra_op_threads=job.threads))
        backend = load_backend(params['model_path'], params['backend'],
                               onnx_provider=params['onnx_provider'],
                               intra_op_threads=job.threads, max_batch=params['max_batch'])
        loaded = time.perf_counter()
        observer = CoverageObserver(params, backend.card.background_labels,
                                    max(params['max_fix_gap_s'], 2.0 * params['max_fix_age_s']))
        options = ReplayOptions(bag_path=job.bag.path, out_dir=folder.staging,
                                parameters=params, write_bag=job.write_bag,
                                observers=(observer,), gallery_size=job.gallery_size,
                                max_frames=job.max_frames)
        state = run_replay(options, backend=backend)
        metrics = write_report(state, folder.staging)
        worker['load_s'] = round(loaded - started, 3)
        worker['task_s'] = round(time.perf_counter() - started, 3)
        summary = pass_summary(job, state, metrics, observer, worker)
        atomic_write_json(os.path.join(folder.staging, PASS_FILE), summary)
        folder.commit()
        return summary
    except LeafDiseaseError as exc:
        return _failed(job, exc, worker)
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise TransientStorageError(f'{job.bag.path}: {exc}; retrying') from exc
        return _failed(job, exc, worker)
    finally:
        if backend is not None:
            backend.close()
        if folder is not None:
            folder.discard()
