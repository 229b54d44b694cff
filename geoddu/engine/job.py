"""A request made ready to run: the model loaded, the scene opened with the right bands, the
area of interest read, the plan made (`planner.make_plan`, what `geoddu segment --plan`
prints), the scratch folder checked. Both executors (local and torchrun ranks) start from a
:class:`Job` and run its plan as it is, and both finish the same way (:func:`finish_outputs`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GeodduError
from ..io.atomic import commit_all
from ..io.raster import RasterSource
from ..predictor import SegmentationModel, load_model
from .mapstore import MapStore
from .planner import JobPlan, concrete_precision, make_plan, open_scene, read_area
from .request import SegmentRequest
from .resampling import Resampled, read_at_model_pixels, regrid_outputs
from .scene_check import warn_if_unlike
from .scene_source import scene_path

__all__ = ["Job", "SegmentResult", "finish_outputs", "open_job"]


@dataclass
class SegmentResult:
    output: Path
    width: int
    height: int
    subimages: int
    skipped: int
    communicated: bool
    devices: list[str]
    seconds: float
    peak_rss_mb: float
    encoder_runs: int
    schedule: str = "two passes"
    map_store_on_disk: bool = False
    extra_outputs: list[Path] = field(default_factory=list)
    precision: str = "fp32"  # what ran: --precision auto resolved

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        mode = (
            f"with communication, in {self.schedule}"
            if self.communicated
            else "independent subimages (C=N)"
        )
        return (
            f"{self.output}: {self.width} x {self.height} px, {self.subimages} subimages "
            f"({self.skipped} all-nodata skipped), {mode}, on {', '.join(self.devices)} "
            f"in {self.precision}; "
            f"{self.seconds:.1f} s, {self.megapixels_per_second:.2f} Mpx/s, "
            f"peak RSS {self.peak_rss_mb:.0f} MB"
        )


@dataclass
class Job:
    request: SegmentRequest
    model: SegmentationModel
    source: RasterSource
    plan: JobPlan
    area: Any  # the area of interest in the scene's CRS (a shapely geometry), or None
    scratch: str
    started: float
    stores: list[MapStore] = field(default_factory=list)
    # What the scene needs while open (the VRT of --band-files), closed after it.
    resources: ExitStack = field(default_factory=ExitStack)
    # --resample: the scene's own grid and the model's, which `source` is read on.
    resampled: Resampled | None = None

    @property
    def store_shape(self) -> tuple[int, int, int]:
        return (self.model.net.comm_features, self.plan.cells.cell, self.plan.cells.cell)

    def store(self) -> MapStore:
        """A bottleneck store for the whole grid (RAM, or a scratch file above the budget),
        closed with the job."""
        store = MapStore(
            self.plan.cells.partition.grid,
            self.store_shape,
            self.request.store_max_ram_bytes,
            self.scratch,
        )
        self.stores.append(store)
        return store

    @property
    def map_store_on_disk(self) -> bool:
        return any(s.on_disk for s in self.stores)

    def close(self) -> None:
        """Close the stores (their scratch space goes) and the scene. Idempotent."""
        for s in self.stores:
            s.close()
        self.source.close()
        self.resources.close()

    @contextmanager
    def running(self, writers: dict[str, Any]) -> Iterator[None]:
        """An executor's body: on any failure every output is aborted (its temporary files
        go); in any case the job is closed."""
        try:
            yield
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        finally:
            self.close()

    def result_fields(self) -> dict[str, Any]:
        """What every executor's result reports about the job itself (the size: the class
        map's)."""
        grid = self.resampled.output if self.resampled is not None else self.source
        return {
            "output": Path(self.request.output),
            "width": grid.width,
            "height": grid.height,
            "subimages": len(self.plan.cells.decode),
            "communicated": self.plan.cells.communicates,
            "seconds": time.perf_counter() - self.started,
            "map_store_on_disk": self.map_store_on_disk,
            "precision": self.request.precision,
        }


def scratch_dir(scratch: str | os.PathLike | None) -> str:
    """The folder for the bottleneck store's scratch file: ``--scratch``, else the system's."""
    folder = os.fspath(scratch) if scratch is not None else tempfile.gettempdir()
    if not os.path.isdir(folder):
        raise GeodduError(f"--scratch {folder}: no such directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GeodduError(f"--scratch {folder}: directory is not writable")
    return folder


def check_scratch_space(scratch: str, needed: int) -> None:
    """Refuse before any work when the bottleneck stores that go to scratch files (the plan's
    `memory.scratch_bytes`) would not fit the scratch folder."""
    if not needed:
        return
    free = shutil.disk_usage(scratch).free
    if free < needed:
        raise GeodduError(
            f"--scratch {scratch}: the bottleneck store needs {needed / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free; free space or choose another folder with --scratch"
        )


def open_job(
    request: SegmentRequest,
    device: Any = None,
    devices: list[str] | None = None,
    *,
    world: int = 1,
    rank: int = 0,
) -> Job:
    """Load, open, read and plan; every user error surfaces here, before any work.

    `devices`: the devices this process runs the job on (the local executor); `world` > 1:
    the job of torchrun rank `rank`, on `device`."""
    started = time.perf_counter()
    request = concrete_precision(request, device or (devices[0] if devices else "cpu"))
    if request.vector is not None:
        from ..vectorize import driver_for

        driver_for(request.vector)  # an unknown format fails now, not after the whole scene
        if Path(request.vector).exists() and not request.overwrite:
            raise GeodduError(f"{request.vector} exists; pass --overwrite to replace it")
    scratch = scratch_dir(request.scratch)
    model = request.model
    if not isinstance(model, SegmentationModel):
        model = load_model(model, device=device or "cpu", precision=request.precision)
    else:
        if device is not None and model.device != device:
            model = model.to(device)
        model = model.with_precision(request.precision)
    model.eval()
    resources = ExitStack()
    try:
        # Rank 0 alone writes outputs: other ranks' hosts need not have the output folder.
        path, bands = resources.enter_context(
            scene_path(request, len(model.spec.bands), beside_output=rank == 0))
        source = open_scene(path, bands, model.spec)
        source, resampled = read_at_model_pixels(request, model.metadata, source, resources,
                                                 beside_output=rank == 0)
    except BaseException:
        resources.close()
        raise
    try:
        warn_if_unlike(model.metadata, source, request.scene_label)
        area = read_area(request, source)
        if world > 1:
            devices = [str(model.device)]
        plan = make_plan(request, model.spec, source, area, devices, world, rank,
                         resampled=resampled)
        check_scratch_space(scratch, plan.memory.scratch_bytes)
    except BaseException:
        source.close()
        resources.close()
        raise
    return Job(plan.request, model, source, plan, area, scratch, started, resources=resources,
               resampled=resampled)


def finish_outputs(
    job: Job,
    writers: dict[str, Any],
    progress: Callable[[str, int, int], None] | None,
    cancel: Callable[[], bool] | None,
) -> list[Path]:
    """Put the class map on the scene's grid (--resample, --output-grid scene), polygonise
    (with --vector) from the finished, not yet renamed class map, then rename every output
    into place together. Returns the outputs beside the class map."""
    request = job.request
    extra = [Path(p) for p in (request.probabilities, request.confidence) if p is not None]
    regrid_outputs(job, writers)  # --resample --output-grid scene: back on the scene's grid
    if request.vector is None:
        commit_all(w.output for w in writers.values())
        return extra
    from ..vectorize import remove_vector, vectorize

    # If this fails, no output appears; if the rasters' rename fails, the polygons go too.
    vectorize(
        writers["classes"].finished_path,
        request.vector,
        min_area=request.vector_min_area,
        simplify=request.vector_simplify,
        overwrite=request.overwrite,
        memory_limit=request.memory_limit,
        progress=progress,
        cancel=cancel,
    )
    try:
        commit_all(w.output for w in writers.values())
    except BaseException:
        remove_vector(request.vector)
        raise
    return [*extra, Path(request.vector)]
