"""docs/ stays in sync with the parameter table and quotes the node's exact texts."""

import importlib.util
import os

import pytest

from conftest import REPO_DIR
from leaf_disease_ros.inference.engine.commands import build_command, mismatch_message
from leaf_disease_ros.perception.config import PARAMETERS, PARAMETERS_BY_NAME
from leaf_disease_ros.perception.errors import (ConfigError, EngineMismatchError,
                                                LeafDiseaseError, ModelCardError, ModelLoadError)
from leaf_disease_ros.ros.diagnostics import domain_report, DomainRule, DomainShares
from leaf_disease_ros.ros.diagnostics import rejected_status_text
from leaf_disease_ros.ros.environment import numpy_problem
from leaf_disease_ros.ros.messages import (COMPRESSED_IMAGE_TYPE, cv_bridge_failure_message,
                                           EndpointQos, IMAGE_TYPE, no_image_message,
                                           ready_message, start_failure_message, time_jump_message,
                                           unsupported_encoding_message)
from leaf_disease_ros.ros.params import check_overrides, type_hint

DOCS = os.path.join(REPO_DIR, 'docs')
PARAMETER_DOC = os.path.join(DOCS, 'parameters.md')
ENGINES = '/home/robot/ws/install/leaf_disease_ros/share/leaf_disease_ros/engines'
TOOL = os.path.join(REPO_DIR, 'tools', 'gen_param_docs.py')


@pytest.fixture(scope='module')
def tool():
    """Return tools/gen_param_docs.py as a module."""
    spec = importlib.util.spec_from_file_location('gen_param_docs', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def doc():
    """Return the text of README.md and every page of docs/, joined."""
    paths = [os.path.join(REPO_DIR, 'README.md')] + sorted(
        os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith('.md'))
    texts = []
    for path in paths:
        with open(path, encoding='utf-8') as stream:
            texts.append(stream.read())
    return '\n'.join(texts)


@pytest.fixture(scope='module')
def parameter_doc():
    """Return the text of docs/parameters.md."""
    with open(PARAMETER_DOC, encoding='utf-8') as stream:
        return stream.read()


def generated_section(text: str, tool) -> str:
    """Return what stands between the generated-table markers of ``text``."""
    start = text.index(tool.BEGIN_MARKER) + len(tool.BEGIN_MARKER) + 1
    return text[start:text.index(tool.END_MARKER)]


def test_the_parameter_table_of_the_doc_is_the_generated_one(parameter_doc, tool):
    assert generated_section(parameter_doc, tool) == tool.markdown_table()


def test_the_table_has_one_row_per_parameter(tool):
    rows = [line for line in tool.markdown_table().splitlines() if line.startswith('| `')]
    assert [row.split('`')[1] for row in rows] == [spec.name for spec in PARAMETERS]


def test_a_changed_table_is_detected(parameter_doc, tool, monkeypatch):
    spec = PARAMETERS_BY_NAME['top_k']
    changed = tuple(s if s is not spec else type(spec)(**{**spec.__dict__, 'default': 5})
                    for s in PARAMETERS)
    monkeypatch.setattr(tool, 'PARAMETERS', changed)
    assert generated_section(parameter_doc, tool) != tool.markdown_table()


def test_the_tool_prints_the_table_and_the_params_file(tool, capsys):
    assert tool.main([]) == 0
    assert capsys.readouterr().out == tool.markdown_table()
    assert tool.main(['--yaml']) == 0
    out = capsys.readouterr().out
    assert out.startswith('# Parameters of the leaf_disease_ros detector node')
    assert '    max_fix_gap_s: 1.0\n' in out


def _error_of(function, *args):
    """Return the LeafDiseaseError ``function(*args)`` raises."""
    try:
        function(*args)
    except LeafDiseaseError as exc:
        return exc
    raise AssertionError(f'{function.__name__} raised nothing')


EXAMPLES = [
    ready_message(model_id='leaf_lite0_field@0123456789ab', backend='onnxruntime',
                  providers=['CPUExecutionProvider'], warmup_ms=41.0,
                  image_topic='/camera/image_raw', image_type=IMAGE_TYPE,
                  reliability='best_effort', depth=1, fix_topic='/gps/fix',
                  detections_topic='/detector_node/detections'),
    time_jump_message('fix', 120.4),
    no_image_message(topic='/camera/image_raw', image_type=IMAGE_TYPE,
                     reliability='best_effort', depth=1, waited_s=5.0, publishers=[]),
    no_image_message(topic='/camera/image_raw', image_type=IMAGE_TYPE, reliability='reliable',
                     depth=1, waited_s=5.0, publishers=[
                         EndpointQos('/camera_driver', IMAGE_TYPE, 'best_effort', 'volatile')]),
    no_image_message(topic='/camera/image_raw', image_type=IMAGE_TYPE,
                     reliability='best_effort', depth=1, waited_s=5.0, publishers=[
                         EndpointQos('/camera_driver', COMPRESSED_IMAGE_TYPE, 'reliable',
                                     'volatile')]),
    no_image_message(topic='/camera/image_raw', image_type=IMAGE_TYPE,
                     reliability='best_effort', depth=1, waited_s=5.0, publishers=[
                         EndpointQos('/camera_driver', IMAGE_TYPE, 'reliable', 'volatile')]),
    'detector cannot start: ' + cv_bridge_failure_message(
        '_ARRAY_API not found', '2.2.6'),
    start_failure_message(ConfigError('tile_stride_px', '300 is larger than tile_size_px 256: '
                                                        'the frame would have unclassified '
                                                        'gaps')),
    type_hint(PARAMETERS_BY_NAME['top_k']),
    'detector cannot start: ' + numpy_problem(
        'humble', '2.2.6', '/home/robot/.local/lib/python3.10/site-packages/numpy'),
    rejected_status_text(-2),
    start_failure_message(_error_of(check_overrides, ['tile_sise_px'])),
    start_failure_message(ModelCardError(
        '/data/models/mine.json', '<file>', 'does not exist; every model needs its card '
        '(<model>.json, written by leaf-disease-export)')),
    start_failure_message(EngineMismatchError(mismatch_message(
        f'{ENGINES}/leaf_lite0_field.fp16.sm87.trt8.6.2.engine',
        ['built with TensorRT 8.6.2, this machine has TensorRT 10.3.0'],
        build_command(f'{ENGINES}/leaf_lite0_field.onnx')))),
    start_failure_message(ModelLoadError(
        'model file /data/models/mine.onnx does not exist; set model_path to an ONNX model '
        'with its card beside it (or leave it empty for the shipped model)')),
    unsupported_encoding_message('16UC1', '[16UC1] is not a color format. but [bgr8] is. '
                                          'The conversion does not make sense'),
    domain_report(DomainShares(100, 300, 300, 120, 0, 0, 30, 0), name='d', hardware_id='m',
                  rule=DomainRule(300, 30, 0.2, 0.2)).message,
    domain_report(DomainShares(20, 300, 300, 3, 0, 0, 30, 210), name='d', hardware_id='m',
                  rule=DomainRule(300, 30, 0.2, 0.2)).message,
]


@pytest.mark.parametrize('text', EXAMPLES, ids=lambda text: text[:40])
def test_the_doc_quotes_the_node_texts_exactly(doc, text):
    assert text in ' '.join(doc.split()) or text in doc
