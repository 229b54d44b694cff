"""The whole answer to "what does this machine have, and what should geoddu run in?": the
machine's facts, the precision probe of each device, and (given a checkpoint) its Mpx/s per
precision, and the installed versions beside the release pins (:mod:`.pins`). One function for
every front: ``geoddu info --hardware`` prints it, the QGIS plugin shows it (in-process, or as
that command's JSON)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .hardware import machine
from .model_throughput import checkpoint_throughput
from .pins import package_versions
from .precision_probe import CACHE_FILE, cache_dir, probe_precision


def hardware_report(
    device: str | None = None,
    model: str | os.PathLike | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """The report as one JSON-serialisable dict.

    ``device``: the device(s) to probe, as ``--device`` takes them ("cpu", "cuda:1",
    "cpu,cuda:0"); default the CPU and every CUDA device. ``model``: a checkpoint to time in
    each precision on those devices. ``refresh``: measure again instead of using the cache.
    """
    facts = machine()
    devices = _devices(device, len(facts.cuda))
    probes = [probe_precision(d, refresh=refresh) for d in devices]
    out: dict[str, Any] = {
        "machine": facts.to_dict(),
        "probes": [p.to_dict() for p in probes],
        "auto": {p.device: p.choice for p in probes},
        "cache": str(cache_dir() / CACHE_FILE),
        # Which versions run here, against those the release was tested with.
        "versions": package_versions(),
    }
    if model is not None:
        out["checkpoint"] = [checkpoint_throughput(model, d) for d in devices]
    return out


def _devices(device: str | None, cuda_count: int) -> list[torch.device]:
    if device:
        from .parallel.devices import resolve_devices

        return list(dict.fromkeys(resolve_devices(device)))  # "cpu,cpu" probes once
    return [torch.device("cpu"), *(torch.device("cuda", i) for i in range(cuda_count))]
