"""Which devices run the subimage work, and the precision they run it in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import GeodduError
from . import PRECISIONS


def resolve_devices(device: str | None = None, gpus: int | None = None) -> list[torch.device]:
    """`--gpus N` -> cuda:0..N-1; `--device cuda:1` -> that one; default the CPU.

    `device` may list several devices separated by commas ("cuda:0,cuda:2", or "cpu,cpu" to run
    the multi-device path on one CPU, which is how the tests exercise it without a GPU).
    """
    if gpus is not None:
        if device not in (None, "cuda"):
            raise GeodduError("use either --gpus N or --device, not both")
        if gpus < 1:
            raise GeodduError("--gpus must be at least 1")
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > have:
            raise GeodduError(f"--gpus {gpus}: this host has {have} CUDA device(s)")
        return [torch.device("cuda", i) for i in range(gpus)]
    names = [d.strip() for d in (device or "cpu").split(",") if d.strip()]
    out = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise GeodduError(f"unknown device {name!r}") from exc
        if dev.type == "cuda":
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = dev.index or 0
            if index >= have:
                raise GeodduError(
                    f"device {name} asked for, but this machine has {have} CUDA device(s)"
                )
            dev = torch.device("cuda", index)
        elif dev.type != "cpu":
            raise GeodduError(f"unsupported device {name!r}; use cpu or cuda[:N]")
        out.append(dev)
    return out


def resolve_device(device: str | None, one_device_message: str) -> torch.device:
    """The one device `device` names; `one_device_message` is the error for a list."""
    devices = resolve_devices(device)
    if len(devices) != 1:
        raise GeodduError(one_device_message)
    return devices[0]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision where the device supports it; fp32 means plain float32."""
    if precision not in PRECISIONS:
        raise GeodduError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        yield
        return
    if device.type == "cpu" and precision == "fp16":
        raise GeodduError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        yield
