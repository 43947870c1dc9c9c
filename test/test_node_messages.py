"""The operator-facing texts of the node: ready line, start failures, no-image hints."""

import os

import pytest

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.errors import (BackendUnavailableError, ConfigError,
                                                EngineMismatchError, ModelCardError,
                                                ModelLoadError)
from leaf_disease_ros.ros.messages import (COMPRESSED_IMAGE_TYPE, cv_bridge_failure_message,
                                           EndpointQos, IMAGE_TYPE, no_image_message,
                                           ready_message, READY_PREFIX, start_failure_message,
                                           START_FAILURE_PREFIX, time_jump_message,
                                           unsupported_encoding_message)

TOPIC = '/camera/image_raw'


def test_ready_message_exact_text():
    text = ready_message(model_id='leaf_lite0_field@0123456789ab', backend='onnxruntime',
                         providers=['CPUExecutionProvider'], warmup_ms=41.2,
                         image_topic=TOPIC, image_type=IMAGE_TYPE, reliability='best_effort',
                         depth=1, fix_topic='/fix',
                         detections_topic='/detector_node/detections')
    assert text == (
        'detector ready: model leaf_lite0_field@0123456789ab on onnxruntime '
        '(CPUExecutionProvider), warm-up 41 ms; images sensor_msgs/msg/Image on '
        '/camera/image_raw (best_effort, depth 1), fixes on /fix; detections on '
        '/detector_node/detections')
    assert text.startswith(READY_PREFIX)


def test_config_error_at_start_names_the_parameter_and_how_to_set_it():
    text = start_failure_message(ConfigError('tile_stride_px', '300 is larger than '
                                                               'tile_size_px 256'))
    assert text.startswith(f"{START_FAILURE_PREFIX} parameter 'tile_stride_px': 300 is larger")
    assert '-p tile_stride_px:=VALUE' in text and 'params_file:=' in text


def test_model_errors_get_a_fix_unless_they_carry_one():
    card = start_failure_message(ModelCardError('/m/x.json', 'onnx_sha256', 'mismatch'))
    assert '/m/x.json' in card and 'leaf-disease-export' in card
    missing = start_failure_message(ModelLoadError('model file /m/x.onnx does not exist'))
    assert '/m/x.onnx' in missing and 'model:=' in missing
    engine = start_failure_message(EngineMismatchError('engine built for TensorRT 8.6'))
    assert 'leaf-disease-build-engine' in engine
    with_command = ('no TensorRT engine for /m/x.onnx; build one with: '
                    'leaf-disease-build-engine /m/x.onnx')
    assert start_failure_message(ModelLoadError(with_command)) == (
        f'{START_FAILURE_PREFIX} {with_command}')
    runtime = 'onnxruntime is not installed: pip install onnxruntime'
    assert start_failure_message(BackendUnavailableError(runtime)) == (
        f'{START_FAILURE_PREFIX} {runtime}')


def test_real_factory_errors_name_the_file_and_the_fix(tmp_path, tiny_model_copy):
    missing = str(tmp_path / 'nowhere.onnx')
    with pytest.raises(ModelLoadError) as info:
        load_backend(missing, 'onnxruntime')
    text = start_failure_message(info.value)
    assert missing in text and 'model:=' in text
    os.remove(os.path.splitext(tiny_model_copy)[0] + '.json')
    with pytest.raises(ModelCardError) as info:
        load_backend(tiny_model_copy, 'onnxruntime')
    text = start_failure_message(info.value)
    assert os.path.splitext(tiny_model_copy)[0] + '.json' in text
    assert 'leaf-disease-export' in text


def test_no_publisher_points_at_the_remapping():
    text = no_image_message(topic=TOPIC, image_type=IMAGE_TYPE, reliability='best_effort',
                            depth=1, waited_s=5.0, publishers=[])
    assert text.startswith(f'no image received on {TOPIC} after 5 s (subscription: '
                           'sensor_msgs/msg/Image, QoS best_effort, depth 1, volatile): ')
    assert 'nobody publishes on it' in text and 'image:=/camera/image_raw' in text
    text = no_image_message(topic=TOPIC + '/compressed', image_type=COMPRESSED_IMAGE_TYPE,
                            reliability='best_effort', depth=1, waited_s=5.0, publishers=[])
    assert 'image/compressed:=' in text


def test_a_publisher_of_another_type_points_at_image_transport():
    compressed = EndpointQos('/camera', COMPRESSED_IMAGE_TYPE, 'reliable', 'volatile')
    text = no_image_message(topic=TOPIC, image_type=IMAGE_TYPE, reliability='best_effort',
                            depth=1, waited_s=5.0, publishers=[compressed])
    assert '/camera publishes sensor_msgs/msg/CompressedImage' in text
    assert 'image_transport compressed' in text
    raw = EndpointQos('/camera', IMAGE_TYPE, 'reliable', 'volatile')
    text = no_image_message(topic=TOPIC, image_type=COMPRESSED_IMAGE_TYPE,
                            reliability='best_effort', depth=1, waited_s=5.0,
                            publishers=[raw])
    assert 'image_transport raw' in text


def test_a_best_effort_publisher_and_a_reliable_subscription_is_named():
    pub = EndpointQos('/camera', IMAGE_TYPE, 'best_effort', 'volatile')
    text = no_image_message(topic=TOPIC, image_type=IMAGE_TYPE, reliability='reliable',
                            depth=1, waited_s=5.0, publishers=[pub])
    assert '/camera offer(s) best_effort' in text
    assert 'image_qos_reliability best_effort' in text


def test_compatible_publishers_point_at_the_camera_and_the_network():
    pub = EndpointQos('/camera', IMAGE_TYPE, 'reliable', 'volatile')
    for reliability in ('best_effort', 'reliable'):
        text = no_image_message(topic=TOPIC, image_type=IMAGE_TYPE, reliability=reliability,
                                depth=1, waited_s=5.0, publishers=[pub])
        assert '1 publisher(s) with compatible QoS (/camera)' in text
        assert f'ros2 topic hz {TOPIC}' in text and 'ROS_DOMAIN_ID' in text


def test_cv_bridge_failure_under_numpy_2_says_which_numpy_to_install():
    text = cv_bridge_failure_message('numpy.core.multiarray failed to import', '2.1.3')
    assert 'NumPy 2.1.3' in text and "pip3 install 'numpy<2'" in text
    text = cv_bridge_failure_message("No module named 'cv_bridge'", '1.26.4')
    assert 'rosdep install' in text and 'numpy<2' not in text


def test_unsupported_encoding_and_time_jump_texts():
    text = unsupported_encoding_message('16UC1', '[16UC1] is not a color format')
    assert "encoding '16UC1'" in text and 'is not a color format' in text
    assert 'jumped back by 61.5 s' in time_jump_message('fix', 61.5)
