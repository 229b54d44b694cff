"""The three stages of DDU-Net inference, written once: encode a subimage, communicate a region
of the bottleneck mosaic, decode a subimage.

The model's stages (`encode`, `comm_input`, `communicate`, `decode`; their composition is
`DDUNet.run`) are run here in the streaming order; these functions add what streaming needs
around them: the nodata rule, the
bottleneck store, the exact tiling of the communication network, the area-of-interest mask
and the hand-over to a sink. The local executor (threads, devices), the rank executor
(torchrun) and their tests all call these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..io.raster import RasterSource
from ..partition import Subimage
from ..predictor import NODATA, SegmentationModel
from .mapstore import MapStore
from .plan import Tile

__all__ = [
    "Worker",
    "communicate_tile",
    "communicate_tiles",
    "decode_cell",
    "decode_window",
    "encode_cell",
    "put_nodata",
]


class Sink(Protocol):
    """Where decoded windows go: the background writer, or the send-to-rank-0 sink."""

    wants_probabilities: bool

    def put(self, cell: Subimage, classes: np.ndarray, probs: np.ndarray | None) -> None: ...


class Progress(Protocol):
    def check_cancel(self) -> None: ...

    def report(self, stage: str, done: int, total: int) -> None: ...


class Worker:
    """What one device's thread owns: its model replica and its own dataset handle."""

    def __init__(self, model: SegmentationModel, source: RasterSource) -> None:
        self.model = model
        self.net = model.net
        self.device = model.device
        self.source = source


def encode_cell(
    ctx: Worker, cell: Subimage, raw: np.ndarray, valid: np.ndarray, store: MapStore
) -> bool:
    """Encode one subimage and keep its last F bottleneck maps; False if it has no valid pixel
    (it then contributes zeros to the mosaic)."""
    if not valid.any():
        return False  # contributes zeros to the mosaic
    x = ctx.model.prepare(raw, valid)
    with ctx.model.computing():
        _, bottleneck = ctx.net.encode(x)
        maps = ctx.net.comm_input(bottleneck)
    store.put(cell.index, maps[0].float().cpu().numpy())
    return True


def communicate_tile(
    model: SegmentationModel,
    tile: Tile,
    grid: tuple[int, int],
    cell: int,
    get_maps: Callable[[tuple[int, int]], np.ndarray],
) -> dict[tuple[int, int], np.ndarray]:
    """The communicated maps of every cell of `tile`, exactly as one pass over the whole
    mosaic gives them.

    The tile is extended by the network's halo on every side (clipped at the mosaic edge,
    where 'same' zero padding is what the whole-mosaic pass sees too) and its centre kept:
    every kept value depends only on inputs inside the extended tile, so tiling changes
    nothing. `get_maps(cell)` may come from a store, from a strip's live rows, or from halos
    received from other ranks.
    """
    net = model.net
    rows, cols = grid
    halo = net.comm_halo
    mh, mw = rows * cell, cols * cell
    r0, r1, c0, c1 = tile
    y0, y1 = max(0, r0 * cell - halo), min(mh, r1 * cell + halo)
    x0, x1 = max(0, c0 * cell - halo), min(mw, c1 * cell + halo)
    region = np.zeros((net.comm_features, y1 - y0, x1 - x0), np.float32)
    for i in range(y0 // cell, -(-y1 // cell)):
        for j in range(x0 // cell, -(-x1 // cell)):
            maps = get_maps((i, j))
            ya, yb = max(y0, i * cell), min(y1, (i + 1) * cell)
            xa, xb = max(x0, j * cell), min(x1, (j + 1) * cell)
            region[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = maps[
                :, ya - i * cell : yb - i * cell, xa - j * cell : xb - j * cell
            ]
    with torch.inference_mode():
        x = torch.from_numpy(region).unsqueeze(0).to(model.device, model.dtype)
        with model.computing():
            out = net.communicate(x)[0].float().cpu().numpy()
    return {
        (i, j): out[:, i * cell - y0 : (i + 1) * cell - y0, j * cell - x0 : (j + 1) * cell - x0]
        for i in range(r0, r1)
        for j in range(c0, c1)
    }


def communicate_tiles(
    run: Progress,
    model: SegmentationModel,
    tiles: Sequence[Tile],
    grid: tuple[int, int],
    cell: int,
    get_maps: Callable[[tuple[int, int]], np.ndarray],
    put_maps: Callable[[tuple[int, int], np.ndarray], None],
) -> None:
    """The communication network over the bottleneck mosaic, tile by tile, exactly
    (:func:`communicate_tile`); each cell's result goes to `put_maps`."""
    for n, tile in enumerate(tiles, 1):
        run.check_cancel()
        for index, maps in communicate_tile(model, tile, grid, cell, get_maps).items():
            put_maps(index, maps)
        run.report("communicate", n, len(tiles))


def decode_cell(
    ctx: Worker,
    cell: Subimage,
    raw: np.ndarray,
    valid: np.ndarray,
    communicated: MapStore | None,
    sink: Sink,
    area: Any = None,
) -> bool:
    """Encode again for the skips, swap in the communicated maps, decode, hand the window to
    `sink`; False if the subimage has no valid pixel (its window is written as nodata)."""
    if not valid.any():
        put_nodata(ctx, cell, sink)
        return False
    net = ctx.net
    x = ctx.model.prepare(raw, valid)
    with ctx.model.computing():
        skips, bottleneck = net.encode(x)
    maps = None
    if communicated is not None:
        maps = torch.from_numpy(communicated.get(cell.index)).unsqueeze(0).to(ctx.device)
    decode_window(ctx, cell, skips, bottleneck, maps, valid, sink, area)
    return True


def put_nodata(ctx: Worker, cell: Subimage, sink: Sink) -> None:
    """A subimage without a valid pixel: its window is nodata."""
    h = min(cell.height, ctx.source.height - cell.row_off)
    w = min(cell.width, ctx.source.width - cell.col_off)
    sink.put(cell, np.full((h, w), NODATA, np.uint8), None)


def decode_window(
    ctx: Worker,
    cell: Subimage,
    skips: list[torch.Tensor],
    bottleneck: torch.Tensor,
    maps: torch.Tensor | None,
    valid: np.ndarray,
    sink: Sink,
    area: Any = None,
) -> None:
    """Decode with the communicated `maps` (None: C=N or no communication) and hand the window
    to `sink`."""
    h = min(cell.height, ctx.source.height - cell.row_off)
    w = min(cell.width, ctx.source.width - cell.col_off)
    net = ctx.net
    with ctx.model.computing():
        logits = net.decode(skips, bottleneck, maps)
    # argmax in the network's own dtype: widening bf16 to fp32 is exact, so the classes are
    # those of predict's fp32 argmax, without a copy of the logits.
    logits = logits[0, :, :h, :w]
    classes = logits.argmax(0).to(torch.uint8).cpu().numpy()
    keep = valid[:h, :w]
    if area is not None:
        # The area only masks the output: encoders saw the real pixels, so classes inside the
        # area are those of a full-scene run.
        from rasterio.windows import Window, transform

        from ..io.vector import geometry_window_mask

        wt = transform(Window(cell.col_off, cell.row_off, w, h), ctx.source.transform)
        keep = keep & geometry_window_mask(area, wt, (h, w))
    classes[~keep] = NODATA
    probs = None
    if sink.wants_probabilities:
        probs = torch.softmax(logits.float(), 0).cpu().numpy()
        probs[:, ~keep] = np.nan
    sink.put(cell, classes, probs)

