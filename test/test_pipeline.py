"""The Detector: batching equals one-by-one, chunking, gating, thresholds, timings."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from leaf_disease_ros.geo.geotag import FixBuffer
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import ConfigError, FrameError, InferenceError
from leaf_disease_ros.perception.pipeline import Detector, STAGES
from leaf_disease_ros.perception.positions import Fix, REASON_INTERPOLATED

S = 1_000_000_000


class CountingBackend:
    """Wraps a real backend and records the batch size of every call."""

    def __init__(self, backend):
        self.backend = backend
        self.max_batch = backend.max_batch
        self.calls = []

    def infer(self, batch):
        """Record the call and run the real backend."""
        self.calls.append(batch.shape[0])
        return self.backend.infer(batch)


@pytest.fixture(scope='module')
def backend(tiny_model_path):
    """Return the tiny model on ONNX Runtime."""
    loaded = load_backend(tiny_model_path, 'onnxruntime')
    yield loaded
    loaded.close()


@pytest.fixture(scope='module')
def frame(leaf_images):
    """Return a 768x512 mosaic of six real leaves."""
    paths = [leaf_images[label][i] for i in (0, 2) for label in ('black_rot', 'esca', 'healthy')]
    images = [cv2.imread(p) for p in paths]
    return np.vstack([np.hstack(images[:3]), np.hstack(images[3:])])


def test_one_backend_call_per_frame(backend, frame):
    counting = CountingBackend(backend)
    result = Detector(counting, backend.card).process(frame, 1 * S)
    assert counting.calls == [6]
    assert result.tiles_total == 6 and result.tiles_gated == 0
    assert [d.box_xyxy_px for d in result.detections][:2] == [(0, 0, 256, 256),
                                                              (256, 0, 512, 256)]


def test_batching_equals_one_by_one(backend, frame):
    batched = Detector(backend, backend.card).process(frame, 1 * S)
    for detection in batched.detections:
        x0, y0, x1, y1 = detection.box_xyxy_px
        single = Detector(backend, backend.card, DetectorConfig(tiling='none')).process(
            np.ascontiguousarray(frame[y0:y1, x0:x1]), 1 * S)
        (alone,) = single.detections
        assert alone.label == detection.label
        assert alone.score == pytest.approx(detection.score, abs=1e-5)
        assert [s for _, s in alone.top_k] == pytest.approx([s for _, s in detection.top_k],
                                                            abs=1e-5)


def test_chunks_to_max_batch(backend, frame):
    counting = CountingBackend(backend)
    chunked = Detector(counting, backend.card, DetectorConfig(max_batch=4)).process(frame, S)
    assert counting.calls == [4, 2]
    whole = Detector(backend, backend.card).process(frame, S)
    assert [d.score for d in chunked.detections] == pytest.approx(
        [d.score for d in whole.detections], abs=1e-6)


def test_backend_max_batch_caps_chunks(backend, frame):
    counting = CountingBackend(backend)
    counting.max_batch = 5
    Detector(counting, backend.card, DetectorConfig(max_batch=16)).process(frame, S)
    assert counting.calls == [5, 1]


def test_gate_skips_non_vegetation(backend, frame):
    grey = frame.copy()
    grey[:256, 256:512] = 128  # one tile of bare soil
    counting = CountingBackend(backend)
    result = Detector(counting, backend.card).process(grey, S)
    assert result.tiles_gated == 1 and counting.calls == [5]
    assert (256, 0, 512, 256) not in [d.box_xyxy_px for d in result.detections]


def test_everything_gated_means_no_inference(backend):
    counting = CountingBackend(backend)
    result = Detector(counting, backend.card).process(np.full((512, 768, 3), 90, np.uint8), S)
    assert counting.calls == [] and result.detections == () and result.tiles_gated == 6


def test_unknown_threshold_from_card_or_parameter(backend, frame):
    card = replace(backend.card, unknown_threshold=0.99)
    from_card = Detector(backend, card).process(frame, S)
    assert all(d.is_unknown for d in from_card.detections)
    overridden = Detector(backend, card, DetectorConfig(unknown_threshold=0.0)).process(frame, S)
    assert not any(d.is_unknown for d in overridden.detections)


def test_findings_need_disease_and_score(backend, frame):
    loose = Detector(backend, backend.card, DetectorConfig(
        unknown_threshold=0.0, disease_score_threshold=0.0)).process(frame, S)
    assert loose.findings == tuple(d for d in loose.detections if d.is_disease)
    strict = Detector(backend, backend.card, DetectorConfig(
        unknown_threshold=0.0, disease_score_threshold=1.0)).process(frame, S)
    assert strict.findings == ()


def test_finding_threshold_from_card_or_parameter(backend, frame):
    config = DetectorConfig(unknown_threshold=0.0)  # disease_score_threshold -1: the card's
    strict_card = replace(backend.card, finding_threshold=1.0)
    assert Detector(backend, strict_card, config).process(frame, S).findings == ()
    loose_card = replace(backend.card, finding_threshold=0.0)
    loose = Detector(backend, loose_card, config).process(frame, S)
    assert loose.findings and loose.findings == tuple(d for d in loose.detections
                                                      if d.is_disease)
    overridden = Detector(backend, strict_card, replace(config, disease_score_threshold=0.0))
    assert overridden.finding_threshold() == 0.0
    assert overridden.process(frame, S).findings == loose.findings


class FixedBackend:
    """Stand-in backend: the same logits for every tile (to pin the decision rule)."""

    def __init__(self, card, logits):
        self.card = card
        self.max_batch = 64
        self.logits = np.asarray(logits, np.float32)

    def infer(self, batch):
        """Return the fixed logits for each tile of ``batch``."""
        return np.repeat(self.logits[None], len(batch), axis=0)


@pytest.mark.parametrize('rule, is_finding', [('top_label', False), ('disease_mass', True)])
def test_finding_score_rule_from_card(backend, frame, rule, is_finding):
    # black_rot 0.55, esca 0.43, healthy 0.02: surely diseased, unsure which disease.
    labels = backend.card.labels
    probs = np.full(len(labels), 1e-4)
    probs[labels.index('black_rot')] = 0.55
    probs[labels.index('esca')] = 0.43
    probs[labels.index('healthy')] = 0.02
    card = replace(backend.card, temperature=1.0, unknown_threshold=0.5,
                   finding_threshold=0.9, finding_score=rule)
    result = Detector(FixedBackend(card, np.log(probs)), card).process(frame, S)
    assert result.detections and all(d.label == 'black_rot' for d in result.detections)
    assert all(d.is_finding == is_finding for d in result.detections)
    expected = 0.98 if rule == 'disease_mass' else 0.55
    assert all(abs(d.finding_score - expected) < 1e-3 for d in result.detections)


def test_background_labels_are_never_diseases(backend, frame):
    config = DetectorConfig(unknown_threshold=0.0, disease_score_threshold=0.0)
    plain = Detector(backend, backend.card, config).process(frame, S)
    labels = {d.label for d in plain.findings}
    assert labels  # the tiny model calls some tiles diseased
    card = replace(backend.card, background_labels=tuple(sorted(labels)))
    result = Detector(backend, card, config).process(frame, S)
    assert [d.label for d in result.detections] == [d.label for d in plain.detections]
    assert result.findings == () and not any(d.is_disease for d in result.detections)


def test_live_config_update(backend, frame):
    detector = Detector(backend, backend.card)
    assert detector.process(frame, S).tiles_total == 6
    detector.update_config(DetectorConfig(tiling='none'))
    assert detector.process(frame, S).tiles_total == 1
    with pytest.raises(ConfigError, match='tile_stride_px'):
        detector.update_config(DetectorConfig(tile_size_px=128, tile_stride_px=256))


def test_geotag_and_timings(backend, frame):
    fixes = FixBuffer()
    fixes.add(Fix(S, 46.0, 7.0))
    fixes.add(Fix(S + S // 5, 46.00001, 7.0))
    result = Detector(backend, backend.card).process(frame, S + S // 10, fixes)
    assert result.geotag.reason == REASON_INTERPOLATED
    assert result.stamp_ns == S + S // 10
    assert set(result.timings_ms) == set(STAGES)
    assert result.timings_ms['total'] >= result.timings_ms['inference'] > 0.0


def test_bad_frame_is_a_frame_error(backend):
    with pytest.raises(FrameError):
        Detector(backend, backend.card).process(np.zeros((10, 10), np.uint8), S)


def test_backend_failure_is_an_inference_error(backend, frame):
    class Broken:
        max_batch = 16

        def infer(self, batch):
            raise InferenceError('device lost')

    with pytest.raises(InferenceError, match='device lost'):
        Detector(Broken(), backend.card).process(frame, S)
