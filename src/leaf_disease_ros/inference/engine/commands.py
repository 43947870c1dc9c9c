"""The commands and texts that tell an operator how to build or fix an engine."""

import shlex
from typing import Sequence

from leaf_disease_ros.inference.engine.policy import DEFAULT_PRECISION


BUILD_TOOL = 'leaf-disease-build-engine'


def build_command(onnx_path: str, precision: str = DEFAULT_PRECISION,
                  tool: str = BUILD_TOOL, extra: Sequence[str] = ()) -> str:
    """Return the shell command that builds the engine for ``onnx_path`` on this machine."""
    words = [tool, onnx_path]
    if precision != DEFAULT_PRECISION:
        words += ['--precision', precision]
    words += list(extra)
    return ' '.join(shlex.quote(word) for word in words)


def mismatch_message(engine_path: str, mismatches: Sequence[str], command: str) -> str:
    """Return the error text for an engine that may not be used, with the fixing command."""
    listed = '; '.join(mismatches)
    return (f'TensorRT engine {engine_path} does not match: {listed}. Engines are never '
            f'reused across models, TensorRT versions or GPUs: rebuild it on this machine '
            f'with: {command}')


def format_parser_error(index: int, description: str, code: str = '', node_index: int = -1,
                        node_name: str = '', node_operator: str = '') -> str:
    """Return one ONNX parser error as ``error 1: node 12 (conv1, Conv): <desc> [code]``."""
    where = 'graph'
    if node_index is not None and node_index >= 0:
        detail = ', '.join(part for part in (node_name, node_operator) if part)
        where = f'node {node_index}' + (f' ({detail})' if detail else '')
    elif node_name or node_operator:
        where = 'node ' + ', '.join(part for part in (node_name, node_operator) if part)
    suffix = f' [{code}]' if code else ''
    return f'error {index + 1}: {where}: {description}{suffix}'
