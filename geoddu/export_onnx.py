"""A DDU-Net checkpoint as one ONNX graph for one image size, in the form QGIS's Deepness reads.

The graph holds the whole model for an H x W image cut into N x M equal subimages: the input's
cast (uint8) and normalisation, the encoder on every subimage, the communication network over
the stitched bottleneck mosaic (one mosaic per image of the batch), the decoders, and a softmax.
Its input is NCHW with a free batch dimension; its output is (batch, classes, H, W)
probabilities, the shape Deepness's Segmentor takes (it argmaxes over axis 1).

Deepness feeds every model `(x / 255 - standardization_mean) / standardization_std` as float32,
x being the raster's own values. The checkpoint's normalisation is inside the graph (so that
plain onnxruntime users feed raw values, as `predict` takes them), so the metadata asks Deepness
for mean 0 and std 1/255: its standardisation then only undoes its own division by 255 and
nothing is normalised twice. That round trip costs at most one float32 ulp per input value.

The Deepness metadata keys and their readers are those of PUTvision/qgis-plugin-deepness
(src/deepness/processing/models/model_base.py) at commit f450c63 (plugin 0.6.5).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import GeodduError, GeodduWarning, first_line
from .io.atomic import AtomicOutput
from .models.ddunet import DDUNet
from .models.execution import as_grid, flatten_grid, on_mosaic, tree_cat
from .models.fusion import fuse_for_inference
from .partition import Partition
from .version import __version__

INPUT_DTYPES = ("float32", "uint8")
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
# Deepness pins onnxruntime 1.12-1.17 (python_requirements/requirements.txt); 1.12 runs opset 17
# at IR version 8, so that is the default, and the IR version is kept at the lowest the opset
# allows.
DEFAULT_OPSET = 17
# The comm_input slice has a traced (dynamic) start, which needs opset 10; 20 is the last opset
# torch's TorchScript-based exporter writes (torch.onnx._constants, torch 2.13).
OPSETS = (10, 20)
# Deepness's own default tile overlap (percent of the tile size), written so that it shows.
DEFAULT_TILES_OVERLAP = 15
# Torch's ONNX graph must agree with the torch model it came from; float32 rounding in another
# runtime stays far below this.
CHECK_TOLERANCE = 1e-4
EXTRA_HINT = "pip install 'geoddu[onnx]'"
_METRE = {"metre", "metres", "meter", "meters", "m"}


def require_onnx() -> tuple[Any, Any]:
    """The onnx and onnxruntime modules, or one error line naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise GeodduError(
            f"ONNX export needs the {exc.name or 'onnx'} package: {EXTRA_HINT}"
        ) from exc
    return onnx, onnxruntime


class ExportGraph(nn.Module):
    """Raw image batch (B, C, H, W) -> class probabilities (B, K, H, W) for one fixed H x W:
    the model's own composition (`DDUNet.run`) over the N x M subimages, each stage run on all
    of them as one batch (`_OneBatch`), between the input's normalisation and a softmax."""

    def __init__(
        self,
        net: DDUNet,
        mean: list[float],
        std: list[float],
        grid: tuple[int, int],
        size: tuple[int, int],
        uint8_input: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.grid = grid
        self.partition = Partition.uniform(*size, *grid, multiple=net.stride)
        self.uint8_input = uint8_input
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:
            x = x.to(torch.float32)
        # The same two operations, in the same order, as SegmentationModel.prepare.
        x = (x - self.mean) / self.std
        parts, grid = flatten_grid(self.partition.split(x))
        logits = self.net.run(parts, _OneBatch(grid))
        return torch.softmax(Partition.stitch(as_grid(logits, grid)), dim=1)


class _OneBatch:
    """Every subimage in one batch per stage (subimage k of image b at row k * B + b): all have
    one size, and the batch axis stays free, as reshapes rather than fixed-size splits."""

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = grid

    def map(self, fn: Any, items: Any, cells: Any) -> list[Any]:
        return _unstack(fn(*tree_cat(items)), len(items))

    def mosaic(self, fn: Any, maps: Any) -> list[torch.Tensor]:
        return on_mosaic(fn, maps, self.grid)


def _unstack(tree: Any, n: int) -> list[Any]:
    """A tree of (n * B, ...) tensors -> n trees of (B, ...) tensors."""
    if isinstance(tree, torch.Tensor):
        return list(tree.reshape(n, -1, *tree.shape[1:]).unbind(0))
    pieces = [_unstack(t, n) for t in tree]
    return [type(tree)(p[k] for p in pieces) for k in range(n)]


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote, and how far onnxruntime was from torch on it."""

    path: str
    size: tuple[int, int]
    grid: tuple[int, int]
    input_dtype: str
    opset: int
    ir_version: int
    bytes: int
    max_prob_diff: float
    metadata: dict[str, str]


def check_size(size: tuple[int, int], grid: tuple[int, int], stride: int) -> tuple[int, int]:
    """The subimage size for an H x W image cut into N x M equal subimages, each a multiple of
    the model stride; otherwise one error line with the nearest sizes that work."""
    sub = []
    for total, parts, what, axis in zip(size, grid, ("height", "width"), ("rows", "columns"),
                                        strict=True):
        step = parts * stride
        if total % step:
            lower, upper = total // step * step, (total // step + 1) * step
            near = f"{lower} or {upper}" if lower else f"{upper}"
            raise GeodduError(
                f"{what} {total} is not a multiple of {parts} subimage {axis} x model stride "
                f"{stride} = {step}; use e.g. {near}"
            )
        sub.append(total // parts)
    return sub[0], sub[1]


def default_grid(size: tuple[int, int], subimage_size: int) -> tuple[int, int]:
    """The grid `segment` would use on an H x W scene: the checkpoint's subimage size."""
    h, w = size
    if h % subimage_size or w % subimage_size:
        raise GeodduError(
            f"size {h} x {w} is not a multiple of the checkpoint's subimage size "
            f"{subimage_size}; give the grid with --subimages NxM"
        )
    return h // subimage_size, w // subimage_size


def deepness_metadata(
    ckpt: dict[str, Any],
    size: tuple[int, int],
    grid: tuple[int, int],
    input_dtype: str,
    resolution_cm: float | None = None,
    tiles_overlap: int = DEFAULT_TILES_OVERLAP,
) -> dict[str, str]:
    """The model's metadata_props: every value JSON, as Deepness `json.loads` each one."""
    classes = ckpt["classes"]
    n_in = len(ckpt["bands"])
    if resolution_cm is None:
        resolution_cm = _resolution_cm(ckpt.get("data"))
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(k): c["name"] for k, c in enumerate(classes)},
        # Deepness does not colour its output by class; these are for other readers.
        "class_colors": {str(k): list(c["color"]) for k, c in enumerate(classes)},
        # The reader calls it tile_size, the plugin's documentation tiles_size: write both.
        "tile_size": size[1],
        "tiles_size": size[1],
        "tiles_overlap": int(tiles_overlap),
        # Undo Deepness's x / 255 (the graph normalises raw values itself; module docstring).
        "standardization_mean": [0.0] * n_in,
        "standardization_std": [1.0 / 255.0] * n_in,
        # Plain argmax, as `geoddu segment`: no probability threshold, no small-area filter.
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "geoddu": {
            "version": __version__,
            "config": ckpt["config"],
            "bands": ckpt["bands"],
            "normalization": ckpt["normalization"],
            "input": input_dtype,
            "size": list(size),
            "subimages": list(grid),
        },
    }
    if resolution_cm is not None:
        meta["resolution"] = resolution_cm
    if ckpt.get("card"):
        # The model card (docs/model-cards.md), for whoever opens the ONNX file alone.
        meta["geoddu_card"] = ckpt["card"]
    return {k: json.dumps(v) for k, v in meta.items()}


def _resolution_cm(data: dict[str, Any] | None) -> float | None:
    """The training data's pixel size in cm, when the checkpoint records it in metres."""
    if not data or data.get("pixel_size") is None:
        return None
    if str(data.get("units") or "").lower() not in _METRE:
        return None
    return round(float(data["pixel_size"][0]) * 100, 6)


def export_onnx(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    size: tuple[int, int],
    grid: tuple[int, int] | None = None,
    input_dtype: str = "float32",
    opset: int = DEFAULT_OPSET,
    resolution_cm: float | None = None,
    tiles_overlap: int = DEFAULT_TILES_OVERLAP,
    overwrite: bool = False,
) -> ExportResult:
    """Write `model_path`'s DDU-Net for H x W images as one self-contained ONNX file, checked
    against the torch model with onnxruntime before it replaces `output` (atomically)."""
    require_onnx()
    if input_dtype not in INPUT_DTYPES:
        raise GeodduError(f"input type {input_dtype!r} is not one of {', '.join(INPUT_DTYPES)}")
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise GeodduError(f"opset {opset} is not between {OPSETS[0]} and {OPSETS[1]}")
    # Before any work: an existing output without --overwrite, a missing folder.
    out = AtomicOutput(output, overwrite=overwrite)
    ckpt = load_checkpoint(model_path)
    net = fuse_for_inference(model_from_checkpoint(ckpt, model_path))
    grid = grid or default_grid(size, ckpt["subimage_size"])
    check_size(size, grid, net.stride)
    if size[0] != size[1]:
        warnings.warn(
            f"a {size[0]} x {size[1]} graph runs in onnxruntime, but QGIS's Deepness plugin "
            "only cuts square tiles: export a square size for it",
            GeodduWarning,
            stacklevel=2,
        )
    norm = ckpt["normalization"]
    graph = ExportGraph(
        net, norm["mean"], norm["std"], grid, size, uint8_input=input_dtype == "uint8"
    ).eval()
    meta = deepness_metadata(ckpt, size, grid, input_dtype, resolution_cm, tiles_overlap)
    try:
        ir_version, diff = _write_checked(out, graph, len(ckpt["bands"]), len(ckpt["classes"]),
                                          input_dtype, opset, meta)
        nbytes = out.temp.stat().st_size
        out.commit()
    except BaseException:
        out.discard()
        raise
    return ExportResult(
        str(output), tuple(size), tuple(grid), input_dtype, opset, ir_version, nbytes, diff, meta
    )


def _write_checked(
    out: AtomicOutput,
    graph: ExportGraph,
    bands: int,
    classes: int,
    input_dtype: str,
    opset: int,
    meta: dict[str, str],
) -> tuple[int, float]:
    """Export to a scratch file, finish the model in `out.temp`, and run it in onnxruntime:
    (IR version, max |probability difference| from the torch graph)."""
    onnx, ort = require_onnx()
    size = graph.partition.shape
    sample = _sample_input(bands, size, input_dtype)
    with torch.no_grad():
        expected = graph(sample).numpy()
    raw = out.scratch()
    _torch_export(graph, sample, raw, opset)
    model = onnx.load(str(raw))
    _static_output_shape(model, classes, size)
    # Deepness's onnxruntime (1.12-1.17) reads only the IR versions of its time.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"geoddu {__version__}: DDU-Net for {size[0]} x {size[1]} images"
    onnx.checker.check_model(model)
    onnx.save(model, str(out.temp))
    session = ort.InferenceSession(str(out.temp), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: sample.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= CHECK_TOLERANCE:
        raise GeodduError(
            f"the ONNX graph differs from the torch model by {diff:.3g} in probability "
            f"(more than {CHECK_TOLERANCE:g}); nothing was written"
        )
    return int(model.ir_version), diff


def _static_output_shape(model: Any, classes: int, size: tuple[int, int]) -> None:
    """(batch, classes, H, W) with only the batch free: the exporter names every output axis
    after the reshapes, and Deepness counts the classes from the output shape's axis -3."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(dims[1:], (classes, *size), strict=True):
        dim.Clear()
        dim.dim_value = value


def _sample_input(bands: int, size: tuple[int, int], input_dtype: str) -> torch.Tensor:
    """Deterministic 8-bit-range values: the tracing input and the onnxruntime check's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, bands, *size), generator=gen)
    return x.to(torch.uint8 if input_dtype == "uint8" else torch.float32)


def _torch_export(graph: nn.Module, sample: torch.Tensor, path: os.PathLike, opset: int) -> None:
    """torch's TorchScript-based exporter: unlike the dynamo one it needs no onnxscript, and
    its output for these fixed-size convolutional graphs is exact."""
    with warnings.catch_warnings():
        # The exporter's notes about its own future (deprecation of this path) are not the
        # user's business; an export that fails still raises.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                (sample,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        except (RuntimeError, ValueError) as exc:
            raise GeodduError(
                f"torch could not export the model to ONNX opset {opset}: {first_line(exc)}"
            ) from exc
