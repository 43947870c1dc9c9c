"""
Whether an engine on disk may be used: match rules against the card and this machine, discovery.

Every mismatch is reported as one human-readable string, never just the first
(:func:`sidecar_mismatches`, :func:`engine_io_mismatches`); :func:`search_engines`
finds the engines of a card that serve this machine; :func:`verify_engine` is the
one check the node, the factory and ``leaf-disease-build-engine --check`` share.
"""

from dataclasses import dataclass, field
import os
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.inference.engine.commands import build_command, BUILD_TOOL, mismatch_message
from leaf_disease_ros.inference.engine.machine import MachineInfo, module_mismatches, sm_tag
from leaf_disease_ros.inference.engine.naming import (engine_candidates, engine_file_name,
                                                      model_stem, parse_engine_file_name,
                                                      sidecar_path_for_engine)
from leaf_disease_ros.inference.engine.sidecar import (card_path_for_engine, EngineSidecar,
                                                       onnx_path_for_engine, read_sidecar,
                                                       TensorInfo)
from leaf_disease_ros.perception.errors import EngineMismatchError, ModelLoadError
from leaf_disease_ros.perception.model_card import load_card, ModelCard, sha256_file


@dataclass
class EngineSearch:
    """Outcome of :func:`search_engines`: the chosen engine and why others were not."""

    folder: str
    chosen: Optional[str] = None
    chosen_sidecar: Optional[EngineSidecar] = None
    rejected: List[Tuple[str, List[str]]] = field(default_factory=list)

    def rejection_lines(self) -> List[str]:
        """Return one line per rejected engine: ``<file>: <mismatch>; <mismatch>``."""
        return [f'{os.path.basename(path)}: {"; ".join(reasons)}'
                for path, reasons in self.rejected]


def sidecar_mismatches(sidecar: EngineSidecar, card: ModelCard, machine: MachineInfo,
                       expected_onnx_sha256: str) -> List[str]:
    """
    Return every reason why the engine of ``sidecar`` may not serve ``card`` here.

    An empty list means the engine was built from the card's model (sha256, tensor
    names, input size, class count) by this TensorRT version on this GPU model, and,
    where the sidecar recorded them, on this kind of module (SM count, memory; the
    DLA core it needs exists here).
    ``expected_onnx_sha256`` is the card's ``onnx_sha256`` (or the hash of the ONNX
    file beside it when the card records none); empty means it cannot be verified,
    which is itself a mismatch.
    """
    found: List[str] = []
    if not expected_onnx_sha256:
        found.append('cannot verify which model the engine was built from: the card '
                     'records no onnx_sha256 and its ONNX file is not beside it')
    elif sidecar.onnx_sha256 != expected_onnx_sha256:
        found.append(f'built from another model: ONNX sha256 {sidecar.onnx_sha256[:12]}... '
                     f'but the card is for {expected_onnx_sha256[:12]}...')
    if sidecar.num_classes != card.num_classes:
        found.append(f'class count {sidecar.num_classes}, the card lists {card.num_classes} '
                     'labels')
    if sidecar.input_name != card.input_name:
        found.append(f'input tensor {sidecar.input_name!r}, the card says '
                     f'{card.input_name!r}')
    expected_chw = (3, card.input_height_px, card.input_width_px)
    if tuple(sidecar.input_shape_chw) != expected_chw:
        found.append(f'input shape (C, H, W) {tuple(sidecar.input_shape_chw)}, the card says '
                     f'{expected_chw}')
    if sidecar.output_name != card.output_name:
        found.append(f'output tensor {sidecar.output_name!r}, the card says '
                     f'{card.output_name!r}')
    if sidecar.tensorrt_version != machine.tensorrt_version:
        found.append(f'built with TensorRT {sidecar.tensorrt_version}, this machine has '
                     f'TensorRT {machine.tensorrt_version}')
    if tuple(sidecar.compute_capability) != tuple(machine.compute_capability):
        found.append(f'built for compute capability {sm_tag(sidecar.compute_capability)}, '
                     f'this GPU is {sm_tag(machine.compute_capability)}')
    if sidecar.gpu_name != machine.gpu_name:
        found.append(f'built on GPU {sidecar.gpu_name!r}, this GPU is {machine.gpu_name!r}')
    found += module_mismatches(sidecar.machine, machine)
    if sidecar.dla_core is not None and machine.dla_cores is not None \
            and sidecar.dla_core >= machine.dla_cores:
        found.append(f'built for DLA core {sidecar.dla_core}, this machine has '
                     f'{machine.dla_cores} DLA core(s)')
    return found


def engine_file_mismatches(engine_path: str, sidecar: EngineSidecar) -> List[str]:
    """Return why ``engine_path`` is not the file ``sidecar`` describes (name, sha256)."""
    found: List[str] = []
    if os.path.basename(engine_path) != sidecar.engine_file:
        found.append(f'the sidecar describes {sidecar.engine_file}, not '
                     f'{os.path.basename(engine_path)}')
    if not os.path.isfile(engine_path):
        found.append(f'engine file {engine_path} does not exist')
        return found
    try:
        actual = sha256_file(engine_path)
    except OSError as exc:
        found.append(f'engine file {engine_path} cannot be read ({exc.strerror or exc})')
        return found
    if actual != sidecar.engine_sha256:
        found.append(f'engine file changed after its sidecar was written (sha256 '
                     f'{actual[:12]}..., sidecar says {sidecar.engine_sha256[:12]}...)')
    return found


def engine_io_mismatches(tensors: Sequence[TensorInfo], card: ModelCard,
                         sidecar: Optional[EngineSidecar] = None) -> List[str]:
    """
    Return every way the tensors of a deserialised engine break the card (and sidecar).

    Checks: exactly one input, named as in the card, float32, shape ``(N, 3, H, W)``
    with profile 0 covering the sidecar's batch profile; the card's output exists,
    is float32 and has ``C`` classes on its last axis.
    """
    found: List[str] = []
    inputs = [t for t in tensors if t.is_input]
    outputs = [t for t in tensors if not t.is_input]
    chw = (3, card.input_height_px, card.input_width_px)
    if len(inputs) != 1:
        found.append(f'engine has {len(inputs)} inputs '
                     f'({", ".join(t.name for t in inputs) or "none"}); expected one')
    for tensor in inputs:
        if tensor.name != card.input_name:
            found.append(f'engine input {tensor.name!r}, the card says {card.input_name!r}')
            continue
        if tensor.dtype != 'float32':
            found.append(f'engine input {tensor.name!r} is {tensor.dtype}, the backend feeds '
                         'float32 (build from an ONNX that keeps float32 inputs)')
        if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != chw:
            found.append(f'engine input shape {tuple(tensor.shape)}, the card implies '
                         f'(N, {chw[0]}, {chw[1]}, {chw[2]})')
        if tensor.profile is None:
            found.append(f'engine input {tensor.name!r} has no optimisation profile')
        else:
            low, opt, high = (tuple(s) for s in tensor.profile)
            batches = (low[0] if low else -1, opt[0] if opt else -1, high[0] if high else -1)
            for label, shape in (('min', low), ('opt', opt), ('max', high)):
                if tuple(shape[1:]) != chw:
                    found.append(f'profile {label} shape {shape} does not match (N, '
                                 f'{chw[0]}, {chw[1]}, {chw[2]})')
            if sidecar is not None and batches != sidecar.batch_profile.as_tuple():
                found.append(f'engine batch profile min/opt/max {batches}, the sidecar says '
                             f'{sidecar.batch_profile.as_tuple()}')
    named = [t for t in outputs if t.name == card.output_name]
    if not named:
        found.append(f'engine has no output {card.output_name!r} (outputs: '
                     f'{", ".join(t.name for t in outputs) or "none"})')
    for tensor in named:
        if tensor.dtype != 'float32':
            found.append(f'engine output {tensor.name!r} is {tensor.dtype}, expected float32')
        if not tensor.shape or tensor.shape[-1] != card.num_classes:
            found.append(f'engine output shape {tuple(tensor.shape)}, the card lists '
                         f'{card.num_classes} labels')
    if card.embedding_name and not any(t.name == card.embedding_name for t in outputs):
        found.append(f'engine has no embedding output {card.embedding_name!r} (outputs: '
                     f'{", ".join(t.name for t in outputs) or "none"})')
    return found


def expected_onnx_sha256(card: ModelCard, onnx_path: Optional[str]) -> str:
    """Return the card's ``onnx_sha256``, else the hash of ``onnx_path`` if it exists, else ''."""
    if card.onnx_sha256:
        return card.onnx_sha256
    if onnx_path and os.path.isfile(onnx_path):
        return sha256_file(onnx_path)
    return ''


def search_engines(folder: str, onnx_path: str, card: ModelCard,
                   machine: MachineInfo) -> EngineSearch:
    """
    Find the engine in ``folder`` that serves ``card`` on ``machine``.

    Candidates are ``<model>.*.engine`` files (model = the ONNX file name). An engine
    qualifies when its sidecar reads, matches the card and this machine
    (:func:`sidecar_mismatches`) and the engine file is the one the sidecar
    describes (:func:`engine_file_mismatches`). When several qualify (say FP16 and
    INT8), the most recently built wins: it reflects the operator's last decision.
    Nothing is raised for a bad candidate; the reasons are collected in
    :attr:`EngineSearch.rejected`.
    """
    result = EngineSearch(folder=folder)
    expected = expected_onnx_sha256(card, onnx_path)
    good: List[Tuple[str, str, EngineSidecar]] = []
    for path in engine_candidates(folder, model_stem(onnx_path)):
        try:
            sidecar = read_sidecar(sidecar_path_for_engine(path))
        except ModelLoadError as exc:
            result.rejected.append((path, [str(exc)]))
            continue
        reasons = sidecar_mismatches(sidecar, card, machine, expected)
        if not reasons:
            reasons = engine_file_mismatches(path, sidecar)
        if reasons:
            result.rejected.append((path, reasons))
        else:
            good.append((sidecar.built_at_utc, path, sidecar))
    if good:
        good.sort(key=lambda item: (item[0], item[1]))
        _, result.chosen, result.chosen_sidecar = good[-1]
    return result


def onnx_path_guess(engine_path: str) -> str:
    """Return the ONNX model an engine file name points to (``<model>.onnx`` beside it)."""
    parsed = parse_engine_file_name(engine_path)
    stem = parsed[0] if parsed else os.path.basename(engine_path).split('.')[0]
    return os.path.join(os.path.dirname(os.path.abspath(engine_path)), stem + '.onnx')


def verify_engine(engine_path: str, machine: MachineInfo,
                  tool: str = BUILD_TOOL) -> Tuple[EngineSidecar, ModelCard]:
    """
    Check an engine file against its sidecar, its model card and this machine.

    The card is the sidecar's ``card_file`` beside the engine. Reads files only (the
    engine's sha256); deserialising is the backend's job.

    :returns: ``(sidecar, card)`` when the engine may be used.
    :raises ModelLoadError: the engine or its sidecar is missing or malformed.
    :raises ModelCardError: the card is missing or malformed.
    :raises EngineMismatchError: anything does not match; the message lists every
        mismatch and the command that rebuilds the engine.
    """
    if not os.path.isfile(engine_path):
        raise ModelLoadError(
            f'TensorRT engine {engine_path} does not exist; build it on this machine with: '
            f'{build_command(onnx_path_guess(engine_path), tool=tool)}')
    sidecar = read_sidecar(sidecar_path_for_engine(engine_path))
    card = load_card(card_path_for_engine(engine_path, sidecar))
    onnx_path = onnx_path_for_engine(engine_path, sidecar)
    mismatches = sidecar_mismatches(sidecar, card, machine, expected_onnx_sha256(card, onnx_path))
    mismatches += engine_file_mismatches(engine_path, sidecar)
    if mismatches:
        rebuilt = engine_file_name(model_stem(onnx_path), sidecar.precision,
                                   machine.compute_capability, machine.tensorrt_version)
        extra = ['--force'] if rebuilt == os.path.basename(engine_path) else []
        raise EngineMismatchError(mismatch_message(
            engine_path, mismatches, build_command(onnx_path, sidecar.precision, tool=tool,
                                                   extra=extra)))
    return sidecar, card
