"""Where decoded windows go. Locally: one background thread owns the output datasets (GDAL
handles are not thread-safe) and writes windows as the compute threads hand them over. Under
torchrun: ranks > 0 send their windows to rank 0, whose receiver hands them to that writer.

On success every output is finished and read back; renaming them into place together is the
executor's last step (:func:`geoddu.engine.job.finish_outputs`), so a run leaves all of its
outputs or none.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import GeodduError
from ..io.raster import RasterSource
from ..io.writer import ClassMapWriter, probability_writer
from ..parallel.group import global_rank, wrap_comm_error
from ..parallel.halo import cell_of
from ..partition import Partition, Subimage
from ..predictor import SegmentationModel
from .memory import WRITE_QUEUE
from .request import SegmentRequest

__all__ = ["BackgroundWriter", "Receiver", "RemoteSink", "message_bytes", "open_writers"]


def open_writers(
    request: SegmentRequest, source: RasterSource, model: SegmentationModel
) -> dict[str, Any]:
    """All outputs are created (and their paths checked) before any compute starts, on the
    grid of `source` (with --resample: the model's)."""
    geo = {
        "width": source.width,
        "height": source.height,
        "crs": source.crs,
        "transform": source.transform,
        "overwrite": request.overwrite,
    }
    names = [c["name"] for c in model.classes]
    writers: dict[str, Any] = {}
    try:
        writers["classes"] = ClassMapWriter(
            request.output,
            class_names=names,
            class_colors=[tuple(c["color"]) for c in model.classes],
            # On the model's grid it is an intermediate (geoddu.engine.resampling): the map
            # put back on the scene's grid is the one converted.
            cog=request.cog and not request.regrids_output,
            **geo,
        )
        if request.probabilities is not None:
            writers["probabilities"] = probability_writer(
                request.probabilities,
                dtype=request.probabilities_dtype,
                band_descriptions=names,
                cog=request.cog,
                **geo,
            )
        if request.confidence is not None:
            writers["confidence"] = probability_writer(
                request.confidence,
                dtype=request.probabilities_dtype,
                band_descriptions=["confidence"],
                cog=request.cog,
                **geo,
            )
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return writers



class BackgroundWriter:
    """One thread owns the output datasets and writes windows as they come (GDAL handles are
    not thread-safe); computing threads only enqueue. Probabilities and confidence are handed
    over as float32 whatever the output's dtype: a uint8 writer scales them itself."""

    def __init__(
        self, writers: dict[str, Any], num_classes: int, height: int = 0, width: int = 0
    ) -> None:
        self.writers = writers
        # The scene's size, for clipping windows received from other ranks.
        self.height, self.width = height, width
        self.num_classes = num_classes
        self.wants_probabilities = "probabilities" in writers or "confidence" in writers
        self.q: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
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

    def __enter__(self) -> BackgroundWriter:
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
            # Renaming into place is the executor's last step (`job.finish_outputs`), after
            # any polygonising.
            try:
                for w in self.writers.values():
                    w.finish()
            except BaseException:
                for w in self.writers.values():
                    w.abort()
                raise


# -- under torchrun: windows from the other ranks to rank 0's writer ---------------------------
OUTPUT_TAG = 23
# Receives rank 0 keeps posted for class windows, and sends a rank keeps in flight: enough to
# keep every sender busy, few enough that memory does not grow with the scene or the ranks.
RECV_BYTES_IN_FLIGHT = 64 * 2**20
SENDS_IN_FLIGHT = 2
_HEADER = 3  # int64: cell row, cell column, probabilities present


def message_bytes(part: Partition, classes: int, probabilities: bool) -> int:
    h, w = max(part.row_sizes), max(part.col_sizes)
    return _HEADER * 8 + h * w + (classes * h * w * 4 if probabilities else 0)


class RemoteSink:
    """Stands in for the background writer on ranks > 0: each decoded window goes to rank 0."""

    def __init__(self, msg_bytes: int, probabilities: bool, group: Any) -> None:
        self.msg_bytes = msg_bytes
        self.wants_probabilities = probabilities
        self.group = group
        self.pending: collections.deque = collections.deque()
        self.bytes_sent = 0

    def put(self, cell: Subimage, classes: np.ndarray, probs: np.ndarray | None) -> None:
        buf = np.zeros(self.msg_bytes, np.uint8)
        h, w = classes.shape
        buf[: _HEADER * 8] = np.array([cell.row, cell.col, probs is not None], np.int64).view(
            np.uint8
        )
        o = _HEADER * 8
        buf[o : o + h * w] = classes.ravel()
        if probs is not None and self.wants_probabilities:
            o += h * w
            raw = np.ascontiguousarray(probs, np.float32).view(np.uint8).ravel()
            buf[o : o + raw.size] = raw
        try:
            root = global_rank(0, self.group)
            work = dist.isend(torch.from_numpy(buf), root, self.group, OUTPUT_TAG)
            self.pending.append((work, buf))
            self.bytes_sent += buf.nbytes
            while len(self.pending) > SENDS_IN_FLIGHT:
                self.pending.popleft()[0].wait()
        except Exception as exc:  # noqa: BLE001
            raise wrap_comm_error("sending class windows to rank 0", exc) from exc

    def flush(self) -> None:
        try:
            while self.pending:
                self.pending.popleft()[0].wait()
        except Exception as exc:  # noqa: BLE001
            raise wrap_comm_error("sending class windows to rank 0", exc) from exc


class Receiver(threading.Thread):
    """Rank 0: receives the other ranks' windows from any source, in any order, and hands them
    to the background writer. The only thread using the process group while it runs."""

    def __init__(self, part, expected, msg_bytes, classes, sink, group) -> None:
        super().__init__(daemon=True)
        self.part, self.expected, self.msg_bytes = part, expected, msg_bytes
        self.classes, self.sink, self.group = classes, sink, group
        self.depth = int(max(2, min(64, RECV_BYTES_IN_FLIGHT // msg_bytes)))
        self.received = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            posted: collections.deque = collections.deque()
            to_post = self.expected
            while to_post and len(posted) < self.depth:
                posted.append(self._post())
                to_post -= 1
            while posted:
                work, buf = posted.popleft()
                work.wait()
                self._deliver(buf.numpy())
                self.received += 1
                if to_post:
                    posted.append(self._post())
                    to_post -= 1
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc

    def _post(self):
        buf = torch.empty(self.msg_bytes, dtype=torch.uint8)
        return dist.irecv(buf, None, self.group, OUTPUT_TAG), buf

    def _deliver(self, buf: np.ndarray) -> None:
        row, col, has_probs = (int(v) for v in buf[: _HEADER * 8].view(np.int64))
        cell = cell_of(self.part, (row, col))
        h = min(cell.height, self.sink.height - cell.row_off)
        w = min(cell.width, self.sink.width - cell.col_off)
        o = _HEADER * 8
        classes = buf[o : o + h * w].reshape(h, w).copy()
        probs = None
        if has_probs and self.sink.wants_probabilities:
            o += h * w
            n = self.classes * h * w * 4
            probs = buf[o : o + n].view(np.float32).reshape(self.classes, h, w).copy()
        self.sink.put(cell, classes, probs)
