"""The scene a job reads, after the pixel-size rule (geoddu.engine.pixel_size): as it is, or
stopped (``--strict``), or read at the model's pixel size (``--resample``).

With ``--resample`` the scene is swapped for a GDAL warped VRT of it on the model's grid
(geoddu.io.warp), in the output's private temporary folder for a run (GDAL's memory for a plan
or a rank that writes nothing); every executor and the plan then see that VRT as the scene.
With ``--output-grid scene`` the class map, computed on the model's grid, is put back on the
scene's own grid by nearest neighbour when the run finishes (:func:`regrid_outputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from ..errors import GeodduError
from ..io.raster import RasterSource, open_raster
from ..io.warp import Grid, model_grid, regrid_class_map, warped_scene
from .pixel_size import PixelSize, model_pixel_size, pixel_difference, same_units, size_text
from .request import SegmentRequest

__all__ = ["Resampled", "read_at_model_pixels", "regrid_outputs"]


@dataclass(frozen=True)
class Resampled:
    """A scene read on another grid: its own (``scene``) and the one read (``model``)."""

    method: str
    scene: Grid
    model: Grid
    output_grid: str
    units: str | None

    @property
    def output(self) -> Grid:
        """The grid the class map is written on."""
        return self.scene if self.output_grid == "scene" else self.model

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "output_grid": self.output_grid, "units": self.units,
                "scene": self.scene.to_dict(), "model": self.model.to_dict()}

    def describe(self) -> str:
        """One line of the plan."""
        s, m = self.scene, self.model
        out = self.output
        return (f"{s.width} x {s.height} px of {size_text(s.pixel_size, self.units)} read at the "
                f"model's {size_text(m.pixel_size, self.units)} pixels ({self.method}, GDAL "
                f"warped VRT); class map on the {self.output_grid}'s grid, "
                f"{out.width} x {out.height} px")


def _scene_pixels(source: RasterSource) -> PixelSize | None:
    from ..data.base import pixel_size_of

    size, units = pixel_size_of(source)
    return None if size is None else PixelSize((size[0], size[1]), units)


def _model_name(request: SegmentRequest) -> str:
    return request.model if isinstance(request.model, str) else "the model"


def read_at_model_pixels(
    request: SegmentRequest,
    metadata: Mapping[str, Any],
    source: RasterSource,
    resources: ExitStack,
    *,
    beside_output: bool,
) -> tuple[RasterSource, Resampled | None]:
    """The scene to read (``source``, or a new source on its warped VRT, whose cleanup goes
    into ``resources``), after the pixel-size rule; ``source`` is closed if it is replaced or
    if this fails. ``beside_output``: the VRT goes into the output's private temporary
    folder (a run that writes the output), else into GDAL's memory."""
    try:
        model = model_pixel_size(metadata)
        scene = _scene_pixels(source)
        if request.resample is None:
            found = pixel_difference(model, scene) if request.strict else None
            if found:
                raise GeodduError(f"--strict: {request.scene_label} {found[0]}; {found[1]}")
            return source, None
        if model is None:
            raise GeodduError(
                f"--resample: {_model_name(request)} records no pixel size (its card's "
                "pixel_size): resample the scene yourself (gdalwarp -tr), or run without "
                "--resample")
        if scene is None or source.crs is None:
            raise GeodduError(f"--resample: {request.scene_label} is not georeferenced, so "
                              "it has no pixel size to resample from")
        if not same_units(scene.units, model.units):
            what, advice = pixel_difference(model, scene) or ("", "")
            raise GeodduError(f"--resample: {request.scene_label} {what}; {advice} first")
        own = Grid(source.crs, source.transform, source.width, source.height)
        grid = model_grid(own, model.size)
        beside = request.output if beside_output else None
        path = resources.enter_context(
            warped_scene(source.path, grid, request.resample, beside=beside))
        warped = open_raster(path, bands=source.bands)
    except BaseException:
        source.close()
        raise
    source.close()
    resampled = Resampled(request.resample, own, grid, request.output_grid,
                          scene.units or model.units)
    return warped, resampled


def regrid_outputs(job: Any, writers: dict[str, Any]) -> None:
    """With --output-grid scene: the finished class map on the model's grid (a temporary file,
    never committed) replaced by the same classes on the scene's grid, read back in full. On
    failure every writer is aborted."""
    request, resampled = job.request, job.resampled
    if resampled is None or not request.regrids_output:
        return
    on_model = writers["classes"]
    try:
        writers["classes"] = regrid_class_map(
            on_model.finished_path, resampled.scene, request.output, cog=request.cog,
            overwrite=request.overwrite)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    on_model.abort()  # an intermediate: its temporary file goes
