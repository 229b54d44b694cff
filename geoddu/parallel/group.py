"""The torch.distributed process group: joining it, who this rank is, agreeing on errors."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import GeodduError

DEFAULT_TIMEOUT_S = 1800


class AgreedError(GeodduError):
    """A user error every rank raised together (so only rank 0 needs to print it)."""


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher setting RANK/WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the group torchrun describes in the environment; return this rank's device.

    CUDA hosts get the mixed backend: NCCL for CUDA tensors, gloo for the CPU tensors the
    segment engine exchanges. `timeout_s` bounds every collective and point-to-point wait, so
    a rank that hangs ends the whole job with an error instead of a silent hang.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def global_rank(rank: int, group: Any) -> int:
    """The default group's rank of `group`'s rank `rank` (point-to-point calls want it)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def agree(error: BaseException | None, group: Any) -> None:
    """Raise the same error on every rank if any rank had one (before any compute starts)."""
    msg = None if error is None else (str(error) or type(error).__name__)
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, msg, group=group)
    for r, m in enumerate(gathered):
        if m is not None:
            if error is not None and not isinstance(error, GeodduError):
                raise error  # a bug, not a user error: keep the traceback on the rank that had it
            prefix = "" if r == 0 or m == msg else f"rank {r}: "
            raise AgreedError(prefix + m) from error


def wrap_comm_error(what: str, exc: BaseException) -> GeodduError:
    """A failed collective or point-to-point call as one line for the user."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return GeodduError(f"{what} failed (a rank died or the collective timed out): {first}")


def broadcast(value: Any, group: Any) -> Any:
    """The group's first rank's `value` (any picklable object) on every rank of the group."""
    box = [value]
    dist.broadcast_object_list(box, src=global_rank(0, group), group=group)
    return box[0]
