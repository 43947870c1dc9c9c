"""
The node decodes the newest frame while the previous one infers (ros/decode_stage.py).

Through the rclpy stand-in with a scripted backend whose inference waits on a gate, so
each test knows which frame is being classified while the next arrives; plus the
stage alone (no ROS).
"""

import threading
import time
from typing import Any, List, Tuple

import numpy as np
import pytest

from leaf_disease_ros.ros.decode_stage import DecodeStage
import rclpy_standin
from scripted_backend import colour_card, ColourBackend, tiles
from test_node_wiring import diagnostics, NS, overrides, send_frame, T0, wait_until

pytest.importorskip('rosbags', reason='the message definitions come from rosbags')

NODE = '/detector_node'


class GatedBackend(ColourBackend):
    """The colour backend, whose inference waits for :attr:`gate` (open at first)."""

    def __init__(self, card: Any) -> None:
        super().__init__(card)
        self.gate = threading.Event()
        self.gate.set()  # the node's warm-up frame passes
        self.inferring = threading.Event()
        self.busy = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Mark the backend busy, wait for the gate, return the colour logits."""
        self.busy = True
        self.inferring.set()
        try:
            if not self.gate.wait(30.0):
                raise TimeoutError('the test never opened the gate')
            return super().infer(batch)
        finally:
            self.busy = False


@pytest.fixture()
def world(monkeypatch):
    """Return the installed rclpy stand-in (Humble definitions), clock at T0."""
    installed = rclpy_standin.install(monkeypatch, 'humble')
    installed.ros_time_ns = T0 + NS // 2
    return installed


@pytest.fixture()
def backend(monkeypatch, tmp_path):
    """Return the gated backend the node will load instead of the model."""
    from leaf_disease_ros.ros import node as node_module

    gated = GatedBackend(colour_card(str(tmp_path)))
    monkeypatch.setattr(node_module, 'load_backend', lambda *args, **kwargs: gated)
    return gated


def params(world: Any, tiny_model_path: str) -> List[Any]:
    """Return the overrides: every tile classified (no vegetation gate)."""
    return overrides(world, tiny_model_path, min_vegetation_fraction=0.0,
                     ground_positions=False)


def record_decodes(node: Any, backend: GatedBackend, monkeypatch: Any,
                   hold: Any = None) -> List[Tuple[int, bool, bool]]:
    """Record (stamp ns, backend busy at start, at end) of every decode of the node.

    ``hold``: an (entered, release) pair of events; the decode of the first frame
    after it is installed waits for ``release``.
    """
    from leaf_disease_ros.ros.conversions import stamp_to_ns

    decodes: List[Tuple[int, bool, bool]] = []
    real = node._decode

    def decode(msg: Any) -> Any:
        busy_at_start = backend.busy
        if hold is not None and not hold[0].is_set():
            hold[0].set()
            assert hold[1].wait(30.0)
        frame = real(msg)
        decodes.append((stamp_to_ns(msg.header.stamp), busy_at_start, backend.busy))
        return frame

    monkeypatch.setattr(node, '_decode', decode)
    return decodes


def labels_of(msg: Any) -> List[str]:
    """Return the label of each tile of a Detection2DArray, left to right."""
    ordered = sorted(msg.detections, key=lambda d: d.bbox.center.position.x)
    return [d.results[0].hypothesis.class_id for d in ordered]


def test_the_next_frame_is_decoded_while_the_previous_one_infers(world, tiny_model_path,
                                                                 backend, monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    node = node_module.DetectorNode(parameter_overrides=params(world, tiny_model_path))
    try:
        decodes = record_decodes(node, backend, monkeypatch)
        backend.gate.clear()
        frames = {T0: tiles(['black_rot', 'black_rot']),
                  T0 + NS: tiles(['esca', 'esca']),
                  T0 + 2 * NS: tiles(['healthy', 'healthy']),
                  T0 + 3 * NS: tiles(['black_rot', 'esca'])}
        stamps = sorted(frames)
        send_frame(world, frames[stamps[0]], stamps[0])
        assert backend.inferring.wait(30.0)  # frame 0 is being classified
        send_frame(world, frames[stamps[1]], stamps[1])
        wait_until(lambda: len(decodes) == 2)
        # frame 1 was decoded from start to end while frame 0's inference waited
        assert decodes[1] == (stamps[1], True, True) and node._stats.processed == 0
        # one stage deep: frame 1 waits decoded, frame 2 waits in the mailbox and is
        # replaced by frame 3 (dropped, never decoded)
        send_frame(world, frames[stamps[2]], stamps[2])
        send_frame(world, frames[stamps[3]], stamps[3])
        assert node._mailbox.dropped == 1
        time.sleep(0.2)
        assert len(decodes) == 2
        backend.gate.set()
        detections = world.wait_for(f'{NODE}/detections', 3)
        fixes = world.wait_for(f'{NODE}/detections/fix', 3)
        kept = [stamps[0], stamps[1], stamps[3]]
        assert [stamp for stamp, _, _ in decodes] == kept
        for msg in detections + fixes:  # in order, each with its own image header
            assert msg.header.frame_id == 'camera'
        assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in detections] == \
            [divmod(stamp, NS) for stamp in kept]
        assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in fixes] == \
            [divmod(stamp, NS) for stamp in kept]
        # each output holds its own frame's tiles (the decoded frame and header paired)
        assert [labels_of(m) for m in detections] == [
            ['black_rot', 'black_rot'], ['esca', 'esca'], ['black_rot', 'esca']]
        values = diagnostics(world)[f'{NODE}: detector']
        assert values['frames_dropped'] == '1' and values['frames_processed'] == '3'
    finally:
        backend.gate.set()
        node.close()
        node.destroy_node()
    assert not node._mailbox.alive and node._worker is None


def test_a_frame_decoded_across_a_deactivate_is_never_published(world, tiny_model_path,
                                                                backend, monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    node = node_module.DetectorLifecycleNode(parameter_overrides=params(world, tiny_model_path))
    hold = (threading.Event(), threading.Event())
    try:
        assert world.change_state(NODE, 'configure') and world.change_state(NODE, 'activate')
        decodes = record_decodes(node, backend, monkeypatch, hold)
        send_frame(world, tiles(['esca']), T0)
        assert hold[0].wait(30.0)  # frame 0 is being decoded
        assert world.change_state(NODE, 'deactivate')
        assert world.change_state(NODE, 'activate')
        hold[1].set()  # its decode ends after the node was active again
        wait_until(lambda: node._mailbox.discarded == 1)
        send_frame(world, tiles(['black_rot']), T0 + NS)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        assert (detections.header.stamp.sec, detections.header.stamp.nanosec) == \
            divmod(T0 + NS, NS)
        assert labels_of(detections) == ['black_rot']
        assert [stamp for stamp, _, _ in decodes] == [T0, T0 + NS]
        assert node._stats.processed == 1 and not world.dropped_inactive
    finally:
        hold[1].set()
        node.close()
        node.destroy_node()


# --- the stage alone ------------------------------------------------------------------------

def test_a_decode_error_reaches_the_worker_with_its_message_and_the_next_frame_goes_on():
    def decode(text: str) -> str:
        if text == 'bad':
            raise ValueError('cannot decode bad')
        return text.upper()

    stage: DecodeStage[str, str] = DecodeStage(decode)
    stage.start()
    try:
        stage.put('bad')
        failed = stage.take(30.0)
        assert failed is not None and failed.message == 'bad'
        with pytest.raises(ValueError, match='cannot decode bad'):
            failed.result()
        stage.put('good')
        decoded = stage.take(30.0)
        assert decoded is not None and decoded.result() == 'GOOD'
        assert stage.decoded == 2 and stage.dropped == 0
    finally:
        stage.close()
    assert not stage.alive and stage.take(0.0) is None and not stage.put('late')


def test_clear_discards_the_decoded_frame_and_the_waiting_message():
    stage: DecodeStage[int, int] = DecodeStage(lambda n: n * 10)
    stage.start()
    try:
        stage.put(1)
        wait_until(lambda: stage.decoded == 1)  # 10 waits for the worker
        stage.put(2)  # waits in the mailbox: one stage deep
        time.sleep(0.1)
        assert stage.decoded == 1
        stage.clear()
        assert stage.discarded == 2 and stage.take(0.05) is None
        stage.put(3)
        decoded = stage.take(30.0)
        assert decoded is not None and decoded.result() == 30
    finally:
        stage.close()


def test_a_bug_in_the_decoding_stops_the_node_with_the_traceback(world, tiny_model_path,
                                                                 backend, monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    node = node_module.DetectorNode(parameter_overrides=params(world, tiny_model_path))
    try:
        def broken(msg: Any) -> Any:
            raise KeyError('a decode bug')

        monkeypatch.setattr(node, '_decode', broken)
        send_frame(world, tiles(['esca']), T0)
        wait_until(lambda: not node.context.ok())
        assert "KeyError: 'a decode bug'" in node.fatal_error
        assert 'in broken' in node.fatal_error  # the decode thread's frames are kept
    finally:
        node.close()
        node.destroy_node()
