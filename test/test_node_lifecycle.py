"""
The managed node (``detector_lifecycle_node``), driven through the rclpy stand-in.

The stand-in's ``rclpy.lifecycle`` follows ros2/rclpy humble = jazzy
(rclpy/lifecycle/node.py, publisher.py) over rcl_lifecycle's default state machine:
transitions are asked through ``<node>/change_state`` as ``ros2 lifecycle set`` and
nav2's lifecycle manager ask them, a callback's return code decides the next state, and
a lifecycle publisher drops what is published while it is deactivated (the stand-in
counts such attempts in ``world.dropped_inactive``).
"""

import threading
import time
from typing import Any, List

import pytest

from leaf_disease_ros.perception.errors import ModelLoadError
from leaf_disease_ros.ros.messages import READY_PREFIX, START_FAILURE_PREFIX
import rclpy_standin
from test_node_wiring import mosaic_of, NS, overrides, send_frame, T0, wait_until

pytest.importorskip('rosbags', reason='the message definitions come from rosbags')

NODE = '/detector_node'
OUTPUTS = {f'{NODE}/detections', f'{NODE}/detections/fix', f'{NODE}/geo_detections',
           f'{NODE}/label_info', f'{NODE}/utm_zone', f'{NODE}/debug_image', '/diagnostics'}


@pytest.fixture(params=['humble', 'jazzy'])
def world(request, monkeypatch):
    """Return the installed rclpy stand-in (Humble or Jazzy definitions), clock at T0."""
    installed = rclpy_standin.install(monkeypatch, request.param)
    installed.ros_time_ns = T0 + NS // 2
    return installed


@pytest.fixture(scope='module')
def mosaic(leaf_images) -> Any:
    """Return test_node_wiring's frame of six real leaves."""
    return mosaic_of(leaf_images)


def managed(world: Any, tiny_model_path: str, **values: Any) -> Any:
    """Return a DetectorLifecycleNode (unconfigured) for the tiny model."""
    from leaf_disease_ros.ros import node as node_module

    return node_module.DetectorLifecycleNode(
        parameter_overrides=overrides(world, tiny_model_path, **values))


def backends_loaded(monkeypatch: Any) -> List[Any]:
    """Record every backend the node loads (to check it is closed)."""
    from leaf_disease_ros.ros import node as node_module

    loaded: List[Any] = []
    real = node_module.load_backend

    def load(*args: Any, **kwargs: Any) -> Any:
        backend = real(*args, **kwargs)
        loaded.append(backend)
        real_close = backend.close

        def close() -> None:
            backend.closed_by_node = True
            real_close()

        backend.close = close
        return backend

    monkeypatch.setattr(node_module, 'load_backend', load)
    return loaded


def published(world: Any, topic: str) -> int:
    """Return how many messages ``topic`` has had."""
    return len(world.published.get(topic, []))


def stop(node: Any) -> None:
    """Close and destroy the node."""
    node.close()
    node.destroy_node()


def test_transitions_create_and_release_what_each_state_needs(world, tiny_model_path, mosaic,
                                                              monkeypatch):
    loaded = backends_loaded(monkeypatch)
    node = managed(world, tiny_model_path)
    try:
        assert world.lifecycle_state(NODE) == 'unconfigured'
        assert f'{NODE}/enable' in world.services and not loaded
        assert not world.publishers and not world.subscriptions and not world.timers
        # a transition the state does not offer is refused (rcl's state machine)
        assert not world.change_state(NODE, 'activate')
        assert world.lifecycle_state(NODE) == 'unconfigured'

        assert world.change_state(NODE, 'configure')
        assert world.lifecycle_state(NODE) == 'inactive'
        assert len(loaded) == 1 and set(world.publishers) == OUTPUTS
        assert not any(p.is_activated for p in world.publishers.values())
        assert not world.subscriptions and not world.timers and node._worker.is_alive()
        assert not world.published and not world.dropped_inactive

        assert world.change_state(NODE, 'activate')
        assert world.lifecycle_state(NODE) == 'active'
        assert all(p.is_activated for p in world.publishers.values())
        assert set(world.subscriptions) == {'/image', '/fix', '/camera_info'} and world.timers
        assert published(world, f'{NODE}/label_info') == 1
        assert any(t.startswith(READY_PREFIX) for t in world.log_texts('info'))
        send_frame(world, mosaic, T0)
        world.wait_for(f'{NODE}/detections', 1)

        assert world.change_state(NODE, 'deactivate')
        assert world.lifecycle_state(NODE) == 'inactive'
        assert not world.subscriptions and not world.timers
        assert not any(p.is_activated for p in world.publishers.values())
        assert node._worker.is_alive() and not getattr(loaded[0], 'closed_by_node', False)

        assert world.change_state(NODE, 'activate')  # the same model, no reload
        send_frame(world, mosaic, T0 + NS)
        world.wait_for(f'{NODE}/detections', 2)
        assert len(loaded) == 1 and not world.dropped_inactive

        assert world.change_state(NODE, 'deactivate')
        assert world.change_state(NODE, 'cleanup')
        assert world.lifecycle_state(NODE) == 'unconfigured'
        assert loaded[0].closed_by_node and node._backend is None and node._worker is None
        assert not world.publishers and not world.subscriptions and not world.timers

        # configure again: parameters are declared once, everything else made anew
        assert world.change_state(NODE, 'configure')
        assert world.change_state(NODE, 'activate')
        send_frame(world, mosaic, T0 + 2 * NS)
        world.wait_for(f'{NODE}/detections', 3)
        assert len(loaded) == 2 and not world.dropped_inactive
        assert not world.log_texts('error')
    finally:
        stop(node)


@pytest.mark.parametrize('start_from', ['unconfigured', 'inactive', 'active'])
def test_shutdown_from_any_state_releases_everything(world, tiny_model_path, monkeypatch,
                                                     start_from):
    loaded = backends_loaded(monkeypatch)
    node = managed(world, tiny_model_path)
    try:
        for label in {'unconfigured': [], 'inactive': ['configure'],
                      'active': ['configure', 'activate']}[start_from]:
            assert world.change_state(NODE, label)
        assert world.lifecycle_state(NODE) == start_from
        assert world.change_state(NODE, 'shutdown')
        assert world.lifecycle_state(NODE) == 'finalized'
        assert all(b.closed_by_node for b in loaded) and node._backend is None
        assert not world.publishers and not world.subscriptions and not world.timers
    finally:
        stop(node)


def test_a_failing_configure_returns_failure_with_the_reason(world, tiny_model_path, tmp_path):
    node = managed(world, tiny_model_path, model_path=str(tmp_path / 'none.onnx'))
    try:
        for _ in range(2):  # and again: the same answer, not an exception
            assert not world.change_state(NODE, 'configure')
            assert world.lifecycle_state(NODE) == 'unconfigured'
            assert not world.publishers and node._worker is None
        errors = world.log_texts('error')
        assert len(errors) == 2 and START_FAILURE_PREFIX in errors[0]
        assert 'none.onnx does not exist' in errors[0] and 'fix: set model_path' in errors[0]
        assert world.change_state(NODE, 'shutdown')
        assert world.lifecycle_state(NODE) == 'finalized'
    finally:
        stop(node)


def test_a_configure_failing_after_the_model_loaded_releases_it(world, tiny_model_path,
                                                                tmp_path, monkeypatch):
    loaded = backends_loaded(monkeypatch)
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    node = managed(world, tiny_model_path, live_map_dir=str(blocker / 'map'))
    try:
        assert not world.change_state(NODE, 'configure')
        assert world.lifecycle_state(NODE) == 'unconfigured'
        assert len(loaded) == 1 and loaded[0].closed_by_node
        assert not world.publishers and node._worker is None
        assert 'live_map_dir' in world.log_texts('error')[0]
    finally:
        stop(node)


def test_configure_can_be_retried_after_a_passing_failure(world, tiny_model_path, monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    real = node_module.load_backend
    calls: List[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ModelLoadError('the GPU is busy')
        return real(*args, **kwargs)

    monkeypatch.setattr(node_module, 'load_backend', flaky)
    node = managed(world, tiny_model_path)
    try:
        assert not world.change_state(NODE, 'configure')
        assert world.change_state(NODE, 'configure')
        assert world.change_state(NODE, 'activate')
        assert world.lifecycle_state(NODE) == 'active'
    finally:
        stop(node)


def test_a_bug_in_configure_is_an_error_that_ends_unconfigured(world, tiny_model_path,
                                                               monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    loaded = backends_loaded(monkeypatch)

    def bug(self: Any) -> float:
        raise ZeroDivisionError('a bug')

    monkeypatch.setattr(node_module.DetectorNode, '_warm_up', bug)
    node = managed(world, tiny_model_path)
    try:
        assert not world.change_state(NODE, 'configure')
        assert node._state_machine.history[-3:] == ['configuring', 'errorprocessing',
                                                    'unconfigured']
        assert any('ZeroDivisionError: a bug' in t for t in world.log_texts('error'))
        assert loaded[0].closed_by_node and not world.publishers and node._worker is None
    finally:
        stop(node)


def _block_processing(node: Any, monkeypatch: Any) -> Any:
    """Make the worker wait inside ``Detector.process_prepared``; return (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = node._detector.process_prepared

    def process(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(node._detector, 'process_prepared', process)
    return entered, release


def test_a_frame_in_flight_at_deactivate_is_never_published(world, tiny_model_path, mosaic,
                                                            monkeypatch):
    node = managed(world, tiny_model_path)
    try:
        assert world.change_state(NODE, 'configure') and world.change_state(NODE, 'activate')
        entered, release = _block_processing(node, monkeypatch)
        send_frame(world, mosaic, T0)
        assert entered.wait(30.0)
        assert world.change_state(NODE, 'deactivate')  # returns while the frame is classified
        release.set()
        wait_until(lambda: node._stats.ignored_paused == 1)
        time.sleep(0.1)
        assert published(world, f'{NODE}/detections') == 0
        assert published(world, f'{NODE}/geo_detections') == 0
        assert not world.dropped_inactive  # not even tried
        assert node._stats.processed == 0
    finally:
        stop(node)


def test_deactivate_waits_for_a_frame_being_published(world, tiny_model_path, mosaic):
    node = managed(world, tiny_model_path)
    try:
        assert world.change_state(NODE, 'configure') and world.change_state(NODE, 'activate')
        publisher = world.publishers[f'{NODE}/detections']
        entered, release = threading.Event(), threading.Event()
        real_publish = publisher.publish

        def slow_publish(msg: Any) -> None:
            entered.set()
            assert release.wait(30.0)
            real_publish(msg)

        publisher.publish = slow_publish
        send_frame(world, mosaic, T0)
        assert entered.wait(30.0)
        results: List[bool] = []
        deactivating = threading.Thread(
            target=lambda: results.append(world.change_state(NODE, 'deactivate')))
        deactivating.start()
        deactivating.join(0.3)
        assert deactivating.is_alive()  # held until the frame's publication is finished
        release.set()
        deactivating.join(30.0)
        assert results == [True]
        for topic in (f'{NODE}/detections', f'{NODE}/detections/fix',
                      f'{NODE}/geo_detections'):
            assert published(world, topic) == 1, topic  # the whole frame, none after
        assert not world.dropped_inactive
    finally:
        stop(node)


def test_enable_is_a_pause_inside_the_active_state(world, tiny_model_path, mosaic):
    node = managed(world, tiny_model_path)
    set_bool = world.modules['std_srvs.srv'].SetBool
    try:
        assert world.change_state(NODE, 'configure') and world.change_state(NODE, 'activate')
        assert world.call(f'{NODE}/enable', set_bool.Request(data=False)).success
        # deactivate and activate keep the operator's pause
        assert world.change_state(NODE, 'deactivate') and world.change_state(NODE, 'activate')
        send_frame(world, mosaic, T0)
        assert node._stats.ignored_paused == 1 and node._stats.received == 1
        # asked while inactive: answered, applied once activated
        assert world.change_state(NODE, 'deactivate')
        response = world.call(f'{NODE}/enable', set_bool.Request(data=True))
        assert response.success and 'applies once it is activated' in response.message
        assert world.change_state(NODE, 'activate')
        send_frame(world, mosaic, T0 + NS)
        world.wait_for(f'{NODE}/detections', 1)
        # cleanup + configure starts afresh: start_enabled again
        assert world.call(f'{NODE}/enable', set_bool.Request(data=False)).success
        for label in ('deactivate', 'cleanup', 'configure', 'activate'):
            assert world.change_state(NODE, label)
        send_frame(world, mosaic, T0 + 2 * NS)
        world.wait_for(f'{NODE}/detections', 2)
    finally:
        stop(node)


def test_main_lifecycle_waits_unconfigured_and_exits_0(world, tiny_model_path):
    from leaf_disease_ros.ros import entry_point

    def interrupt() -> None:
        raise KeyboardInterrupt

    world.spin_hook = interrupt
    code = entry_point.main_lifecycle(['--ros-args', '-p', f'model_path:={tiny_model_path}',
                                       '-p', 'backend:=onnxruntime'])
    node = world.nodes[-1]
    assert code == 0 and node.destroyed and type(node).__name__ == 'DetectorLifecycleNode'
    assert node._state_machine.label == 'unconfigured' and node._backend is None
    assert any('unconfigured: waiting for a lifecycle manager' in t
               for t in world.log_texts('info'))
