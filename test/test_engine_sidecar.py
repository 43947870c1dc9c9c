"""Engine naming, sidecar read/write, match rules, discovery and the TensorRT version policy."""

import dataclasses
import json
import os

import pytest

from engine_helpers import make_engine_files, make_sidecar, ORIN
from leaf_disease_ros.inference.engine.commands import (build_command, format_parser_error,
                                                        mismatch_message)
from leaf_disease_ros.inference.engine.machine import MachineInfo, sm_tag
from leaf_disease_ros.inference.engine.matching import (engine_file_mismatches,
                                                        engine_io_mismatches, search_engines,
                                                        sidecar_mismatches, verify_engine)
from leaf_disease_ros.inference.engine.naming import (calibration_cache_path, engine_candidates,
                                                      engine_file_name, parse_engine_file_name,
                                                      sidecar_path_for_engine, timing_cache_path)
from leaf_disease_ros.inference.engine.policy import (BatchProfile, parse_tensorrt_version,
                                                      precision_plan, validate_batch_profile)
from leaf_disease_ros.inference.engine.sidecar import (read_sidecar, sidecar_from_dict,
                                                       sidecar_to_dict, TensorInfo, write_sidecar)
from leaf_disease_ros.perception.errors import ConfigError, EngineMismatchError, ModelLoadError
from leaf_disease_ros.perception.model_card import ModelCard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- naming -----------------------------------------------------------------------

def test_engine_file_name_follows_the_documented_pattern() -> None:
    name = engine_file_name('leaf_lite0_field', 'fp16', (8, 7), '10.3.0')
    assert name == 'leaf_lite0_field.fp16.sm87.trt10.3.0.engine'
    assert (engine_file_name('m', 'int8', (7, 2), '10.12.0.36')
            == 'm.int8.sm72.trt10.12.0.36.engine')


def test_engine_file_name_parses_back() -> None:
    name = engine_file_name('leaf.v2', 'int8', (8, 7), '10.3.0.30')
    assert parse_engine_file_name('/x/' + name) == ('leaf.v2', 'int8', 'sm87', '10.3.0.30')
    assert parse_engine_file_name('leaf_resnet18.onnx') is None
    assert parse_engine_file_name('leaf.bf16.sm87.trt10.engine') is None


@pytest.mark.parametrize('model, precision', [('m', 'fp64'), ('a/b', 'fp16'), ('', 'fp16')])
def test_engine_file_name_rejects_bad_parts(model: str, precision: str) -> None:
    with pytest.raises(ValueError):
        engine_file_name(model, precision, (8, 7), '10.3.0')


def test_tags_and_versions() -> None:
    assert sm_tag((8, 7)) == 'sm87'
    assert sm_tag([12, 0]) == 'sm120'
    assert parse_tensorrt_version('10.3.0.30') == (10, 3, 0)
    assert parse_tensorrt_version('11') == (11, 0, 0)
    assert parse_tensorrt_version('10.12.0') > parse_tensorrt_version('10.3.0')
    with pytest.raises(ValueError):
        parse_tensorrt_version('unknown')


def test_sidecar_and_cache_names(tmp_path) -> None:
    engine = str(tmp_path / 'm.fp16.sm87.trt10.3.0.engine')
    assert sidecar_path_for_engine(engine) == engine + '.json'
    assert timing_cache_path(str(tmp_path), ORIN) == str(tmp_path / 'sm87.trt10.3.0.timing_cache')
    # keyed by the ONNX sha256: a re-exported model never reuses the old ranges
    assert calibration_cache_path(str(tmp_path), 'm', ORIN, 'ab12' * 16) == str(
        tmp_path / 'm.ab12ab12ab12.int8.sm87.trt10.3.0.calib_cache')
    assert calibration_cache_path(str(tmp_path), 'm', ORIN, 'cd34' * 16) != \
        calibration_cache_path(str(tmp_path), 'm', ORIN, 'ab12' * 16)


def test_engine_candidates_only_lists_this_models_engines(tmp_path) -> None:
    for name in ('tiny.fp16.sm87.trt10.3.0.engine', 'tiny.int8.sm87.trt10.3.0.engine',
                 'tiny_big.fp16.sm87.trt10.3.0.engine', 'tiny.fp16.sm87.trt10.3.0.engine.json',
                 'other.fp16.sm87.trt10.3.0.engine'):
        (tmp_path / name).write_bytes(b'x')
    found = [os.path.basename(p) for p in engine_candidates(str(tmp_path), 'tiny')]
    assert found == ['tiny.fp16.sm87.trt10.3.0.engine', 'tiny.int8.sm87.trt10.3.0.engine']


# --- batch profile ------------------------------------------------------------------

def test_default_batch_profile_is_valid() -> None:
    assert validate_batch_profile(1, 6, 16) == BatchProfile(1, 6, 16)
    assert validate_batch_profile(4, 4, 4).as_tuple() == (4, 4, 4)


@pytest.mark.parametrize('values, field', [
    ((0, 6, 16), 'min_batch'),
    ((8, 6, 16), 'opt_batch'),
    ((1, 6, 4), 'max_batch'),
    ((1, 6, 2000), 'max_batch'),
    ((1.0, 6, 16), 'min_batch'),
    ((True, 6, 16), 'min_batch'),
    ((1, '6', 16), 'opt_batch'),
    ((-1, 6, 16), 'min_batch'),
])
def test_bad_batch_profiles_name_the_flag(values, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_batch_profile(*values)
    assert info.value.parameter == field


# --- sidecar document ---------------------------------------------------------------

def test_sidecar_round_trips_through_json(tmp_path, tiny_model_path: str,
                                          tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card, dla_core=1)
    path = str(tmp_path / 'x.engine.json')
    write_sidecar(path, sidecar)
    assert sorted(os.listdir(tmp_path)) == ['x.engine.json']  # no temporary file left
    doc = json.loads(open(path, encoding='utf-8').read())
    assert doc['compute_capability'] == [8, 7]
    assert doc['batch_profile'] == {'min': 1, 'opt': 6, 'max': 16}
    assert doc['onnx_sha256'] == tiny_card.onnx_sha256
    back = read_sidecar(path)
    assert back.path == path
    assert dataclasses.replace(back, path=None) == sidecar
    assert sidecar_to_dict(back) == doc


def test_missing_sidecar_names_the_file_and_the_tool(tmp_path) -> None:
    path = str(tmp_path / 'x.engine.json')
    with pytest.raises(ModelLoadError, match='does not exist.*leaf-disease-build-engine'):
        read_sidecar(path)
    (tmp_path / 'x.engine.json').write_text('{not json')
    with pytest.raises(ModelLoadError, match='not valid JSON'):
        read_sidecar(path)


@pytest.mark.parametrize('key', ['engine_file', 'engine_sha256', 'onnx_sha256', 'card_file',
                                 'num_classes', 'input_name', 'input_shape_chw', 'output_name',
                                 'tensorrt_version', 'gpu_name', 'compute_capability',
                                 'precision', 'batch_profile', 'workspace_mib',
                                 'build_seconds', 'schema_version'])
def test_sidecar_missing_field_is_named(key: str, tiny_model_path: str,
                                        tiny_card: ModelCard) -> None:
    doc = sidecar_to_dict(make_sidecar(tiny_model_path, tiny_card))
    del doc[key]
    with pytest.raises(ModelLoadError, match=f"'{key}'"):
        sidecar_from_dict(doc, 'engines/x.engine.json')


@pytest.mark.parametrize('key, value', [
    ('onnx_sha256', 'ABC'), ('precision', 'bf16'), ('batch_profile', {'min': 4, 'opt': 2,
                                                                      'max': 8}),
    ('compute_capability', [8]), ('input_shape_chw', [3, 32]), ('num_classes', 0),
    ('dla_core', -1), ('schema_version', 2), ('builder_options', []), ('build_seconds', -1),
])
def test_sidecar_bad_field_is_named(key: str, value, tiny_model_path: str,
                                    tiny_card: ModelCard) -> None:
    doc = sidecar_to_dict(make_sidecar(tiny_model_path, tiny_card))
    doc[key] = value
    with pytest.raises(ModelLoadError, match=f"engines/x.engine.json: field '{key}'"):
        sidecar_from_dict(doc, 'engines/x.engine.json')


# --- match rules ----------------------------------------------------------------------

def test_matching_sidecar_has_no_mismatch(tiny_model_path: str, tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card)
    assert sidecar_mismatches(sidecar, tiny_card, ORIN, tiny_card.onnx_sha256) == []


@pytest.mark.parametrize('changes, machine, expected', [
    ({'onnx_sha256': 'f' * 64}, ORIN, 'built from another model'),
    ({'num_classes': 5}, ORIN, 'class count 5'),
    ({'input_name': 'images'}, ORIN, "input tensor 'images'"),
    ({'input_shape_chw': (3, 64, 64)}, ORIN, 'input shape'),
    ({'output_name': 'probs'}, ORIN, "output tensor 'probs'"),
    ({}, MachineInfo('10.7.0', 'Orin', (8, 7)),
     'built with TensorRT 10.3.0, this machine has TensorRT 10.7.0'),
    ({}, MachineInfo('10.3.0', 'Orin', (7, 2)), 'compute capability sm87, this GPU is sm72'),
    ({}, MachineInfo('10.3.0', 'NVIDIA GeForce RTX 3090', (8, 7)), "built on GPU 'Orin'"),
])
def test_each_mismatch_is_reported(changes, machine: MachineInfo, expected: str,
                                   tiny_model_path: str, tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card, **changes)
    found = sidecar_mismatches(sidecar, tiny_card, machine, tiny_card.onnx_sha256)
    assert len(found) == 1, found
    assert expected in found[0]


def test_all_mismatches_are_reported_together(tiny_model_path: str,
                                              tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card, onnx_sha256='e' * 64, num_classes=3,
                           output_name='probs')
    other = MachineInfo('8.6.2', 'Xavier', (7, 2))
    found = sidecar_mismatches(sidecar, tiny_card, other, tiny_card.onnx_sha256)
    assert len(found) == 6
    unverifiable = sidecar_mismatches(make_sidecar(tiny_model_path, tiny_card), tiny_card, ORIN,
                                      '')
    assert len(unverifiable) == 1 and 'cannot verify' in unverifiable[0]


def test_engine_file_mismatches(tmp_path, tiny_model_path: str, tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card, engine_bytes=b'abc')
    engine = tmp_path / sidecar.engine_file
    engine.write_bytes(b'abc')
    assert engine_file_mismatches(str(engine), sidecar) == []
    engine.write_bytes(b'abd')
    assert 'changed after its sidecar' in engine_file_mismatches(str(engine), sidecar)[0]
    renamed = tmp_path / 'tiny.int8.sm87.trt10.3.0.engine'
    renamed.write_bytes(b'abc')
    assert 'describes' in engine_file_mismatches(str(renamed), sidecar)[0]
    missing = engine_file_mismatches(str(tmp_path / sidecar.engine_file) + '.gone', sidecar)
    assert any('does not exist' in line for line in missing)


def _tensors(card: ModelCard, **changes) -> list:
    chw = (3, card.input_height_px, card.input_width_px)
    inp = TensorInfo('input', True, (-1,) + chw, 'float32',
                     ((1,) + chw, (6,) + chw, (16,) + chw))
    out = TensorInfo('logits', False, (-1, card.num_classes), 'float32')
    inp = dataclasses.replace(inp, **changes.get('input', {}))
    out = dataclasses.replace(out, **changes.get('output', {}))
    return [inp, out] + changes.get('extra', [])


def test_engine_io_matching(tiny_model_path: str, tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card)
    assert engine_io_mismatches(_tensors(tiny_card), tiny_card, sidecar) == []


@pytest.mark.parametrize('changes, expected', [
    ({'input': {'name': 'images'}}, "engine input 'images'"),
    ({'input': {'dtype': 'float16'}}, 'is float16'),
    ({'input': {'shape': (-1, 3, 64, 64)}}, 'engine input shape'),
    ({'input': {'profile': None}}, 'no optimisation profile'),
    ({'input': {'profile': ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}},
     'batch profile min/opt/max (1, 8, 32)'),
    ({'output': {'name': 'probs'}}, "no output 'logits'"),
    ({'output': {'dtype': 'float16'}}, 'expected float32'),
    ({'output': {'shape': (-1, 5)}}, 'lists 4 labels'),
    ({'extra': [TensorInfo('mask', True, (-1, 1), 'float32', ((1, 1),) * 3)]}, '2 inputs'),
])
def test_engine_io_mismatch_is_reported(changes, expected: str, tiny_model_path: str,
                                        tiny_card: ModelCard) -> None:
    sidecar = make_sidecar(tiny_model_path, tiny_card)
    found = engine_io_mismatches(_tensors(tiny_card, **changes), tiny_card, sidecar)
    assert found, 'a mismatch went unnoticed'
    assert any(expected in line for line in found), found


# --- discovery and verification --------------------------------------------------------

def test_search_without_engines(tiny_model_copy: str, tiny_card: ModelCard) -> None:
    search = search_engines(os.path.dirname(tiny_model_copy), tiny_model_copy, tiny_card, ORIN)
    assert search.chosen is None and search.rejected == []


def test_search_finds_the_matching_engine(tiny_model_copy: str, tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card)
    search = search_engines(os.path.dirname(tiny_model_copy), tiny_model_copy, tiny_card, ORIN)
    assert search.chosen == engine
    assert search.chosen_sidecar.precision == 'fp16'


def test_search_rejects_with_reasons(tiny_model_copy: str, tiny_card: ModelCard) -> None:
    old = make_engine_files(tiny_model_copy, tiny_card,
                            machine=MachineInfo('8.6.2', 'Orin', (8, 7)))
    changed = make_engine_files(tiny_model_copy, tiny_card, precision='int8')
    with open(changed, 'ab') as stream:
        stream.write(b'tampered')
    no_sidecar = os.path.join(os.path.dirname(tiny_model_copy), 'tiny.fp32.sm87.trt10.3.0.engine')
    open(no_sidecar, 'wb').close()
    search = search_engines(os.path.dirname(tiny_model_copy), tiny_model_copy, tiny_card, ORIN)
    assert search.chosen is None
    reasons = dict(search.rejected)
    assert 'TensorRT 8.6.2' in reasons[old][0]
    assert 'changed after its sidecar' in reasons[changed][0]
    assert 'sidecar' in reasons[no_sidecar][0] and 'does not exist' in reasons[no_sidecar][0]
    assert len(search.rejection_lines()) == 3


def test_search_prefers_the_newest_matching_engine(tiny_model_copy: str,
                                                   tiny_card: ModelCard) -> None:
    make_engine_files(tiny_model_copy, tiny_card, precision='fp16',
                      built_at_utc='2025-06-01T10:00:00.000000Z')
    newer = make_engine_files(tiny_model_copy, tiny_card, precision='int8',
                              built_at_utc='2025-06-02T09:00:00.000000Z')
    search = search_engines(os.path.dirname(tiny_model_copy), tiny_model_copy, tiny_card, ORIN)
    assert search.chosen == newer


def test_search_hashes_the_onnx_when_the_card_has_no_hash(tiny_model_copy: str,
                                                          tiny_card: ModelCard) -> None:
    card = dataclasses.replace(tiny_card, onnx_sha256='')
    engine = make_engine_files(tiny_model_copy, tiny_card)
    folder = os.path.dirname(tiny_model_copy)
    assert search_engines(folder, tiny_model_copy, card, ORIN).chosen == engine
    os.remove(tiny_model_copy)
    search = search_engines(folder, tiny_model_copy, card, ORIN)
    assert search.chosen is None and 'cannot verify' in search.rejected[0][1][0]


def test_verify_engine_finds_the_card_through_the_sidecar(tiny_model_copy: str,
                                                          tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card)
    sidecar, card = verify_engine(engine, ORIN)
    assert card.path == os.path.join(os.path.dirname(tiny_model_copy), 'tiny.json')
    assert card.labels == tiny_card.labels and sidecar.engine_file == os.path.basename(engine)


def test_verify_engine_lists_every_mismatch_and_the_command(tiny_model_copy: str,
                                                            tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card, onnx_sha256='d' * 64)
    with pytest.raises(EngineMismatchError) as info:
        verify_engine(engine, MachineInfo('10.7.0', 'Orin', (8, 7)))
    message = str(info.value)
    assert engine in message
    assert 'built from another model' in message and 'TensorRT 10.7.0' in message
    assert message.endswith(f'leaf-disease-build-engine {tiny_model_copy}')
    with pytest.raises(EngineMismatchError) as info:  # same name when rebuilt: --force
        verify_engine(engine, ORIN)
    assert str(info.value).endswith(f'leaf-disease-build-engine {tiny_model_copy} --force')


def test_verify_missing_engine_gives_the_build_command(tmp_path) -> None:
    engine = str(tmp_path / 'leaf.fp16.sm87.trt10.3.0.engine')
    with pytest.raises(ModelLoadError, match='leaf-disease-build-engine .*leaf.onnx'):
        verify_engine(engine, ORIN)


# --- messages and commands ------------------------------------------------------------

def test_build_command_quotes_paths_and_adds_flags() -> None:
    assert build_command('/e/m.onnx') == 'leaf-disease-build-engine /e/m.onnx'
    assert build_command('/my engines/m.onnx', 'int8', extra=['--force']) == (
        "leaf-disease-build-engine '/my engines/m.onnx' --precision int8 --force")
    message = mismatch_message('/e/x.engine', ['a', 'b'], 'CMD')
    assert message.startswith('TensorRT engine /e/x.engine does not match: a; b.')
    assert message.endswith('with: CMD')


def test_parser_errors_name_their_node() -> None:
    line = format_parser_error(0, 'unsupported', 'ErrorCode.UNSUPPORTED_NODE', 12, 'conv1',
                               'Conv')
    assert line == 'error 1: node 12 (conv1, Conv): unsupported [ErrorCode.UNSUPPORTED_NODE]'
    assert format_parser_error(2, 'bad graph') == 'error 3: graph: bad graph'
    assert format_parser_error(0, 'x', node_operator='Mod') == 'error 1: node Mod: x'


# --- TensorRT version policy -----------------------------------------------------------

def test_fp16_before_10_12_uses_the_precision_flag() -> None:
    plan = precision_plan('10.3.0', 'fp16')
    assert plan.flags == ('FP16',) and not plan.strongly_typed and not plan.fp16_onnx
    assert plan.notes == ()


@pytest.mark.parametrize('version, word', [('10.12.0', 'deprecated'), ('10.13.3.9', 'deprecated'),
                                           ('11.0.0', 'removed')])
def test_fp16_from_10_12_is_strongly_typed_from_an_fp16_onnx(version: str, word: str) -> None:
    plan = precision_plan(version, 'fp16')
    assert plan.strongly_typed and plan.fp16_onnx and plan.flags == ()
    assert any(word in note and 'strongly typed' in note for note in plan.notes)


def test_int8_uses_the_calibrator_and_says_it_is_deprecated() -> None:
    plan = precision_plan('10.3.0', 'int8')
    assert plan.calibrator and set(plan.flags) == {'INT8', 'FP16'} and not plan.strongly_typed
    assert any('deprecates the INT8 calibrator' in note for note in plan.notes)
    assert precision_plan('10.0.1', 'int8').notes == ()
    late = precision_plan('10.12.0', 'int8')
    assert any('weakly typed precision flags' in note for note in late.notes)


@pytest.mark.parametrize('version, precision, typing, parameter', [
    ('11.1.0', 'int8', 'auto', 'precision'),
    ('10.3.0', 'int8', 'strong', 'typing'),
    ('11.0.0', 'fp16', 'weak', 'typing'),
    ('8.6.2', 'fp16', 'auto', 'tensorrt'),
    ('10.3.0', 'fp8', 'auto', 'precision'),
    ('10.3.0', 'fp16', 'loose', 'typing'),
])
def test_impossible_plans_say_what_to_do(version: str, precision: str, typing: str,
                                         parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        precision_plan(version, precision, typing)
    assert info.value.parameter == parameter


def test_tensorrt_8_refusal_names_the_jetpack_releases_docs_tensorrt_md_lists() -> None:
    # JetPack 6.0 (L4T 36.3) ships TensorRT 8.6, 6.1 (L4T 36.4) TensorRT 10.3: "JetPack 6.x"
    # was wrong for 6.0; the message must agree with the supported-versions table
    table = open(os.path.join(REPO, 'docs', 'tensorrt.md'), encoding='utf-8').read()
    rows = [line.split('|')[1:3] for line in table.splitlines() if line.startswith('| JetPack')]
    jetpack_of = {trt.strip(): platform for platform, trt in rows}
    assert 'JetPack 6.0' in jetpack_of['8.x'] and 'JetPack 6.1' in jetpack_of['10.3']
    with pytest.raises(ConfigError) as info:
        precision_plan('8.6.2', 'fp16')
    assert 'JetPack 6.1 or newer' in info.value.reason
    assert 'JetPack 6.0 ships TensorRT 8.6' in info.value.reason
    assert '6.x' not in info.value.reason


def test_fp32_and_explicit_typing() -> None:
    assert precision_plan('10.3.0', 'fp32') == precision_plan('10.3.0', 'fp32', 'weak')
    assert precision_plan('10.3.0', 'fp32').flags == ()
    assert precision_plan('10.12.0', 'fp32').strongly_typed
    assert not precision_plan('10.12.0', 'fp32').fp16_onnx
    forced = precision_plan('10.3.0', 'fp16', 'strong')
    assert forced.strongly_typed and forced.fp16_onnx and forced.notes == ()
    weak = precision_plan('10.12.0', 'fp16', 'weak')
    assert weak.flags == ('FP16',) and any('deprecates' in note for note in weak.notes)
