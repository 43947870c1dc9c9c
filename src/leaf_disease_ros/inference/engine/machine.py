"""What this machine is, as far as an engine cares: GPU, compute capability, TensorRT."""

from dataclasses import dataclass
from typing import Sequence, Tuple


def sm_tag(compute_capability: Sequence[int]) -> str:
    """Return the compute capability tag of a GPU: ``(8, 7)`` -> ``sm87``."""
    major, minor = (int(v) for v in compute_capability)
    return f'sm{major}{minor}'


@dataclass(frozen=True)
class MachineInfo:
    """What an engine depends on: TensorRT version, GPU name and compute capability."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]

    def describe(self) -> str:
        """Return e.g. ``Orin (sm87), TensorRT 10.3.0``."""
        return (f'{self.gpu_name} ({sm_tag(self.compute_capability)}), '
                f'TensorRT {self.tensorrt_version}')
