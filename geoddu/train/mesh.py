"""The process layout of a training run under torchrun: a 2-D (data x spatial) device mesh.

`--spatial-ranks S` ranks share each global patch (each runs its block of the patch's
subimages, `geoddu.train.spatial.SpatialTraining`); WORLD_SIZE / S such groups are data parallel
over the batch. Ranks are laid out data-major (rank = d * S + s), so the ranks of one patch are
neighbours, which torchrun puts on the same host: the F maps of a patch stay inside a host when
S divides the processes per node. (BatchNorm and loss sums, a few hundred values per layer, and
the gradient all-reduce of data parallelism span all ranks.)

One process is the 1 x 1 mesh: no process group, every property says "alone".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import GeodduError
from ..parallel.collectives import all_reduce_sum
from ..parallel.group import AgreedError, agree

T = TypeVar("T")


@dataclass
class TrainMesh:
    """Who this rank is in the run and the groups its collectives use."""

    data_size: int = 1
    spatial_size: int = 1
    data_rank: int = 0
    spatial_rank: int = 0
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh, None for one process

    @classmethod
    def create(cls, spatial_ranks: int = 1, device_type: str = "cpu") -> TrainMesh:
        """The mesh of the initialised default group (one process: the trivial mesh)."""
        if not (dist.is_available() and dist.is_initialized()):
            if spatial_ranks != 1:
                raise GeodduError("--spatial-ranks needs several ranks: start with torchrun "
                                  "(or --ranks N)")
            return cls()
        world = dist.get_world_size()
        if spatial_ranks < 1 or world % spatial_ranks:
            # every rank finds it: rank 0 says it
            raise AgreedError(f"--spatial-ranks {spatial_ranks} does not divide the {world} ranks")
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device_type, (world // spatial_ranks, spatial_ranks),
                                mesh_dim_names=("data", "spatial"))
        return cls(
            data_size=world // spatial_ranks,
            spatial_size=spatial_ranks,
            data_rank=mesh.get_local_rank("data"),
            spatial_rank=mesh.get_local_rank("spatial"),
            mesh=mesh,
        )

    @property
    def world(self) -> int:
        return self.data_size * self.spatial_size

    @property
    def rank(self) -> int:
        return self.data_rank * self.spatial_size + self.spatial_rank

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and logs and reports progress."""
        return self.rank == 0

    @property
    def spatial_group(self) -> Any:
        return self.mesh.get_group("spatial") if self.mesh is not None else None

    @property
    def data_group(self) -> Any:
        return self.mesh.get_group("data") if self.mesh is not None else None

    @property
    def world_group(self) -> Any:
        return dist.group.WORLD if self.mesh is not None else None

    def reduce_sum(self) -> Any:
        """Adds a tensor over every rank holding part of the batch (autograd-aware), or None."""
        if self.world == 1:
            return None
        return partial(all_reduce_sum, group=self.world_group)

    def share(self, n: int) -> slice:
        """This rank's data-parallel share of a global batch of n patches (balanced,
        contiguous; may be empty for a short last batch)."""
        base, extra = divmod(n, self.data_size)
        lo = self.data_rank * base + min(self.data_rank, extra)
        return slice(lo, lo + base + (self.data_rank < extra))

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (for the resume state: one host need hold the run)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (cheap insurance at the start)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def agreed(self, fn: Callable[[], T]) -> T:
        """`fn()` on every rank; a user error (GeodduError) on any rank is raised on all."""
        result, error = None, None
        try:
            result = fn()
        except GeodduError as exc:
            error = exc
        self.agree(error)
        return result

    def agree(self, error: BaseException | None) -> None:
        """Raise the same error on every rank if any rank had one."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        agree(error, None)
