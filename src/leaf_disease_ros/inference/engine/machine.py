"""
What this machine is, as far as an engine cares: GPU, compute capability, TensorRT, module.

The GPU name and compute capability do not tell Jetson modules apart: an AGX Orin, an
Orin NX and an Orin Nano all report ``Orin``, sm 8.7. The facts that do are recorded
too: the number of streaming multiprocessors and the memory (from the CUDA driver),
the DLA cores (from the TensorRT builder), the Jetson Linux (L4T) release
(``/etc/nv_tegra_release``) and the power mode (``/var/lib/nvpmodel/status``). The
readers here are pure: the files' texts in, values out; a PC has no such files.
"""

from dataclasses import dataclass
import re
from typing import Optional, Sequence, Tuple

L4T_RELEASE_FILE = '/etc/nv_tegra_release'
POWER_MODE_FILE = '/var/lib/nvpmodel/status'
# memory sizes closer than this (relative) are the same module (the driver reports the
# RAM left to the GPU, which moves with the carveouts of a release)
MEMORY_TOLERANCE = 0.25


def sm_tag(compute_capability: Sequence[int]) -> str:
    """Return the compute capability tag of a GPU: ``(8, 7)`` -> ``sm87``."""
    major, minor = (int(v) for v in compute_capability)
    return f'sm{major}{minor}'


@dataclass(frozen=True)
class MachineInfo:
    """
    What an engine depends on: TensorRT version, GPU name and compute capability.

    The optional module facts (None or '' when unknown): ``sm_count``, ``memory_mib``,
    ``dla_cores``, ``l4t_release`` (e.g. ``36.4.0``) and ``power_mode`` (nvpmodel id).
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]
    sm_count: Optional[int] = None
    memory_mib: Optional[int] = None
    dla_cores: Optional[int] = None
    l4t_release: str = ''
    power_mode: str = ''

    def describe(self) -> str:
        """Return e.g. ``Orin (sm87), TensorRT 10.3.0``."""
        return (f'{self.gpu_name} ({sm_tag(self.compute_capability)}), '
                f'TensorRT {self.tensorrt_version}')

    def module_facts(self) -> str:
        """Return the known module facts, e.g. ``16 SMs, 30697 MiB, L4T 36.4.0`` ('' if none)."""
        facts = []
        if self.sm_count is not None:
            facts.append(f'{self.sm_count} SMs')
        if self.memory_mib is not None:
            facts.append(f'{self.memory_mib} MiB')
        if self.dla_cores is not None:
            facts.append(f'{self.dla_cores} DLA cores')
        if self.l4t_release:
            facts.append(f'L4T {self.l4t_release}')
        if self.power_mode:
            facts.append(f'power mode {self.power_mode}')
        return ', '.join(facts)


def module_mismatches(built: MachineInfo, here: MachineInfo) -> list:
    """
    Return why an engine built on ``built`` is for another module than ``here``.

    Only facts known on both sides are compared: the SM count, the memory (beyond
    :data:`MEMORY_TOLERANCE`) and, for an engine that needs them, the DLA cores.
    """
    found = []
    if built.sm_count is not None and here.sm_count is not None \
            and built.sm_count != here.sm_count:
        found.append(f'built on a GPU with {built.sm_count} SMs, this one has '
                     f'{here.sm_count} (another module: AGX Orin, Orin NX and Orin Nano all '
                     'report Orin, sm87)')
    if built.memory_mib and here.memory_mib and abs(built.memory_mib - here.memory_mib) \
            > MEMORY_TOLERANCE * max(built.memory_mib, here.memory_mib):
        found.append(f'built on a module with {built.memory_mib} MiB, this one has '
                     f'{here.memory_mib} MiB')
    return found


def parse_l4t_release(text: str) -> str:
    """
    Return the L4T release of ``/etc/nv_tegra_release`` text ('' when unreadable).

    ``# R36 (release), REVISION: 4.0, GCID: ...`` -> ``36.4.0``.
    """
    match = re.search(r'R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)', text)
    return f'{match.group(1)}.{match.group(2)}' if match else ''


def parse_power_mode(text: str) -> str:
    """Return the nvpmodel mode of ``/var/lib/nvpmodel/status`` text (``pmode:0002`` -> ``2``)."""
    match = re.search(r'pmode:\s*(\d+)', text)
    return str(int(match.group(1))) if match else ''


def read_text(path: str) -> str:
    """Return a small system file's text, '' when it does not exist or cannot be read."""
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as stream:
            return stream.read(4096)
    except OSError:
        return ''
