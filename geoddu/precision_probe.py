"""Which precision runs fastest on a device: a short measured probe, cached per machine.

:func:`choose_precision` is what ``--precision auto`` resolves to. It times 3x3 convolutions
at the levels of a U-Net (16 to 128 channels, channels-last, BatchNorm folded and ReLU fused as
:func:`geoddu.models.fusion.fuse_for_inference` does) in each candidate precision, run the way
the engine runs them: on the CPU fp32 and a **bf16 copy** of the layers, traced and frozen; on
CUDA fp32 and fp16/bf16 under autocast. It picks the fastest precision that beats fp32 by at
least :data:`MARGIN`, so it never picks one slower than fp32 (nor one that is barely faster:
reduced precision can change classes on near-ties, which only a clear speed-up pays for).

The result is cached in a JSON file (:func:`cache_dir`) under a key of what decides the speed:
the CPU model and flags (or the CUDA device), torch's thread count, and the torch and geoddu
versions. A cache that is corrupt or cannot be written never fails a run: the probe measures
again and warns once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import GeodduError, GeodduWarning
from .hardware import NO, Cpu, cpu_facts, cuda_devices, read_cpuinfo
from .parallel import PRECISIONS
from .version import __version__

#: A reduced precision is chosen only if it runs the probe at least this much faster than fp32.
MARGIN = 1.2
CACHE_ENV = "GEODDU_CACHE_DIR"
CACHE_FILE = "precision-probe.json"
FORMAT = 1  # of the cache file; another format is measured again and overwritten

# The workload: the levels of a U-Net, as (channels, tile side): at each, a double conv
# (2 x (3x3 conv + BatchNorm + ReLU)), the block DDU-Net's encoder and decoder are made of.
# Channels double as the side halves, so each level does the same work: wide, memory-bound
# layers at full resolution count as much as the deep, compute-bound ones. CUDA gets tiles
# twice the side and a batch, so that the GPU is busy.
LEVELS = ((16, 256), (32, 128), (64, 64), (128, 32))
CONVS = 2
CUDA_SCALE, CUDA_BATCH = 2, 8
# First runs on tiles of 1/SCOUT the side drop a precision that is emulated (oneDNN's
# reference kernels: tens of times slower) when the faster of two is SCOUT_LIMIT times slower
# than fp32 there, before it costs a whole measurement. Lenient: a busy machine's noise must
# not drop a precision that would win.
SCOUT, SCOUT_LIMIT = 4, 8.0
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 3, 10, 0.3

#: ``timer(device, precisions) -> {precision: seconds per run}``: how a probe measures.
Timer = Callable[[torch.device, Sequence[str]], Mapping[str, float]]


@dataclass
class Probe:
    """A probe's measurements and its choice for one device."""

    device: str
    choice: str
    seconds: dict[str, float]  # per run of the workload, by precision measured
    skipped: dict[str, str]  # precision -> why it was not measured
    margin: float
    workload: str
    key: dict[str, Any]
    measured_at: str
    probe_seconds: float  # how long measuring took
    cached: bool = False
    flops: float = 0.0  # per run of the workload
    speedup: dict[str, float] = field(default_factory=dict)

    def gflops(self) -> dict[str, float]:
        return {p: self.flops / s / 1e9 for p, s in self.seconds.items() if s > 0}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gflops": self.gflops()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        names = cls.__dataclass_fields__
        probe = cls(**{k: v for k, v in data.items() if k in names})
        if probe.choice not in PRECISIONS or "fp32" not in probe.seconds:
            raise ValueError(f"not a probe result: {dict(data)!r}")
        probe.seconds = {str(p): float(s) for p, s in probe.seconds.items()}
        return probe


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision a run asks for, made concrete for ``device``: ``auto`` becomes the cached
    probe's choice (:func:`choose_precision`); fp16 on the CPU and unknown names are refused
    in one line. Every front and executor resolves through here."""
    device = torch.device(device)
    if precision == "auto":
        precision = choose_precision(device)
    if precision not in PRECISIONS:
        raise GeodduError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision == "fp16":
        raise GeodduError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def choose_precision(device: str | torch.device = "cpu", *, refresh: bool = False) -> str:
    """The precision ``--precision auto`` runs on ``device``: "fp32", "bf16" or "fp16"."""
    return probe_precision(device, refresh=refresh).choice


def probe_precision(
    device: str | torch.device = "cpu",
    *,
    refresh: bool = False,
    timer: Timer | None = None,
    cache: str | os.PathLike | None = None,
) -> Probe:
    """The probe for ``device``, from the cache when this machine has measured it, else
    measured now (``refresh``: always) and cached.

    ``timer``: how to measure (default :func:`measure`); tests pass their own timings.
    ``cache``: the cache folder (default :func:`cache_dir`).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    key = cache_key(device)
    store = ProbeCache(Path(cache) if cache is not None else cache_dir())
    if not refresh:
        hit = store.get(key)
        if hit is not None:
            hit.cached = True
            return hit
    measured, skipped = candidates(device)
    start = time.perf_counter()
    seconds = dict((timer or measure)(device, measured))
    for p in measured:
        if p not in seconds:
            skipped.setdefault(p, f"over {SCOUT_LIMIT:g}x slower than fp32 on a first run")
    seconds = {p: float(s) for p, s in seconds.items() if p in measured}
    scale, batch = _scale(device)
    levels = ", ".join(f"{c} ch at {side * scale}^2" for c, side in LEVELS)
    probe = Probe(
        device=str(device),
        choice=pick(seconds),
        seconds=seconds,
        skipped=skipped,
        margin=MARGIN,
        workload=f"{CONVS} x (3x3 conv + ReLU), channels-last, batch {batch}, at {levels}",
        key=key,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        probe_seconds=time.perf_counter() - start,
        flops=sum(2.0 * 9 * c * c * (side * scale) ** 2 * batch * CONVS for c, side in LEVELS),
        speedup={p: seconds["fp32"] / s for p, s in seconds.items() if s > 0},
    )
    store.put(key, probe)
    return probe


def pick(seconds: Mapping[str, float], margin: float = MARGIN) -> str:
    """The fastest precision in ``seconds`` (time per run) that is at least ``margin`` times
    faster than fp32; fp32 when none is."""
    base = seconds["fp32"]
    best = "fp32"
    for precision, s in seconds.items():
        if s > 0 and base / s >= margin and s < seconds[best]:
            best = precision
    return best


def candidates(device: torch.device, cpu: Cpu | None = None) -> tuple[list[str], dict[str, str]]:
    """The precisions worth measuring on ``device`` (fp32 first), and why the others are not.
    ``cpu``: the CPU's facts (default: this machine's)."""
    skipped: dict[str, str] = {}
    if device.type == "cuda":
        index = device.index or 0
        devices = cuda_devices()
        measured = ["fp32", "fp16"]
        if index < len(devices) and devices[index].bf16:
            measured.append("bf16")
        else:
            skipped["bf16"] = "no bf16 tensor cores (compute capability below 8.0)"
        return measured, skipped
    skipped["fp16"] = "needs a CUDA device"
    cpu = cpu or cpu_facts(read_cpuinfo())
    if cpu.bf16 == NO:
        # oneDNN would emulate it: slower than fp32, and on some CPUs far slower.
        skipped["bf16"] = "this CPU has no bf16 instructions (avx512_bf16, amx_bf16)"
        return ["fp32"], skipped
    return ["fp32", "bf16"], skipped


def cache_key(device: torch.device) -> dict[str, Any]:
    """What decides the probe's result: the device, the software, and the CPU threads."""
    key: dict[str, Any] = {"torch": torch.__version__, "geoddu": __version__}
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        key.update(device="cuda", name=props.name, capability=f"{props.major}.{props.minor}",
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        cpu = cpu_facts(read_cpuinfo())
        key.update(device="cpu", model=cpu.model, capability=cpu.torch_capability,
                   bf16_flags=list(cpu.bf16_flags), threads=torch.get_num_threads())
    return key


# --- measuring --------------------------------------------------------------------------------


def measure(device: torch.device, precisions: Sequence[str]) -> dict[str, float]:
    """Seconds per run of the workload in each of ``precisions`` on ``device`` (fp32 first).

    The precisions take turns, round after round, and each keeps its fastest run: another
    process's load on a shared machine then slows them all alike, and the minimum is the
    machine's own speed. A precision more than :data:`SCOUT_LIMIT` times slower than fp32 on
    small tiles first is not measured further (it is left out of the result).
    """
    torch.manual_seed(0)
    with torch.no_grad():
        runs = {p: _runner(device, p) for p in precisions}
        scout = {p: min(_time(run, SCOUT, device) for _ in range(2))
                 for p, run in runs.items()}
        runs = {p: run for p, run in runs.items()
                if p == "fp32" or scout[p] <= SCOUT_LIMIT * scout["fp32"]}
        for run in runs.values():  # warm-up: oneDNN/cuDNN pick and build their kernels
            _time(run, 1, device)
        best = dict.fromkeys(runs, float("inf"))
        start = time.perf_counter()
        rounds = 0
        while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS
                                      and time.perf_counter() - start < MIN_SECONDS):
            for p, run in runs.items():
                best[p] = min(best[p], _time(run, 1, device))
            rounds += 1
    return best


def _scale(device: torch.device) -> tuple[int, int]:
    """(tile side factor, batch) of the workload on ``device``."""
    return (CUDA_SCALE, CUDA_BATCH) if device.type == "cuda" else (1, 1)


def _level(channels: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for _ in range(CONVS):
        blocks += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks).eval()


def _runner(device: torch.device, precision: str) -> Callable[[int], None]:
    """``run(divisor)``: one forward pass of every level, on tiles of 1/divisor the side, as
    the engine runs ``precision`` on ``device``."""
    from .models.fusion import fuse_for_inference

    scale, batch = _scale(device)
    bf16_copy = device.type == "cpu" and precision == "bf16"
    dtype = torch.bfloat16 if bf16_copy else torch.float32
    steps = []
    for channels, side in LEVELS:
        net = fuse_for_inference(_level(channels), conv_relu=bf16_copy).to(device)
        net = net.to(dtype).to(memory_format=torch.channels_last)
        tiles = {d: torch.randn(batch, channels, side * scale // d, side * scale // d,
                                device=device).to(dtype).contiguous(
                                    memory_format=torch.channels_last)
                 for d in (1, SCOUT)}
        if device.type == "cpu" and not bf16_copy:  # load_model's rule: bf16 copies stay eager
            net = _frozen(net, tiles[SCOUT])
        steps.append((net, tiles))

    def run(divisor: int) -> None:
        # CUDA keeps fp32 weights under autocast, as the engine does; on the CPU the copy
        # already is in its precision.
        with contextlib.ExitStack() as stack:
            if device.type == "cuda":
                from .parallel.devices import autocast

                stack.enter_context(autocast(device, precision))
            for net, tiles in steps:
                net(tiles[divisor])

    return run


def _frozen(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """Traced and frozen, as load_model does for fp32 CPU models (oneDNN pre-packs the
    weights); eager where tracing fails, as load_model then runs it too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation: load_model traces too
            return torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))
    except Exception:  # noqa: BLE001 - an untraceable module simply stays eager
        return net


def _time(run: Callable[[int], None], divisor: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(divisor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# --- the cache --------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where geoddu caches what it measured: ``$GEODDU_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/geoddu``, else ``%LOCALAPPDATA%\\geoddu`` on Windows, else
    ``~/.cache/geoddu``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "geoddu"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "geoddu"
    return Path.home() / ".cache" / "geoddu"


_warned: set[tuple[str, str]] = set()  # (cache file, problem): each said once per process


class ProbeCache:
    """The probes measured on this machine, in ``FOLDER/precision-probe.json`` by key."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / CACHE_FILE

    def get(self, key: Mapping[str, Any]) -> Probe | None:
        entry = self._entries().get(_key_text(key))
        if entry is None:
            return None
        try:
            return Probe.from_dict(entry)
        except (TypeError, ValueError) as exc:
            self._warn("read", f"ignoring an unreadable entry in the precision cache "
                               f"{self.path} ({exc.__class__.__name__}); measuring again")
            return None

    def put(self, key: Mapping[str, Any], probe: Probe) -> None:
        entries = self._entries(quiet=True)
        entries[_key_text(key)] = {k: v for k, v in probe.to_dict().items() if k != "cached"}
        text = json.dumps({"format": FORMAT, "entries": entries}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A whole new file renamed over the old one: a reader never sees half of it.
            fd, tmp = tempfile.mkstemp(prefix=".precision-probe-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            self._warn("write", f"cannot write the precision cache {self.path} "
                                f"({exc.strerror or exc}); the probe will run again next time")

    def _entries(self, quiet: bool = False) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except (FileNotFoundError, NotADirectoryError):  # nothing cached yet
            return {}
        except OSError as exc:
            if not quiet:
                self._warn("read", f"cannot read the precision cache {self.path} "
                                   f"({exc.strerror or exc}); measuring again")
            return {}
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("another format")
            return data["entries"]
        except (ValueError, AttributeError) as exc:
            if not quiet:
                self._warn("read", f"ignoring the unreadable precision cache {self.path} "
                                   f"({exc.__class__.__name__}); measuring again")
            return {}

    def _warn(self, problem: str, message: str) -> None:
        if (str(self.path), problem) not in _warned:
            _warned.add((str(self.path), problem))
            warnings.warn(message, GeodduWarning, stacklevel=3)


def _key_text(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))
