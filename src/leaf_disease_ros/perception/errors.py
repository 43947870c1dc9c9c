"""
Typed errors of leaf_disease_ros.

Library code raises these, never prints, exits or asserts. Every message names the
thing that is wrong (file, field, parameter, topic) and, where there is one, the
action that fixes it. Callers catch the narrowest class they can handle: a frame
callback catches :class:`FrameError` and :class:`InferenceError` only, so a genuine
programming error still surfaces instead of being counted as a dropped frame.
"""

from typing import Optional


#: a message echoes user input (a value, a key): never more than this of a reason
MAX_REASON_CHARS = 2000


def _bounded(text: str, limit: int) -> str:
    """Return ``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f'{text[:limit]}... ({len(text) - limit} more characters)'


class LeafDiseaseError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(LeafDiseaseError):
    """A parameter has a bad type, is out of range or contradicts another one."""

    def __init__(self, parameter: str, reason: str) -> None:
        self.parameter = parameter
        self.reason = reason
        super().__init__(f'parameter {_bounded(str(parameter), 120)!r}: '
                         f'{_bounded(reason, MAX_REASON_CHARS)}')


class ModelCardError(LeafDiseaseError):
    """A model card is missing, malformed or does not match its model."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        super().__init__(f'model card {path}: field {field!r}: {reason}')


class ModelLoadError(LeafDiseaseError):
    """A model or engine file cannot be loaded or does not match its card."""


class EngineMismatchError(ModelLoadError):
    """A TensorRT engine was built for another model, GPU or TensorRT version."""


class BackendUnavailableError(ModelLoadError):
    """The runtime a backend needs (onnxruntime, tensorrt, pycuda, a GPU) is absent."""


class InferenceError(LeafDiseaseError):
    """A backend failed on one batch; the frame is dropped, the node goes on."""


class FrameError(LeafDiseaseError):
    """A frame cannot be processed (empty, wrong shape or dtype, undecodable)."""


class FrameTooSmallError(FrameError):
    """A frame has a side too short for the model's input (e.g. 1 px high): not classified."""


class ImageDecodeError(FrameError):
    """An image message or file could not be decoded into a BGR uint8 array."""

    def __init__(self, reason: str, encoding: Optional[str] = None) -> None:
        self.encoding = encoding
        super().__init__(reason)


class UnsupportedEncodingError(ImageDecodeError):
    """An image arrived in an encoding the package does not convert."""


class DatasetError(LeafDiseaseError):
    """A class-folder dataset is missing, empty or inconsistent."""


class BagError(LeafDiseaseError):
    """A rosbag2 recording cannot be read, or lacks a topic the replay needs."""


class MissingDependencyError(LeafDiseaseError):
    """An optional Python package a command needs is not installed (the message says how)."""


class OutputError(LeafDiseaseError):
    """An output (report folder, JSON file) cannot be written where it was asked for."""
