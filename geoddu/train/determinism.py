"""`geoddu train --deterministic`: two runs of the same command give bit-identical weights.

A plain run is already reproducible in what it draws: data order, augmentation and dropout
masks come from (seed, epoch, step), and `last.pt` carries every RNG state. What still varies
between runs is arithmetic: kernels that pick an algorithm by timing (cuDNN's benchmark mode),
kernels that add with atomics in whatever order threads arrive (several CUDA backward passes),
and CPU kernels whose reductions are split over as many threads as the machine offers, so the
same run on another core count (or another `OMP_NUM_THREADS`) rounds differently. Deterministic
mode removes those: deterministic algorithms only, cuDNN's benchmark off, one intra-op thread.

It costs speed, not results: on the CPU a step runs on one core (a machine with N cores trains
up to N times slower), on CUDA some kernels fall back to slower deterministic ones, and an op
without a deterministic implementation stops the run with one line instead of running.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import GeodduError

# cuBLAS needs a fixed workspace to give the same sums twice (CUDA >= 10.2); it is read when
# the first cuBLAS handle is made, so it is set before the run's first CUDA matmul.
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """torch (CPU and every CUDA device), Python's and numpy's global generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's numpy and Python generators from the seed torch gave it (the
    loader's base seed, drawn from the run's restored generator, plus the worker's id), so a
    dataset that draws from them draws the same in every run."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels and one intra-op thread while the block runs (the Python API may
    train in a process that does other work: the settings are put back afterwards)."""
    if not enabled:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    except RuntimeError as exc:
        if "does not have a deterministic implementation" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        raise GeodduError(f"--deterministic: {first}; train without --deterministic on this "
                          f"device") from exc
    finally:
        algorithms, threads, benchmark, cudnn_deterministic = before
        torch.use_deterministic_algorithms(algorithms)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
