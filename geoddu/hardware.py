"""What this machine has for geoddu: CUDA devices, the CPU and its instruction sets, versions.

Pure data (:class:`Machine`, JSON-serialisable through :meth:`Machine.to_dict`), read once per
call; nothing here measures speed (that is :mod:`geoddu.precision_probe`). Instruction-set
support is read where the operating system states it (Linux: ``/proc/cpuinfo``); elsewhere it
is ``"unknown"``, never a guess from the CPU's name.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .version import __version__

CPUINFO = Path("/proc/cpuinfo")

# Flags as Linux names them (x86: arch/x86 cpufeatures; Arm: hwcaps). bf16: instructions that
# oneDNN runs bf16 convolutions with; int8: dot-product instructions for int8 inference.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "svebf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

YES, NO, UNKNOWN = "yes", "no", "unknown"


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    memory_bytes: int
    capability: str  # "8.0"
    bf16: bool
    multiprocessors: int


@dataclass(frozen=True)
class Cpu:
    """The CPU: its model, how many cores and threads, and which reduced-precision
    instructions it has (``"yes"``, ``"no"`` or ``"unknown"``, with the flags that say yes)."""

    model: str
    physical_cores: int | None
    logical_threads: int | None
    usable_threads: int | None  # this process's affinity (containers, taskset)
    torch_threads: int
    torch_capability: str  # the SIMD level torch's kernels use: AVX512, AVX2, DEFAULT, ...
    bf16: str
    bf16_flags: tuple[str, ...]
    int8: str
    int8_flags: tuple[str, ...]
    flags_from: str  # where bf16/int8 were read: "/proc/cpuinfo", or "" when unknown


@dataclass(frozen=True)
class Machine:
    """Everything :func:`machine` found, plus notes that answer "is my GPU used?"."""

    geoddu: str
    torch: str
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU build
    python: str
    platform: str
    cpu: Cpu
    cuda: tuple[CudaDevice, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["cpu"].items()}
        out["cuda"] = [dict(d) for d in out["cuda"]]
        out["notes"] = list(self.notes)
        return out


def machine(cpuinfo: str | None = None) -> Machine:
    """This machine's facts. ``cpuinfo``: the text of a ``/proc/cpuinfo`` to use instead of
    the real one (tests, or another machine's file)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    devices = cuda_devices()
    cpu = cpu_facts(cpuinfo)
    torch_cuda = torch.version.cuda
    return Machine(
        geoddu=__version__,
        torch=torch.__version__,
        torch_cuda=torch_cuda,
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        cpu=cpu,
        cuda=devices,
        notes=tuple(_notes(torch_cuda, devices, cpu)),
    )


def cpu_facts(cpuinfo: str | None) -> Cpu:
    """The CPU as ``cpuinfo`` (the text of a Linux ``/proc/cpuinfo``, or None elsewhere)
    describes it; counts it does not state come from the operating system."""
    blocks = parse_cpuinfo(cpuinfo) if cpuinfo else []
    flags = _flags(blocks)
    bf16, bf16_flags = _support(flags, BF16_FLAGS)
    int8, int8_flags = _support(flags, INT8_FLAGS)
    return Cpu(
        model=_model(blocks),
        physical_cores=_physical_cores(blocks),
        logical_threads=len(blocks) or os.cpu_count(),
        usable_threads=_usable_threads(),
        torch_threads=torch.get_num_threads(),
        torch_capability=_torch_capability(),
        bf16=bf16,
        bf16_flags=bf16_flags,
        int8=int8,
        int8_flags=int8_flags,
        flags_from=str(CPUINFO) if flags is not None else "",
    )


def read_cpuinfo() -> str | None:
    """The text of this machine's ``/proc/cpuinfo``; None where there is none (not Linux)."""
    return _read(CPUINFO) if sys.platform.startswith("linux") else None


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one dict per logical processor (blank-line separated blocks)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return [b for b in blocks if "processor" in b]


def cuda_devices() -> tuple[CudaDevice, ...]:
    """The CUDA devices torch can use (none with a CPU build of torch or without a driver)."""
    if not torch.cuda.is_available():
        return ()
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        major, minor = props.major, props.minor
        out.append(CudaDevice(
            index=index,
            name=props.name,
            memory_bytes=int(props.total_memory),
            capability=f"{major}.{minor}",
            # bf16 tensor cores came with Ampere (8.0); torch.cuda.is_bf16_supported() answers
            # for the current device only, and may say yes through slow emulation.
            bf16=major >= 8,
            multiprocessors=int(props.multi_processor_count),
        ))
    return tuple(out)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _flags(blocks: list[dict[str, str]]) -> set[str] | None:
    """The flags every processor has (x86 "flags", Arm "Features"), or None if not stated."""
    found = None
    for block in blocks:
        text = block.get("flags", block.get("Features"))
        if text is None:
            continue
        flags = set(text.split())
        found = flags if found is None else found & flags
    return found


def _support(flags: set[str] | None, wanted: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    if flags is None:
        return UNKNOWN, ()
    have = tuple(f for f in wanted if f in flags)
    return (YES if have else NO), have


def _model(blocks: list[dict[str, str]]) -> str:
    for key in ("model name", "Model Name", "cpu model", "Hardware", "Processor"):
        for block in blocks:
            if block.get(key):
                return block[key]
    return platform.processor() or platform.machine() or UNKNOWN


def _physical_cores(blocks: list[dict[str, str]]) -> int | None:
    """Cores, not hyper-threads: distinct (package, core) pairs. Arm kernels do not list core
    ids (one thread per core there), so the topology in sysfs decides, else None."""
    pairs = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
    if pairs:
        return len(pairs)
    return _sysfs_cores()


def _sysfs_cores() -> int | None:
    root = Path("/sys/devices/system/cpu")
    siblings = set()
    for path in root.glob("cpu[0-9]*/topology/thread_siblings_list"):
        text = _read(path)
        if text:
            siblings.add(text.strip())
    return len(siblings) or None


def _usable_threads() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _torch_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # torch before 2.1
        return UNKNOWN


def _notes(torch_cuda: str | None, devices: tuple[CudaDevice, ...], cpu: Cpu) -> list[str]:
    """Plain answers to the questions users ask: is the GPU used, will bf16 help."""
    notes = []
    if torch_cuda is None:
        notes.append(
            f"This torch ({torch.__version__}) is a CPU build: no GPU can be used. To use an "
            "NVIDIA GPU, install a CUDA build of torch (the README says how).")
    elif not devices:
        notes.append(
            f"This torch is built for CUDA {torch_cuda} but sees no CUDA device: check the "
            "NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES.")
    else:
        notes.append(
            f"{len(devices)} CUDA device(s) usable. geoddu runs on the CPU unless told "
            "otherwise: --gpus N or --device cuda:I (QGIS: the Device parameter).")
    if cpu.bf16 == NO:
        notes.append("This CPU has no bf16 instructions: bf16 on the CPU would be emulated, "
                     "slower than fp32, so auto keeps fp32 here.")
    if sys.platform != "linux" and cpu.bf16 == UNKNOWN:
        notes.append("bf16/int8 instruction support is not reported on this system; the "
                     "precision probe measures what each precision does instead.")
    return notes
