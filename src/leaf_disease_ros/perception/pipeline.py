"""
The perception pipeline: frame + stamp (+ fix buffer) -> FrameResult.

:class:`Detector` is what the node's worker thread and the replay call per frame:

1. tile the frame and gate tiles by vegetation fraction and leaf area (:mod:`.tiling`):
   a tile below either floor is skipped as background, never classified;
2. preprocess every kept tile into one batch (:func:`.preprocess.preprocess`);
3. run the backend on the batch, in chunks of at most the backend's maximum batch;
4. calibrated scores, top-k and unknown rejection (:mod:`.postprocess`); when the
   card's ``embedding_distance`` is in use and the backend returns embeddings
   (``infer_with_embedding``), tiles too far from the training data are unknown too;
   with a site (:mod:`.site_model`), the logits come from the site's head on the embeddings;
5. the frame's position at its own stamp (:mod:`.geotag`), and, with a
   :attr:`Detector.locator` (``geo/leaf_position.py``), each finding's own ground
   position from the camera's geometry (``FrameResult.positions``).

The domain reference (:attr:`Detector.domain_reference`, a :class:`DomainReference`)
says per tile whether it is far from what the model knows (``Detection.distance``,
``Detection.out_of_domain``); the domain check of the node and the replay counts those
tiles. By default it is the card's ``embedding_distance`` with its threshold (the
training data); a per-site reference (a recorded healthy pass of the grower's row)
replaces it with one assignment, ``detector.domain_reference = site_reference``.
Embeddings are only computed when the backend offers them with the logits
(``infer_with_embedding``, no second pass); without them there is no reference and
the flag stays False.

It never imports ROS or a runtime: the backend is any object with ``infer(batch)
-> logits`` and ``max_batch`` (see ``inference/base.py``). ``process`` is not
re-entrant (it reuses one input buffer); call it from one thread. :meth:`Detector.prepare`
with its own buffer (tiling, gating, preprocessing) may run on another thread than
:meth:`Detector.process_prepared` (inference, postprocessing, geotag): the replay
prepares the next frame on its decode thread while the current one infers. The
configuration can be swapped from another thread with :meth:`Detector.update_config`
(the frozen config object is replaced in one assignment).
"""

from dataclasses import dataclass
import time
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.embedding_distance import EmbeddingDistance
from leaf_disease_ros.perception.errors import ConfigError, FrameError, FrameTooSmallError
from leaf_disease_ros.perception.image_checks import min_side_px
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.positions import (COVARIANCE_TYPE_UNKNOWN, GeotagResult,
                                                   GroundPosition, PLACED_CAMERA,
                                                   REASON_NO_FIX_RECEIVED)
from leaf_disease_ros.perception.postprocess import (check_model_outputs, classify,
                                                     finding_scores, softmax)
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.site_model import SiteModel
from leaf_disease_ros.perception.tiling import check_frame, crops, gate_fractions, tile_boxes

STAGES = ('tiling', 'preprocess', 'inference', 'postprocess', 'geotag', 'total')


class PositionSource(Protocol):
    """What the pipeline needs of the GPS side (:class:`leaf_disease_ros.geo.geotag.FixBuffer`)."""

    def lookup(self, stamp_ns: int, max_fix_gap_s: float, max_fix_age_s: float,
               lever_arm_m: Sequence[float] = (0.0, 0.0, 0.0),
               min_speed_mps: float = 0.3, heading_window_s: float = 2.0) -> GeotagResult:
        """Return the position at ``stamp_ns``."""


class LeafLocator(Protocol):
    """What places findings on the ground (``geo/leaf_position.py``'s ``LeafLocator``)."""

    def locate(self, stamp_ns: int, geotag: GeotagResult, detections: Sequence['Detection'],
               frame_hw_px: Tuple[int, int], fixes: Optional[PositionSource]
               ) -> Tuple[Optional[GroundPosition], ...]:
        """Return one position per detection (None for those that are not findings)."""


class DomainReference(Protocol):
    """What the domain check compares a tile's embedding with (training data, or a site)."""

    @property
    def threshold(self) -> float:
        """Distance above which a tile is out of the domain."""

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` distances of ``(N, D)`` embeddings to the reference."""


@dataclass(frozen=True)
class TrainingDataReference:
    """The card's ``embedding_distance`` as a domain reference (its ``unknown_threshold``)."""

    distance: EmbeddingDistance
    threshold: float

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` distances to the nearest training class (about 1 in domain)."""
        return self.distance.distances(embeddings)


def card_domain_reference(card: ModelCard) -> Optional[TrainingDataReference]:
    """Return the card's training-data reference, None without a distance and threshold."""
    distance = card.embedding_distance
    if distance is None or distance.unknown_threshold is None or not card.embedding_name:
        return None
    return TrainingDataReference(distance, float(distance.unknown_threshold))


@dataclass(frozen=True)
class NearestReference:
    """
    In the domain when near any of several references: the training data, or a site's normal.

    ``distances`` is the smallest of each reference's distance divided by its own
    threshold, so ``threshold`` is 1. A diseased leaf near the training data's disease
    classes stays in the domain on an adapted site (an outbreak must not make the
    check warn and hold its own findings back); the site's canopy, far from the lab
    leaves, is in the domain because the site's reference knows it.
    """

    references: Tuple[DomainReference, ...]
    threshold: float = 1.0

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` the smallest threshold-relative distance over the references."""
        return np.min([np.asarray(r.distances(embeddings)) / r.threshold
                       for r in self.references], axis=0)


def site_domain_reference(card: ModelCard, site: SiteModel) -> Optional[DomainReference]:
    """Return the domain reference of an adapted model: the training data or the site's normal."""
    references: List[DomainReference] = []
    training = card_domain_reference(card)
    if training is not None:
        references.append(training)
    if site.domain is not None and site.domain.unknown_threshold is not None:
        references.append(TrainingDataReference(site.domain, float(site.domain.unknown_threshold)))
    if not references:
        return None
    return references[0] if len(references) == 1 else NearestReference(tuple(references))


class InferenceBackend(Protocol):
    """What the pipeline needs of a backend."""

    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 logits of a ``(N, 3, H, W)`` float32 batch."""


@dataclass(frozen=True)
class Detection:
    """
    One classified tile.

    ``box_xyxy_px`` is ``(x0, y0, x1, y1)`` in frame pixels, x1/y1 exclusive.
    ``is_disease``: the label is neither healthy nor unknown. ``is_finding``: a
    disease whose ``finding_score`` clears the finding threshold (what maps and
    ``~/geo_detections`` report). ``finding_score`` is the card's choice
    (``calibration.finding_score``): the top label's score, or the calibrated
    probability of all disease labels together.
    """

    box_xyxy_px: Tuple[int, int, int, int]
    label: str
    label_index: int
    score: float
    top_k: Tuple[Tuple[str, float], ...]
    is_unknown: bool
    is_disease: bool
    is_finding: bool
    vegetation_fraction: float
    #: to the domain reference (else the card's distance when it decides unknown)
    distance: Optional[float] = None
    finding_score: float = 0.0
    leaf_area_fraction: Optional[float] = None  # None: the leaf-area gate is off
    #: farther from the domain reference than its threshold (False without a reference)
    out_of_domain: bool = False


@dataclass(frozen=True)
class FrameResult:
    """
    Everything the pipeline knows about one frame.

    ``timings_ms`` has one entry per name in :data:`STAGES`. ``positions``: one per
    detection (None for non-findings) when a locator placed the findings, else empty
    (:meth:`position_of` then gives the camera's position).
    """

    stamp_ns: int
    frame_height_px: int
    frame_width_px: int
    detections: Tuple[Detection, ...]
    tiles_total: int
    tiles_gated: int
    geotag: GeotagResult
    timings_ms: Dict[str, float]
    positions: Tuple[Optional[GroundPosition], ...] = ()

    @property
    def findings(self) -> Tuple[Detection, ...]:
        """Detections that are disease findings."""
        return tuple(d for d in self.detections if d.is_finding)

    def position_of(self, index: int) -> Optional[GroundPosition]:
        """
        Return where detection ``index`` is: its ground position, else the camera's.

        The camera's position (method ``camera``) carries the fix's covariance; None
        when the frame has no position at all.
        """
        if self.positions and self.positions[index] is not None:
            return self.positions[index]
        tag = self.geotag.geotag
        if tag is None:
            return None
        covariance = (tag.covariance_m2 if tag.covariance_type != COVARIANCE_TYPE_UNKNOWN
                      else (0.0,) * 9)
        return GroundPosition(tag.latitude_deg, tag.longitude_deg, tag.altitude_m,
                              tuple(covariance), PLACED_CAMERA,
                              note='no camera geometry in use')


@dataclass(frozen=True)
class PreparedFrame:
    """
    A frame tiled, gated and preprocessed (:meth:`Detector.prepare`), ready to infer.

    ``kept_boxes`` are the boxes that passed the gates (rows of ``batch``), ``keep``
    their indices among all ``tiles_total`` boxes; ``vegetation`` and ``leaf_area``
    (None: the leaf-area gate is off) are per box of the frame. ``batch`` is None when
    no tile passed.
    """

    config: DetectorConfig
    height_px: int
    width_px: int
    tiles_total: int
    kept_boxes: np.ndarray
    keep: np.ndarray
    vegetation: np.ndarray
    leaf_area: Optional[np.ndarray]
    batch: Optional[np.ndarray]
    tiling_ms: float
    preprocess_ms: float


class Detector:
    """Classifies the tiles of frames with one backend and one model card."""

    def __init__(self, backend: InferenceBackend, card: ModelCard,
                 config: Optional[DetectorConfig] = None,
                 site: Optional[SiteModel] = None) -> None:
        self._backend = backend
        self._card = card
        self._config = config or DetectorConfig()
        self._check(self._config)
        self._input: Optional[np.ndarray] = None  # reused (N, 3, H, W) buffer
        distance = card.embedding_distance
        with_embedding = getattr(backend, 'infer_with_embedding', None)
        self._embeds = bool(card.embedding_name) and callable(with_embedding)
        if site is not None and not self._embeds:
            raise ConfigError('site_path', f'the site {site.site_id} needs the embedding output '
                              f'of the model, and model {card.name} on this backend has none')
        #: the site in use (None: the model's own output layer)
        self.site = site
        #: the embedding distance in use for unknown (None: softmax score only)
        self.distance = (distance if distance is not None and distance.use_for_unknown
                         and self._embeds else None)
        self._reference: Optional[DomainReference] = None
        #: places each finding on the ground (None: findings at the camera's position)
        self.locator: Optional[LeafLocator] = None
        self.domain_reference = (card_domain_reference(card) if site is None
                                 else site_domain_reference(card, site))

    @property
    def domain_reference(self) -> Optional[DomainReference]:
        """What tiles are judged in or out of the domain against (None: not judged)."""
        return self._reference

    @domain_reference.setter
    def domain_reference(self, reference: Optional[DomainReference]) -> None:
        """Swap the reference (from the next frame); ignored without embeddings."""
        self._reference = reference if self._embeds else None

    @property
    def card(self) -> ModelCard:
        """The model card the detector classifies with."""
        return self._card

    @property
    def concurrent_inference(self) -> bool:
        """
        Whether :meth:`process_prepared` may run on several threads at once.

        The backend says so (``concurrent_inference``): ONNX Runtime sessions take
        concurrent runs; TensorRT's backend serialises its calls.
        """
        return bool(getattr(self._backend, 'concurrent_inference', False))

    @property
    def config(self) -> DetectorConfig:
        """The configuration in force."""
        return self._config

    def update_config(self, config: DetectorConfig) -> None:
        """Swap the configuration (takes effect from the next frame)."""
        self._check(config)
        self._config = config

    @staticmethod
    def _check(config: DetectorConfig) -> None:
        if config.tile_stride_px > config.tile_size_px:
            raise ConfigError('tile_stride_px', 'is larger than tile_size_px')
        if config.max_batch < 1:
            raise ConfigError('max_batch', 'must be >= 1')

    def unknown_threshold(self) -> float:
        """Return the unknown threshold in force: the parameter, or the card's when negative."""
        value = self._config.unknown_threshold
        return self._card.unknown_threshold if value < 0 else value

    def finding_threshold(self) -> float:
        """Return the finding threshold in force: parameter, else the site's, else the card's."""
        value = self._config.disease_score_threshold
        if value >= 0:
            return value
        if self.site is not None and self.site.finding_threshold is not None:
            return self.site.finding_threshold
        return self._card.finding_threshold

    def finding_threshold_source(self) -> str:
        """Say where :meth:`finding_threshold` comes from: parameter, site or model card."""
        if self._config.disease_score_threshold >= 0:
            return 'parameter'
        if self.site is not None and self.site.finding_threshold is not None:
            return 'site'
        return 'model card'

    def _input_buffer(self, count: int) -> np.ndarray:
        height, width = self._card.input_hw_px
        if self._input is None or self._input.shape[0] < count:
            self._input = np.empty((max(count, 8), 3, height, width), dtype=np.float32)
        return self._input

    def classify_batch(self, batch: np.ndarray) -> np.ndarray:
        """Return logits ``(N, C)`` of a preprocessed batch, chunked to the max batch."""
        chunk = max(1, min(self._config.max_batch, self._backend.max_batch))
        if batch.shape[0] <= chunk:
            return self._backend.infer(batch)
        return np.concatenate([self._backend.infer(batch[i:i + chunk])
                               for i in range(0, batch.shape[0], chunk)])

    def classify_batch_with_embedding(self, batch: np.ndarray
                                      ) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``(logits (N, C), embeddings (N, D))`` of a batch, chunked to the max batch."""
        chunk = max(1, min(self._config.max_batch, self._backend.max_batch))
        run = getattr(self._backend, 'infer_with_embedding')
        parts = [run(batch[i:i + chunk]) for i in range(0, batch.shape[0], chunk)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def prepare(self, frame_bgr: np.ndarray, own_buffer: bool = True,
                pixel_scale: int = 1) -> PreparedFrame:
        """
        Tile, gate and preprocess one frame: everything of :meth:`process` before inference.

        Safe to call on another thread than :meth:`process_prepared` (the replay's decode
        thread prepares the next frame while this one infers) with ``own_buffer`` True:
        the batch is then a new array, not the detector's reused input buffer.

        ``pixel_scale`` > 1: ``frame_bgr`` was decoded at ``1/pixel_scale`` of the
        camera's size (``perception/reduced_decode.py`` says when that is allowed). Tiles,
        boxes and the frame size stay in the camera's full-size pixels; only the
        cropping and the gate read the reduced image.

        :raises FrameError: the frame is not a ``(H, W, 3)`` uint8 image.
        :raises FrameTooSmallError: a side is shorter than
            :func:`~leaf_disease_ros.perception.image_checks.min_side_px` of the model's
            input (a 1-px-high frame would be tiled into 1x1 tiles and classified).
        """
        config = self._config  # one read: a concurrent update applies to the next frame
        clock = time.perf_counter
        start = clock()
        height, width = check_frame(frame_bgr)
        if pixel_scale not in (1, 2, 4):
            raise FrameError(f'pixel scale {pixel_scale} is not 1, 2 or 4')
        height, width = height * pixel_scale, width * pixel_scale
        smallest_px = min_side_px(self._card.input_hw_px)
        if min(height, width) < smallest_px:
            raise FrameTooSmallError(
                f'frame is {width}x{height} px: a side shorter than {smallest_px} px is too '
                f"small for the model's {self._card.input_hw_px[1]}x"
                f'{self._card.input_hw_px[0]} input, not classified (a broken camera driver '
                'or a cropped stream)')
        boxes = tile_boxes(height, width, config.tiling, config.tile_size_px,
                           config.tile_stride_px)
        leaf: Optional[np.ndarray] = None
        if config.min_vegetation_fraction > 0.0:  # 0: every tile, both gates off
            fractions, leaf = gate_fractions(frame_bgr, boxes // pixel_scale,
                                             config.vegetation_exg_threshold,
                                             config.min_leaf_area_fraction > 0.0, pixel_scale)
            passed = fractions >= config.min_vegetation_fraction
            if leaf is not None:
                passed &= leaf >= config.min_leaf_area_fraction
            keep = np.flatnonzero(passed)
        else:
            fractions = np.ones(len(boxes), dtype=np.float32)
            keep = np.arange(len(boxes))
        kept_boxes = boxes[keep]
        t_tiled = clock()
        batch: Optional[np.ndarray] = None
        if len(kept_boxes):
            height_in, width_in = self._card.input_hw_px
            out = (np.empty((len(kept_boxes), 3, height_in, width_in), dtype=np.float32)
                   if own_buffer else self._input_buffer(len(kept_boxes)))
            batch = preprocess(crops(frame_bgr, kept_boxes // pixel_scale), self._card, out=out)
        t_pre = clock()
        return PreparedFrame(config=config, height_px=height, width_px=width,
                             tiles_total=len(boxes), kept_boxes=kept_boxes, keep=keep,
                             vegetation=fractions, leaf_area=leaf, batch=batch,
                             tiling_ms=(t_tiled - start) * 1e3,
                             preprocess_ms=(t_pre - t_tiled) * 1e3)

    def process(self, frame_bgr: np.ndarray, stamp_ns: int,
                fix_buffer: Optional[PositionSource] = None) -> FrameResult:
        """
        Classify one frame and geotag it at ``stamp_ns``.

        :param frame_bgr: ``(H, W, 3)`` uint8 BGR image.
        :param stamp_ns: the image header stamp, nanoseconds.
        :param fix_buffer: the GPS buffer; None gives no position.

        :raises FrameError: the frame is not a ``(H, W, 3)`` uint8 image.
        :raises FrameTooSmallError: a side is too small for the model's input
            (see :meth:`prepare`).
        :raises InferenceError: the backend failed on this frame, or returned NaN,
            infinite or overflowing outputs (the frame is dropped, never published).
        """
        return self.process_prepared(self.prepare(frame_bgr, own_buffer=False), stamp_ns,
                                     fix_buffer)

    def process_prepared(self, frame: PreparedFrame, stamp_ns: int,
                         fix_buffer: Optional[PositionSource] = None) -> FrameResult:
        """
        Classify a :meth:`prepare` d frame and geotag it at ``stamp_ns``.

        The configuration is the one the frame was prepared with (tiling and inference
        of one frame never mix two configurations).

        :raises InferenceError: the backend failed on this frame, or returned NaN,
            infinite or overflowing outputs (the frame is dropped, never published).
        """
        config = frame.config
        clock = time.perf_counter
        timings = dict.fromkeys(STAGES, 0.0)
        timings['tiling'] = frame.tiling_ms
        timings['preprocess'] = frame.preprocess_ms
        start = clock()
        kept_boxes, keep, fractions, leaf = (frame.kept_boxes, frame.keep, frame.vegetation,
                                             frame.leaf_area)
        detections: Tuple[Detection, ...] = ()
        if frame.batch is not None:
            batch = frame.batch
            t_pre = start
            distances: Optional[np.ndarray] = None
            far: Optional[np.ndarray] = None
            outside: Optional[np.ndarray] = None
            reference = self._reference  # one read: a swap applies to the next frame
            if self.distance is None and reference is None and self.site is None:
                logits = self.classify_batch(batch)
                check_model_outputs(logits)
            else:
                logits, embeddings = self.classify_batch_with_embedding(batch)
                check_model_outputs(logits, embeddings)
                if self.site is not None:
                    logits = self.site.logits(embeddings)
                    check_model_outputs(logits)
                if self.distance is not None:
                    distances = self.distance.distances(embeddings)
                    far = self.distance.out_of_domain(distances)
                if reference is not None:
                    distances = np.asarray(reference.distances(embeddings))
                    outside = distances > reference.threshold
            t_inf = clock()
            probs = softmax(logits, self._card.temperature)
            results = classify(probs, self._card.labels, self._card.non_disease_labels,
                               config.top_k, self.unknown_threshold(), far)
            finding_threshold = self.finding_threshold()
            scores = finding_scores(probs, self._card.labels, self._card.non_disease_labels,
                                    self._card.finding_score)
            detections = tuple(
                Detection(box_xyxy_px=(int(box[0]), int(box[1]), int(box[2]), int(box[3])),
                          label=r.label,
                          label_index=r.label_index, score=r.score, top_k=r.top_k,
                          is_unknown=r.is_unknown, is_disease=r.is_disease,
                          is_finding=(r.is_disease
                                      and scores[row] >= finding_threshold),
                          vegetation_fraction=float(fractions[i]),
                          distance=None if distances is None else float(distances[row]),
                          finding_score=float(scores[row]),
                          leaf_area_fraction=None if leaf is None else float(leaf[i]),
                          out_of_domain=outside is not None and bool(outside[row]))
                for row, (box, r, i) in enumerate(zip(kept_boxes.tolist(), results,
                                                      keep.tolist())))
            t_post = clock()
            timings['inference'] = (t_inf - t_pre) * 1e3
            timings['postprocess'] = (t_post - t_inf) * 1e3
        height, width = frame.height_px, frame.width_px
        t_geo = clock()
        if fix_buffer is None:
            geotag = GeotagResult(None, REASON_NO_FIX_RECEIVED)
        else:
            geotag = fix_buffer.lookup(stamp_ns, config.max_fix_gap_s, config.max_fix_age_s,
                                       config.lever_arm_m, config.min_speed_for_heading_mps,
                                       config.heading_window_s)
        locator = self.locator
        positions: Tuple[Optional[GroundPosition], ...] = ()
        if locator is not None and any(d.is_finding for d in detections):
            positions = locator.locate(stamp_ns, geotag, detections, (height, width),
                                       fix_buffer)
        end = clock()
        timings['geotag'] = (end - t_geo) * 1e3
        timings['total'] = (end - start) * 1e3 + frame.tiling_ms + frame.preprocess_ms
        return FrameResult(stamp_ns=int(stamp_ns), frame_height_px=height,
                           frame_width_px=width, detections=detections,
                           tiles_total=frame.tiles_total,
                           tiles_gated=frame.tiles_total - len(kept_boxes),
                           geotag=geotag, timings_ms=timings, positions=positions)
