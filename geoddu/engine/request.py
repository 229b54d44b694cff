"""One segment job, described once: what to read, with which model, what to write, where.

Every front builds a :class:`SegmentRequest`: the CLI, the Python API (`geoddu.segment`), the
QGIS algorithm and its bridge. The request is checked once, when it is built, and every executor
takes it as it is. It is plain data with no torch and no open files, so the QGIS bridge can send
it to a `geoddu` subprocess as JSON (:meth:`to_json` / `geoddu segment --request FILE`) instead
of restating its options.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import GeodduError
from ..io.atomic import check_distinct_paths
from ..io.band_stack import DEFAULT_RESAMPLING, RESAMPLINGS
from ..io.sources import expand_sources
from ..io.warp import WARP_RESAMPLINGS
from ..parallel import PRECISION_CHOICES, PRECISIONS
from ..request_base import Check, JsonRequest, checked
from ..sizes import parse_bytes

__all__ = ["PRECISIONS", "SegmentRequest"]

# Bottleneck cells per side of one communication tile (before its halo): 256^2 cells x F=64
# maps x 4 bytes = 16 MB per tile, small on any device.
COMM_TILE_CELLS = 256
# Each of the two bottleneck stores stays in RAM below this size and moves to a scratch file
# above it: a fixed budget, so that peak memory does not grow with the scene.
STORE_MAX_RAM_BYTES = 16 * 2**20
# The one-pass schedule's strips: at most this many subimage columns wide, and their live skip
# connections ((reach + 1) rows of the strip) within this many bytes. Both fixed, so that peak
# memory does not grow with the scene; a budget too small for one column means two passes.
STRIP_CELLS = 8
SKIP_BUDGET_BYTES = 1 << 30
SCHEDULES = ("auto", "one-pass", "two-pass")
# What --probabilities and --confidence are written as (geoddu.io.writer.probability_writer).
PROBABILITY_DTYPES = ("float32", "uint8")
# Which grid the class map of a --resample run is written on (docs/resampling.md).
OUTPUT_GRIDS = ("scene", "model")

PathLike = str | os.PathLike


def _path(value: Any) -> Any:
    if isinstance(value, list | tuple):  # --mosaic: several inputs
        return tuple(os.fspath(v) for v in value)
    return None if value is None else os.fspath(value)


@dataclass(frozen=True)
class SegmentRequest(JsonRequest):
    """A segment job. Paths are kept as given (GDAL paths such as ``/vsicurl/`` included).

    The scene is ``src``, or bands in separate files stacked in the model's band order
    (``band_files``, or the ``assets`` of the STAC item ``stac``; ``band_resampling`` for
    files at another resolution than the first: geoddu.io.band_stack). ``src`` is then None.

    ``model`` is a checkpoint path, or an already loaded ``SegmentationModel`` (Python API).
    ``store_max_ram_bytes``, ``comm_tile_cells``, ``schedule``, ``strip_cells`` and
    ``skip_budget_bytes`` tune speed and memory and never change the result.
    """

    # One raster; None where band_files or stac name the scene; with ``mosaic``, several
    # (files, folders, .txt lists, VRTs) as one scene. output and model are keywords.
    src: str | tuple[str, ...] | None = None
    # None only for a mosaic written to output_dir.
    output: str | None = field(default=None, kw_only=True)
    model: Any = field(default=None, kw_only=True)
    bands: tuple[int, ...] | None = None
    subimage_size: int | None = None
    device: str | None = None
    gpus: int | None = None
    precision: str = "fp32"
    probabilities: str | None = None
    confidence: str | None = None
    # float32, or uint8 (p as round(p * 254), nodata 255, GDAL scale 1/254): both of the above.
    probabilities_dtype: str = "float32"
    cog: bool = False
    overwrite: bool = False
    aoi: str | None = None
    aoi_layer: str | None = None
    aoi_where: str | None = None
    vector: str | None = None
    vector_min_area: float | None = None
    vector_simplify: float | None = None
    scratch: str | None = None
    store_max_ram_bytes: int = STORE_MAX_RAM_BYTES
    comm_tile_cells: int = COMM_TILE_CELLS
    schedule: str = "auto"
    strip_cells: int = STRIP_CELLS
    skip_budget_bytes: int = SKIP_BUDGET_BYTES
    band_files: tuple[str, ...] | None = None
    stac: str | None = None
    assets: tuple[str, ...] | None = None
    band_resampling: str = checked(Check(choices=RESAMPLINGS), DEFAULT_RESAMPLING)
    # Keep progress beside the output and continue a killed run of the same job
    # (geoddu/engine/resume.py, docs/resume.md).
    resume: bool = False
    # --mosaic (geoddu.engine.mosaic): the inputs are one scene, a VRT over them; output is
    # one map over their union, or output_dir one map per input cut from it. target_crs and
    # resolution warp the inputs onto one grid.
    mosaic: bool = False
    output_dir: str | None = None
    target_crs: str | None = None
    resolution: float | None = None
    # The pixel-size rule (geoddu.engine.pixel_size, docs/resampling.md): ``resample``, one of
    # GDAL's warp kernels, reads the scene at the model's pixel size through a warped VRT;
    # ``output_grid`` "scene" puts the class map back on the scene's grid (nearest), "model"
    # leaves it on the warped grid. ``strict``: a pixel size unlike the model's stops the run
    # before any work instead of a warning.
    resample: str | None = checked(Check(choices=WARP_RESAMPLINGS), None)
    output_grid: str = checked(Check(choices=OUTPUT_GRIDS), "scene")
    strict: bool = False
    # A hard limit on the process's peak memory (bytes, or "1G"): the plan narrows its strips,
    # or takes two passes with the bottleneck maps on scratch, until its estimate fits, and
    # refuses before any work when nothing does (geoddu.engine.memory_limit).
    memory_limit: int | str | None = None
    # Set by --mosaic on the one-scene run over its VRT (a new file in a new folder every run):
    # the inputs it was built from, which is what --resume recognises the scene by.
    mosaic_of: tuple[str, ...] | None = None
    # Filled in, not given: the outputs by the names users know them by.
    outputs: Mapping[str, str] = field(init=False, repr=False, compare=False)

    # src, or band_files, or stac: one of them (checked when built).
    REQUIRED: ClassVar[tuple[str, ...]] = ("output", "model")
    FLAGS: ClassVar[Mapping[str, str]] = {"vector_min_area": "--min-area",
                                          "vector_simplify": "--simplify"}

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalised once, here
        for name in ("src", "output", "probabilities", "confidence", "aoi", "vector", "scratch",
                     "stac", "output_dir"):
            put(self, name, _path(getattr(self, name)))
        self._check_inputs()
        self._check_scene()
        if not isinstance(self.model, str | os.PathLike) and not hasattr(self.model, "net"):
            raise GeodduError("model: give a checkpoint path or a loaded model")
        if isinstance(self.model, os.PathLike):
            put(self, "model", os.fspath(self.model))
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if not bands or any(b < 1 for b in bands):
                raise GeodduError("--bands: band numbers start at 1")
            put(self, "bands", bands)
        for name in ("subimage_size", "gpus"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise GeodduError(f"{self.flag(name)} must be a positive integer")
        if self.precision not in PRECISION_CHOICES:
            raise GeodduError(
                f"unknown precision {self.precision!r}; choose from "
                f"{', '.join(PRECISION_CHOICES)}"
            )
        if self.memory_limit is not None:
            put(self, "memory_limit", parse_bytes(self.memory_limit))
        if self.schedule not in SCHEDULES:
            raise GeodduError(
                f"--schedule: unknown {self.schedule!r}; choose from {', '.join(SCHEDULES)}"
            )
        if self.probabilities_dtype not in PROBABILITY_DTYPES:
            raise GeodduError(
                f"--probabilities-dtype: unknown {self.probabilities_dtype!r}; choose from "
                f"{', '.join(PROBABILITY_DTYPES)}"
            )
        for name in ("vector_min_area", "vector_simplify"):
            value, flag = getattr(self, name), self.flag(name)
            if value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise GeodduError(f"{flag} must be a positive number, got {value}")
            if self.vector is None:
                raise GeodduError(f"{flag} needs --vector")
        if self.resume and self.wants_probabilities:
            raise GeodduError("--resume keeps class maps only; run --probabilities and "
                              "--confidence without --resume")
        if (self.aoi_layer is not None or self.aoi_where is not None) and self.aoi is None:
            raise GeodduError("--aoi-layer and --aoi-where need --aoi")
        outputs = {
            "output": self.output,
            "--probabilities": self.probabilities,
            "--confidence": self.confidence,
            "--vector": self.vector,
        }
        put(self, "outputs", {k: v for k, v in outputs.items() if v is not None})
        self.check_fields()  # every field is set now (outputs included)
        self._check_resample()
        for src in self.inputs:
            check_distinct_paths(
                self.outputs,
                {"input raster": src, "--aoi": self.aoi,
                 "model": self.model if isinstance(self.model, str) else None,
                 **{f"band file {p}": p for p in self.band_files or ()}},
            )

    @classmethod
    def required(cls, data: Mapping[str, Any]) -> tuple[str, ...]:
        # A mosaic's output_dir (one map per input) stands in for output.
        if data.get("output_dir") is not None:
            return tuple(n for n in cls.REQUIRED if n != "output")
        return cls.REQUIRED

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input rasters: one, or a mosaic's."""
        return self.src if isinstance(self.src, tuple) else (self.src,)

    def _check_inputs(self) -> None:
        """One raster and -o; or, with --mosaic, its inputs expanded and -o or --output-dir."""
        put = object.__setattr__
        if self.mosaic and (self.band_files is not None or self.stac is not None
                            or self.src is None):
            raise GeodduError("--mosaic takes its inputs as SRC, not --band-files or --stac")
        if self.mosaic and self.resume and self.output_dir is not None:
            # --resume keeps its progress beside the one map it finishes.
            raise GeodduError("--resume with --mosaic continues one map over the inputs: give "
                              "-o, not --output-dir")
        if not self.mosaic:
            if isinstance(self.src, tuple):
                if len(self.src) != 1:
                    raise GeodduError(
                        f"{len(self.src)} inputs: give --mosaic to take them as one scene, or "
                        "--output-dir to segment each on its own"
                    )
                put(self, "src", self.src[0])
            for name in ("output_dir", "target_crs", "resolution"):
                if getattr(self, name) is not None:
                    raise GeodduError(f"{self.flag(name)} goes with --mosaic")
            if self.output is None:
                raise GeodduError("give the output class map (-o/--output)")
            return
        put(self, "src", tuple(expand_sources(self.inputs)))
        if (self.output is None) == (self.output_dir is None):
            raise GeodduError("--mosaic: give either -o/--output (one map over all inputs) "
                              "or --output-dir (one map per input)")
        if self.output_dir is not None:
            if not os.path.isdir(self.output_dir):
                raise GeodduError(f"{self.output_dir}: output directory does not exist")
            for name in ("probabilities", "confidence", "vector"):
                if getattr(self, name) is not None:
                    raise GeodduError(f"{self.flag(name)} needs -o with --mosaic, not "
                                      "--output-dir")
        if self.resolution is not None and not (
            isinstance(self.resolution, int | float) and math.isfinite(self.resolution)
            and self.resolution > 0
        ):
            raise GeodduError(f"--resolution must be a positive number, got {self.resolution}")

    def _check_scene(self) -> None:
        """One scene: ``src``, or ``band_files``, or ``stac`` with ``assets``."""
        put = object.__setattr__
        for name in ("band_files", "assets"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str | os.PathLike):
                raise GeodduError(f"{self.flag(name)}: give a list, not one string")
            value = tuple(os.fspath(v) for v in value)
            if not value or not all(value):
                raise GeodduError(f"{self.flag(name)}: empty list or name")
            put(self, name, value)
        given = [n for n, v in (("SRC", self.src), ("--band-files", self.band_files),
                                ("--stac", self.stac)) if v is not None]
        if not given:
            raise GeodduError("give the raster to segment (SRC), or its bands as --band-files "
                              "or --stac")
        if len(given) > 1:
            raise GeodduError(f"{' and '.join(given)} both name the scene: give one")
        if self.assets is not None and self.stac is None:
            raise GeodduError("--assets needs --stac")
        if self.stac is not None and self.assets is None:
            raise GeodduError("--stac needs --assets: the item's assets, in the model's band "
                              "order")
        if self.src is None and self.bands is not None:
            raise GeodduError(f"--bands does not apply to {given[0]}: their order is the "
                              "model's band order")
        if self.src is not None and self.band_resampling != DEFAULT_RESAMPLING:
            raise GeodduError("--band-resampling needs --band-files or --stac")

    def _check_resample(self) -> None:
        if self.resample is None:
            if self.output_grid != "scene":
                raise GeodduError("--output-grid model needs --resample: without it the scene "
                                  "is read on its own grid")
            return
        if self.resume:
            raise GeodduError("--resume does not go with --resample: resample the scene first "
                              "(gdalwarp -tr), or run without --resume")
        if self.wants_probabilities and self.output_grid == "scene":
            raise GeodduError("--probabilities and --confidence are written on the model's "
                              "grid: add --output-grid model to --resample")
        if self.mosaic and self.output_dir is not None and self.output_grid == "model":
            raise GeodduError("--output-dir cuts each input's map on its own grid: use "
                              "--output-grid scene with --resample and --mosaic")

    @property
    def regrids_output(self) -> bool:
        """Whether the class map is computed on the model's grid and then written on the
        scene's (--resample with --output-grid scene)."""
        return self.resample is not None and self.output_grid == "scene"

    @property
    def scene_label(self) -> str:
        """The scene as messages and the plan name it."""
        if isinstance(self.src, tuple):
            return f"{len(self.src)} inputs as one scene"
        if self.src is not None:
            return self.src
        if self.band_files is not None:
            return ",".join(self.band_files)
        return f"{self.stac} (assets {','.join(self.assets or ())})"

    @property
    def wants_probabilities(self) -> bool:
        return self.probabilities is not None or self.confidence is not None

    # -- the subprocess route ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields; only for a request whose model is a path."""
        if not isinstance(self.model, str):
            raise GeodduError("a request with an in-memory model cannot be sent to a process")
        return super().to_dict()
