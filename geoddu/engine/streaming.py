"""The streaming engine: a whole scene of any size treated as one DDU-Net, in bounded memory.

1. pass 1: every subimage window is read and encoded; only its last F bottleneck maps are kept
   (MapStore: RAM while small, an anonymous temporary file once large);
2. the communication network runs over the stitched bottleneck mosaic in tiles, each with a halo
   equal to the network's reach, so the result equals one pass over the whole mosaic;
3. pass 2: every window is read and encoded again (for the skips), its F maps are replaced by
   the communicated ones, decoded, and written.
Without communication (C=N or F=0) subimages are independent and one pass does it all.

The result equals `SegmentationModel.predict` on the whole scene (same grid, same nodata rule).
"""

from __future__ import annotations

import copy
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, GeodduError
from ..io.atomic import check_distinct_paths
from ..io.raster import RasterSource, open_raster
from ..io.writer import ClassMapWriter, FloatRasterWriter, commit_all
from ..partition import Partition, Subimage, balanced_blocks
from ..predictor import NODATA, SegmentationModel, load_model
from ..resources import peak_rss_mb
from .devices import autocast, resolve_devices
from .mapstore import MapStore

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]

# Bottleneck cells per side of one communication tile (before its halo): 256^2 cells x F=64
# maps x 4 bytes = 16 MB per tile, small on any device.
COMM_TILE_CELLS = 256
# Each of the two bottleneck stores stays in RAM below this size and moves to a temporary file
# above it: a fixed budget, so that peak memory does not grow with the scene.
STORE_MAX_RAM_BYTES = 16 * 2**20


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
    map_store_on_disk: bool = False
    extra_outputs: list[Path] = field(default_factory=list)

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        mode = "with communication" if self.communicated else "independent subimages (C=N)"
        return (
            f"{self.output}: {self.width} x {self.height} px, {self.subimages} subimages "
            f"({self.skipped} all-nodata skipped), {mode}, on {', '.join(self.devices)}; "
            f"{self.seconds:.1f} s, {self.megapixels_per_second:.2f} Mpx/s, "
            f"peak RSS {self.peak_rss_mb:.0f} MB"
        )


def segment(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model: SegmentationModel | str | os.PathLike,
    *,
    bands: Sequence[int] | None = None,
    subimage_size: int | None = None,
    device: str | None = None,
    gpus: int | None = None,
    precision: str = "fp32",
    probabilities: str | os.PathLike | None = None,
    confidence: str | os.PathLike | None = None,
    cog: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    store_max_ram_bytes: int = STORE_MAX_RAM_BYTES,
    comm_tile_cells: int = COMM_TILE_CELLS,
    aoi: str | os.PathLike | None = None,
    aoi_layer: str | None = None,
    aoi_where: str | None = None,
    vector: str | os.PathLike | None = None,
    vector_min_area: float | None = None,
    vector_simplify: float | None = None,
    scratch: str | os.PathLike | None = None,
) -> SegmentResult:
    """Segment the raster `src` into the class map `dst` (atomic: nothing at `dst` on failure).

    `progress(stage, done, total)` is called from the calling thread after each subimage (stages
    "encode", "communicate", "decode"); `cancel()` is polled between subimages and makes the run
    raise `Cancelled` without writing anything. `store_max_ram_bytes` and `comm_tile_cells`
    tune memory (bottleneck maps kept in RAM below that size; communication tile side in
    bottleneck cells) and never change the result.

    `aoi` (any vector GDAL reads, any CRS; `aoi_layer`, `aoi_where` pick features) limits the
    work to the subimages the area touches plus those within the communication network's reach
    around them: pixels outside the area are nodata, pixels inside get exactly the classes of a
    full-scene run, and the run time grows with the area, not the scene.

    `vector` also polygonises the class map into that file (`geoddu vectorize`, with
    `vector_min_area` in map units² and `vector_simplify` in map units).

    `scratch` is the folder for the bottleneck store once it outgrows RAM (default: the
    system's temporary folder); its free space is checked before any work. All outputs appear
    together, once every one of them is complete and reads back in full, or none does.
    """
    t0 = time.perf_counter()
    check_distinct_paths(
        {"output": dst, "--probabilities": probabilities, "--confidence": confidence,
         "--vector": vector},
        {"input raster": src, "--aoi": aoi,
         "model": None if isinstance(model, SegmentationModel) else model},
    )
    if vector is not None:
        from ..io.polygonize import driver_for

        driver_for(vector)  # an unknown format fails now, not after the whole scene
        if Path(vector).exists() and not overwrite:
            raise GeodduError(f"{vector} exists; pass --overwrite to replace it")
    scratch = scratch_dir(scratch)
    devices = resolve_devices(device, gpus)
    if not isinstance(model, SegmentationModel):
        model = load_model(model)
    model.eval()
    source = _open_source(src, bands, model)
    part = model.partition_for(source.height, source.width, subimage_size)
    net = model.net
    area = None
    todo = part.subimages()
    encode_cells = todo
    if aoi is not None:
        area, todo, encode_cells = _aoi_cells(source, part, net, aoi, aoi_layer, aoi_where)
    replicas = [model if model.device == d else copy.deepcopy(model).to(d).eval() for d in devices]
    run = _Run(source, part, replicas, precision, progress, cancel)
    stores: list[MapStore] = []
    writers: dict[str, Any] = {}
    try:
        if net.communicates:
            hs = part.row_sizes[0] // net.stride
            shape = (net.comm_features, hs, hs)
            check_scratch_space(scratch, part.grid, shape, store_max_ram_bytes)
        writers.update(_open_writers(dst, source, model, overwrite, cog, probabilities, confidence))
        with _BackgroundWriter(writers, len(model.classes)) as sink:
            sink.defer_commit = vector is not None
            if net.communicates:
                cells = part.grid
                encoded = MapStore(cells, shape, store_max_ram_bytes, scratch)
                stores.append(encoded)
                run.over_cells(
                    "encode",
                    lambda ctx, c, raw, ok: _encode(ctx, c, raw, ok, encoded),
                    encode_cells,
                )
                communicated = MapStore(cells, shape, store_max_ram_bytes, scratch)
                stores.append(communicated)
                step = max(1, comm_tile_cells // hs)
                tiles = grid_tiles(*part.grid, step) if area is None else run_tiles(todo, step)
                communicate_tiles(
                    run, replicas[0], tiles, part.grid, hs, encoded.get, communicated.put
                )
                encoded.close()
            else:
                communicated = None
            run.over_cells(
                "decode",
                lambda ctx, c, raw, ok: _decode(ctx, c, raw, ok, communicated, sink, area),
                todo,
            )
        for s in stores:
            s.close()
        extra_outputs = [Path(p) for p in (probabilities, confidence) if p is not None]
        if vector is not None:
            # Polygonised from the finished class map before it is renamed: if this fails, no
            # output appears; if the rasters' rename fails, the polygons go too.
            from ..io.polygonize import vectorize

            vectorize(
                writers["classes"].finished_path,
                vector,
                min_area=vector_min_area,
                simplify=vector_simplify,
                overwrite=overwrite,
                progress=progress,
                cancel=cancel,
            )
            try:
                commit_all(w.output for w in writers.values())
            except BaseException:
                from ..io.polygonize import remove_vector

                remove_vector(vector)
                raise
            extra_outputs.append(Path(vector))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        for s in stores:
            s.close()
        source.close()
    return SegmentResult(
        output=Path(dst),
        width=source.width,
        height=source.height,
        subimages=len(todo),
        skipped=run.skipped,
        communicated=net.communicates,
        devices=[str(d) for d in devices],
        seconds=time.perf_counter() - t0,
        peak_rss_mb=peak_rss_mb(),
        encoder_runs=run.encoder_runs,
        map_store_on_disk=any(s.on_disk for s in stores),
        extra_outputs=extra_outputs,
    )


def _open_writers(dst, source, model, overwrite, cog, probabilities, confidence) -> dict[str, Any]:
    """All outputs are created (and their paths checked) before any compute starts."""
    geo = {
        "width": source.width,
        "height": source.height,
        "crs": source.crs,
        "transform": source.transform,
        "overwrite": overwrite,
    }
    names = [c["name"] for c in model.classes]
    writers: dict[str, Any] = {}
    try:
        writers["classes"] = ClassMapWriter(
            dst,
            class_names=names,
            class_colors=[tuple(c["color"]) for c in model.classes],
            cog=cog,
            **geo,
        )
        if probabilities is not None:
            writers["probabilities"] = FloatRasterWriter(
                probabilities, band_descriptions=names, cog=cog, **geo
            )
        if confidence is not None:
            writers["confidence"] = FloatRasterWriter(
                confidence, band_descriptions=["confidence"], cog=cog, **geo
            )
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return writers


def _aoi_cells(source, part: Partition, net, aoi, layer, where):
    """The area in the raster's CRS, the cells it touches, and those plus the cells within the
    communication network's reach (their encodings feed the touched cells' mosaic)."""
    import shapely
    from rasterio.transform import array_bounds
    from rasterio.windows import Window, bounds

    from ..io.vector import aoi_geometry

    area = aoi_geometry(
        aoi,
        source.crs,
        array_bounds(source.height, source.width, source.transform),
        layer=layer,
        where=where,
    )
    cells = part.subimages()
    boxes = [
        shapely.box(*bounds(Window(c.col_off, c.row_off, c.width, c.height), source.transform))
        for c in cells
    ]
    hit = shapely.intersects(np.array(boxes, dtype=object), area)
    touched = [c for c, h in zip(cells, hit, strict=True) if h]
    cell = part.row_sizes[0] // net.stride
    reach = -(-net.comm_halo // cell)  # neighbouring cells the halo reaches into
    near = {
        (c.row + dr, c.col + dc)
        for c in touched
        for dr in range(-reach, reach + 1)
        for dc in range(-reach, reach + 1)
    }
    return area, touched, [c for c in cells if c.index in near]


def _open_source(
    src: str | os.PathLike, bands: Sequence[int] | None, model: SegmentationModel
) -> RasterSource:
    with open_raster(src) as scene:
        bands = model.scene_bands(scene, bands)
    source = open_raster(src, bands=bands)
    model.check_bands(source.count)
    return source


def scratch_dir(scratch: str | os.PathLike | None) -> str:
    """The folder for the bottleneck store's scratch file: ``--scratch``, else the system's."""
    folder = os.fspath(scratch) if scratch is not None else tempfile.gettempdir()
    if not os.path.isdir(folder):
        raise GeodduError(f"--scratch {folder}: no such directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GeodduError(f"--scratch {folder}: directory is not writable")
    return folder


def check_scratch_space(
    scratch: str, grid: tuple[int, int], shape: tuple[int, int, int], max_ram_bytes: int
) -> None:
    """Refuse before pass 1 when the two bottleneck stores would not fit the scratch folder."""
    needed = sum(
        size for size in [MapStore.bytes_for(grid, shape)] * 2 if size > max_ram_bytes
    )
    if not needed:
        return
    free = shutil.disk_usage(scratch).free
    if free < needed:
        raise GeodduError(
            f"--scratch {scratch}: the bottleneck store needs {needed / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free; free space or choose another folder with --scratch"
        )



class _Worker:
    """What one device's thread owns: its model replica and its own dataset handle."""

    def __init__(self, model: SegmentationModel, source: RasterSource, precision: str) -> None:
        self.model = model
        self.net = model.net
        self.device = model.device
        self.source = source
        self.precision = precision


class _Run:
    """Runs a per-subimage function over the grid, one thread per device, blocks in order."""

    def __init__(self, source, part, replicas, precision, progress, cancel) -> None:
        self.source = source
        self.part: Partition = part
        self.replicas = replicas
        self.precision = precision
        self.progress = progress
        self.cancel = cancel
        self.skipped = 0
        self.encoder_runs = 0
        self._lock = threading.Lock()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled; no output was written")

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def over_cells(
        self,
        stage: str,
        fn: Callable[[_Worker, Subimage, Any, Any], bool],
        cells: list[Subimage] | None = None,
    ) -> None:
        """fn(worker, cell, raw, valid) for `cells` (default: all), split over the devices."""
        cells = self.part.subimages() if cells is None else cells
        blocks = balanced_blocks(cells, len(self.replicas))
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work(k: int) -> None:
            handle = self.source.reopen()
            ctx = _Worker(self.replicas[k], handle, self.precision)
            try:
                with torch.inference_mode():
                    for cell, raw, valid in _prefetch(handle, blocks[k], stop):
                        if stop.is_set():
                            break
                        live = fn(ctx, cell, raw, valid)
                        with self._lock:
                            if live:
                                self.encoder_runs += 1
                            elif stage == "decode":
                                self.skipped += 1
                        events.put(("done", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                events.put(("error", exc))
            finally:
                handle.close()
                events.put(("exit", None))

        threads = [
            threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(blocks))
        ]
        for t in threads:
            t.start()
        done, running, error = 0, len(threads), None
        try:
            while running:
                try:
                    kind, payload = events.get(timeout=0.1)
                except queue.Empty:
                    kind, payload = "tick", None
                if kind == "done":
                    done += 1
                    self.report(stage, done, len(cells))
                elif kind == "error" and error is None:
                    error = payload
                    stop.set()
                elif kind == "exit":
                    running -= 1
                if error is None and not stop.is_set():
                    self.check_cancel()
        except BaseException:
            stop.set()
            for t in threads:
                t.join()
            raise
        for t in threads:
            t.join()
        if error is not None:
            raise error


def _prefetch(
    source: RasterSource, cells: list[Subimage], stop: threading.Event, depth: int = 2
) -> Iterator[tuple[Subimage, np.ndarray, np.ndarray]]:
    """Read the next windows in a helper thread while the current one computes."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    reader = source.reopen()
    sentinel = object()
    closing = threading.Event()

    def read() -> None:
        try:
            for c in cells:
                if stop.is_set() or closing.is_set():
                    break
                raw, valid = reader.read_with_mask(c.row_off, c.col_off, c.height, c.width)
                q.put((c, raw, valid))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)
        finally:
            reader.close()
            q.put(sentinel)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        closing.set()
        while t.is_alive():  # drain, so a reader blocked on a full queue can finish
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


def _encode(ctx: _Worker, cell: Subimage, raw, valid, store: MapStore) -> bool:
    if not valid.any():
        return False  # contributes zeros to the mosaic
    x = ctx.model.prepare(raw, valid)
    with autocast(ctx.device, ctx.precision):
        _, bottleneck = ctx.net.encode(x)
        maps = ctx.net.comm_input(bottleneck)
    store.put(cell.index, maps[0].float().cpu().numpy())
    return True


def grid_tiles(rows: int, cols: int, step: int) -> list[tuple[int, int, int, int]]:
    """Square tiles of step x step cells covering the whole grid: (r0, r1, c0, c1)."""
    return [
        (r, min(rows, r + step), c, min(cols, c + step))
        for r in range(0, rows, step)
        for c in range(0, cols, step)
    ]


def run_tiles(cells: Sequence[Subimage], step: int) -> list[tuple[int, int, int, int]]:
    """Tiles covering exactly `cells`: runs of consecutive cells within a grid row, cut at
    `step` cells (a rank's contiguous block need not be a rectangle)."""
    tiles: list[tuple[int, int, int, int]] = []
    for c in sorted(cells, key=lambda c: (c.row, c.col)):
        last = tiles[-1] if tiles else None
        if last and last[0] == c.row and last[3] == c.col and last[3] - last[2] < step:
            tiles[-1] = (last[0], last[1], last[2], c.col + 1)
        else:
            tiles.append((c.row, c.row + 1, c.col, c.col + 1))
    return tiles


def communicate_tiles(
    run: _Run,
    model: SegmentationModel,
    tiles: Sequence[tuple[int, int, int, int]],
    grid: tuple[int, int],
    cell: int,
    get_maps: Callable[[tuple[int, int]], np.ndarray],
    put_maps: Callable[[tuple[int, int], np.ndarray], None],
) -> None:
    """The communication network over the bottleneck mosaic, tile by tile, exactly.

    Each tile of cells is extended by the network's halo on every side (clipped at the mosaic
    edge, where 'same' zero padding is what the whole-mosaic pass sees too) and its centre kept:
    every kept value depends only on inputs inside the extended tile, so tiling changes nothing.
    `get_maps(cell)` may come from this process's store or from halos received from other ranks.
    """
    net = model.net
    rows, cols = grid
    halo = net.comm_halo
    mh, mw = rows * cell, cols * cell
    with torch.inference_mode():
        for n, (r0, r1, c0, c1) in enumerate(tiles, 1):
            run.check_cancel()
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
            x = torch.from_numpy(region).unsqueeze(0).to(model.device)
            with autocast(model.device, run.precision):
                out = net.communicate_maps(x)[0].float().cpu().numpy()
            for i in range(r0, r1):
                for j in range(c0, c1):
                    ya, xa = i * cell - y0, j * cell - x0
                    put_maps((i, j), out[:, ya : ya + cell, xa : xa + cell])
            run.report("communicate", n, len(tiles))


def _decode(
    ctx: _Worker, cell: Subimage, raw, valid, communicated: MapStore | None, sink, area=None
) -> bool:
    h = min(cell.height, ctx.source.height - cell.row_off)
    w = min(cell.width, ctx.source.width - cell.col_off)
    live = bool(valid.any())
    if not live:
        sink.put(cell, np.full((h, w), NODATA, np.uint8), None)
        return False
    net = ctx.net
    x = ctx.model.prepare(raw, valid)
    with autocast(ctx.device, ctx.precision):
        skips, bottleneck = net.encode(x)
        if net.comm is not None:
            if communicated is not None:
                maps = torch.from_numpy(communicated.get(cell.index)).unsqueeze(0).to(ctx.device)
            else:
                maps = net.communicate_maps(net.comm_input(bottleneck))
            bottleneck = net.replace_maps(bottleneck, maps.to(bottleneck.dtype))
        logits = net.decode(skips, bottleneck)
    logits = logits[0, :, :h, :w].float()
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
        probs = torch.softmax(logits, 0).cpu().numpy()
        probs[:, ~keep] = np.nan
    sink.put(cell, classes, probs)
    return True


class _BackgroundWriter:
    """One thread owns the output datasets and writes windows as they come (GDAL handles are
    not thread-safe); computing threads only enqueue."""

    def __init__(self, writers: dict[str, Any], num_classes: int) -> None:
        self.writers = writers
        self.num_classes = num_classes
        # Set when a later step (polygonising) must succeed before the outputs are renamed.
        self.defer_commit = False
        self.wants_probabilities = "probabilities" in writers or "confidence" in writers
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def put(self, cell: Subimage, classes: np.ndarray, probs: np.ndarray | None) -> None:
        if self.error is not None:
            raise GeodduError(f"writing the output failed: {self.error}")
        self.q.put((cell, classes, probs))

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            cell, classes, probs = item
            try:
                self.writers["classes"].write(classes, cell.row_off, cell.col_off)
                h, w = classes.shape
                if probs is None:
                    probs = np.full((self.num_classes, h, w), np.nan, np.float32)
                if "probabilities" in self.writers:
                    self.writers["probabilities"].write(probs, cell.row_off, cell.col_off)
                if "confidence" in self.writers:
                    conf = np.nanmax(probs, axis=0, initial=-np.inf)[None]
                    conf[~np.isfinite(conf)] = np.nan
                    self.writers["confidence"].write(
                        conf.astype(np.float32), cell.row_off, cell.col_off
                    )
            except BaseException as exc:  # noqa: BLE001 - surfaced on the next put / exit
                self.error = exc

    def __enter__(self) -> _BackgroundWriter:
        for w in self.writers.values():
            w.__enter__()
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.q.put(None)
        self.thread.join()
        if exc_type is None and self.error is not None:
            for w in self.writers.values():
                w.abort()
            raise GeodduError(f"writing the output failed: {self.error}") from self.error
        if exc_type is None:
            # Every output is finished (and read back) before any is renamed into place: a
            # failure in the last one must not leave the first one looking like a result.
            try:
                for w in self.writers.values():
                    w.finish()
            except BaseException:
                for w in self.writers.values():
                    w.abort()
                raise
            if not self.defer_commit:
                commit_all(w.output for w in self.writers.values())
