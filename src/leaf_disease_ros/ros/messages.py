"""
The operator-facing texts of the detector node, built without ROS.

An operator sees the node through a handful of log lines; they are composed here so
they are tested and ``docs/`` can quote them:

- :func:`ready_message`: the one INFO line that says the node is up (``detector ready:``);
- :func:`start_failure_message`: why the node cannot start and the command or
  setting that fixes it (``detector cannot start:``);
- :func:`no_image_message`: the one-time warning when no image has arrived, with the
  likely cause found from the publishers on the topic (none: remapping; another
  message type: image_transport; incompatible QoS: reliability);
- :func:`unsupported_encoding_message`, :func:`time_jump_message`.
"""

from dataclasses import dataclass
from typing import Sequence

from leaf_disease_ros.perception.errors import (BackendUnavailableError, ConfigError,
                                                EngineMismatchError, ModelCardError,
                                                ModelLoadError)

NODE_NAME = 'detector_node'
READY_PREFIX = 'detector ready:'
START_FAILURE_PREFIX = 'detector cannot start:'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
RELIABLE = 'reliable'
BEST_EFFORT = 'best_effort'
EXPORT_COMMAND = 'leaf-disease-export RUN_DIR --out engines/<name>.onnx'


def ready_message(*, model_id: str, backend: str, providers: Sequence[str], warmup_ms: float,
                  image_topic: str, image_type: str, reliability: str, depth: int,
                  fix_topic: str, detections_topic: str) -> str:
    """
    Return the INFO line logged once the node subscribes.

    Example: ``detector ready: model leaf_lite0_field@0123456789ab on onnxruntime
    (CPUExecutionProvider), warm-up 41 ms; images sensor_msgs/msg/Image on
    /camera/image_raw (best_effort, depth 1), fixes on /fix; detections on
    /detector_node/detections``.
    """
    runtime = f'{backend} ({", ".join(providers)})' if providers else backend
    return (f'{READY_PREFIX} model {model_id} on {runtime}, warm-up {warmup_ms:.0f} ms; '
            f'images {image_type} on {image_topic} ({reliability}, depth {depth}), fixes on '
            f'{fix_topic}; detections on {detections_topic}')


def start_failure_message(exc: Exception) -> str:
    """
    Return the FATAL line for an error raised while the node starts.

    The error's own text names the file or parameter and the reason; a fix is added
    where the text does not already say how (a parameter to set, a command to run).
    """
    text = str(exc)
    hint = ''
    if isinstance(exc, ConfigError) and exc.reason.startswith('unknown parameter'):
        hint = (f'correct or remove {exc.parameter} in the params file (launch argument '
                'params_file:=...) or in --ros-args -p')
    elif isinstance(exc, ConfigError):
        hint = (f'set a valid {exc.parameter} in the params file (launch argument '
                f'params_file:=...) or with --ros-args -p {exc.parameter}:=VALUE; the '
                'parameter table is in docs/parameters.md')
    elif isinstance(exc, ModelCardError):
        hint = ('a model needs its card (the .json beside the .onnx) from the same export: '
                f'check model_path, or export both again with {EXPORT_COMMAND}')
    elif isinstance(exc, EngineMismatchError):
        if 'leaf-disease-build-engine' not in text:
            hint = ('rebuild the engine on this machine with leaf-disease-build-engine '
                    '<model>.onnx, or use backend onnxruntime')
    elif isinstance(exc, BackendUnavailableError):
        if 'install' not in text:
            hint = 'install the runtime, or use backend onnxruntime'
    elif isinstance(exc, ModelLoadError):
        if 'leaf-disease-' not in text and 'install' not in text:
            hint = ('set model_path (launch argument model:=/path/to/model.onnx) to an '
                    'existing model, or leave it empty for the shipped '
                    'engines/leaf_lite0_field.onnx (rebuild the package with colcon build '
                    '--packages-select leaf_disease_ros if it is missing)')
    return f'{START_FAILURE_PREFIX} {text}' + (f' -- fix: {hint}' if hint else '')


@dataclass(frozen=True)
class EndpointQos:
    """A publisher on a topic, as the ROS graph reports it (policies in lower case)."""

    node: str          # fully qualified node name
    topic_type: str    # e.g. sensor_msgs/msg/Image
    reliability: str   # reliable, best_effort, ...
    durability: str    # volatile, transient_local, ...


def no_image_message(*, topic: str, image_type: str, reliability: str, depth: int,
                     waited_s: float, publishers: Sequence[EndpointQos]) -> str:
    """
    Return the one-time warning when no image arrived within ``waited_s``.

    :param topic: the subscription's resolved topic name.
    :param image_type: the type subscribed to (:data:`IMAGE_TYPE` or
        :data:`COMPRESSED_IMAGE_TYPE`).
    :param reliability: the subscription's reliability (``reliable``/``best_effort``).
    :param depth: the subscription's queue depth.
    :param waited_s: seconds since the subscription was made.
    :param publishers: the publishers the graph reports on ``topic``.
    """
    head = (f'no image received on {topic} after {waited_s:.0f} s (subscription: '
            f'{image_type}, QoS {reliability}, depth {depth}, volatile): ')
    if not publishers:
        key = 'image/compressed' if image_type == COMPRESSED_IMAGE_TYPE else 'image'
        return head + ('nobody publishes on it. Remap the input to the camera topic '
                       '(launch argument image_topic:=/camera/image_raw, or --ros-args -r '
                       f'{key}:=/camera/image_raw); `ros2 topic list -t` lists the image '
                       'topics')
    wrong_type = [p for p in publishers if p.topic_type != image_type]
    if wrong_type:
        other = wrong_type[0]
        transport = 'compressed' if other.topic_type == COMPRESSED_IMAGE_TYPE else 'raw'
        return head + (f'{other.node} publishes {other.topic_type} on it; set '
                       f'image_transport {transport} (and image_topic to the topic '
                       'without /compressed)'
                       if other.topic_type in (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
                       else f'{other.node} publishes {other.topic_type} on it, not an image')
    if reliability == RELIABLE:
        best_effort = [p.node for p in publishers if p.reliability == BEST_EFFORT]
        if best_effort:
            return head + (f'{", ".join(best_effort)} offer(s) best_effort, which a '
                           'reliable subscription never receives: set image_qos_reliability '
                           'best_effort')
    nodes = ', '.join(sorted({p.node for p in publishers}))
    return head + (f'{len(publishers)} publisher(s) with compatible QoS ({nodes}) but '
                   f'nothing arrived: is the camera streaming (`ros2 topic hz {topic}`)? '
                   'Across machines, check ROS_DOMAIN_ID and that discovery reaches this '
                   'host')


def unsupported_encoding_message(encoding: str, error: str) -> str:
    """Return the (throttled) warning for an image cv_bridge cannot convert to bgr8."""
    return (f'cannot convert an image in encoding {encoding!r} to bgr8 ({error}); the frame '
            'is dropped. Publish an 8-bit colour or mono image (bgr8, rgb8, mono8, ...) or '
            'use image_transport compressed')


def time_jump_message(stream: str, jump_s: float) -> str:
    """Return the warning when the stamps of ``stream`` jump back by ``jump_s`` seconds."""
    return (f'{stream} stamps jumped back by {jump_s:.1f} s (a bag that loops, or a '
            'restarted clock): GPS fixes of the old timeline are forgotten')


def cv_bridge_failure_message(error: str, numpy_version: str) -> str:
    """
    Return why cv_bridge cannot be used and how to fix it.

    The classic case is ROS 2 Humble, whose cv_bridge is compiled against NumPy 1.x,
    meeting a NumPy 2 installed with pip: its import fails with "A module that was
    compiled using NumPy 1.x cannot be run in NumPy 2".
    """
    if int(numpy_version.split('.')[0]) >= 2:
        return (f'cv_bridge cannot be used with NumPy {numpy_version}: {error}. The cv_bridge '
                'of ROS 2 Humble is built against NumPy 1.x: install NumPy 1.x for this '
                "Python (pip3 install 'numpy<2'), or remove the pip NumPy so python3-numpy "
                'from apt is used (pip3 uninstall numpy)')
    return (f'cv_bridge cannot be used: {error}. Install it with rosdep install --from-paths '
            'src --ignore-src -y (or sudo apt install ros-$ROS_DISTRO-cv-bridge) and source '
            'the ROS 2 setup file')
