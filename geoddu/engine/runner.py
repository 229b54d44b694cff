"""The local executor's machinery: a per-subimage function over each device's planned block
of cells, or each device's planned strips, one thread per device, each with its own dataset
handle and a prefetching reader (of the device's planned reads), so reading overlaps compute.
One device computes in the calling thread. Progress is reported, and cancellation and held
signals (:mod:`geoddu.engine.interrupts`) polled, from the calling thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled
from ..io.raster import RasterSource
from ..partition import Subimage
from ..resources import release_free_memory
from .interrupts import HeldSignals
from .memory import READ_AHEAD
from .plan import SegmentPlan
from .stages import Worker
from .steps import DeviceWork, StripRun
from .strips import run_strips

__all__ = ["CellRunner", "CancelFn", "ProgressFn"]

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
Tick = Callable[[str], None]  # one more item of a stage is done


class CellRunner:
    """Runs a per-subimage function over planned blocks of cells, or planned strips, one thread
    per device."""

    def __init__(
        self,
        source: RasterSource,
        replicas: Sequence[Any],
        progress: ProgressFn | None,
        cancel: CancelFn | None,
    ) -> None:
        self.source = source
        self.replicas = replicas
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
        fn: Callable[[Worker, Subimage, Any, Any], bool],
        blocks: Sequence[Sequence[Subimage]],
    ) -> None:
        """fn(worker, cell, raw, valid) for each cell of `blocks[k]` on device k."""

        def work(k: int, ctx: Worker, stop: threading.Event, tick: Tick) -> None:
            with closing(_prefetch(ctx.source, blocks[k], stop)) as feed:
                for cell, raw, valid in feed:
                    if stop.is_set():
                        break
                    live = fn(ctx, cell, raw, valid)
                    with self._lock:
                        if live:
                            self.encoder_runs += 1
                        elif stage == "decode":
                            self.skipped += 1
                    tick(stage)

        self._on_devices(len(blocks), work, {stage: sum(map(len, blocks))})

    def over_strips(
        self, work: Sequence[DeviceWork], totals: dict[str, int], plan: SegmentPlan, sink: Any,
        area: Any, strip_done: Callable[[StripRun], None] | None = None,
        trim_each_row: bool = False,
    ) -> None:
        """The one-pass schedule: each device runs its planned strips
        (:func:`geoddu.engine.strips.run_strips`) over its planned reads; `strip_done(strip)`
        in the device's thread after each."""

        def run(k: int, ctx: Worker, stop: threading.Event, tick: Tick) -> None:
            with closing(_prefetch(ctx.source, work[k].reads, stop)) as feed:
                runs, skipped = run_strips(ctx, work[k].strips, plan, feed, sink, area, tick,
                                           stop, strip_done, trim_each_row)
            with self._lock:
                self.encoder_runs += runs
                self.skipped += skipped

        self._on_devices(len(work), run, totals)

    def _on_devices(
        self,
        n: int,
        work: Callable[[int, Worker, threading.Event, Tick], None],
        totals: dict[str, int],
    ) -> None:
        """work(k, worker, stop, tick) in one thread per device k < n, each with its own
        dataset handle; progress is reported and cancellation polled from this thread, and
        the first error stops the others and is raised here."""
        with HeldSignals() as held:
            if n == 1:
                self._in_this_thread(work, totals, held)
            else:
                self._in_threads(n, work, totals, held)

    def _in_threads(
        self,
        n: int,
        work: Callable[[int, Worker, threading.Event, Tick], None],
        totals: dict[str, int],
        held: HeldSignals,
    ) -> None:
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def tick(stage: str) -> None:
            events.put(("done", stage))

        def run(k: int) -> None:
            handle = self.source.reopen()
            ctx = Worker(self.replicas[k], handle)
            try:
                with torch.inference_mode():
                    work(k, ctx, stop, tick)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                events.put(("error", exc))
            finally:
                handle.close()
                events.put(("exit", None))

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        done = dict.fromkeys(totals, 0)
        running, error = len(threads), None
        try:
            while running:
                try:
                    kind, payload = events.get(timeout=0.1)
                except queue.Empty:
                    kind, payload = "tick", None
                if kind == "done":
                    done[payload] += 1
                    self.report(payload, done[payload], totals[payload])
                elif kind == "error" and error is None:
                    error = payload
                    stop.set()
                elif kind == "exit":
                    running -= 1
                if error is None and not stop.is_set():
                    held.deliver()
                    self.check_cancel()
        except BaseException:
            stop.set()
            for t in threads:
                t.join()
            raise
        for t in threads:
            t.join()
        # The pass's threads are gone, and with them the only users of their heaps' freed
        # activations: hand those back, or the next pass's threads add theirs on top.
        release_free_memory()
        if error is not None:
            raise error

    def _in_this_thread(
        self, work: Callable[[int, Worker, threading.Event, Tick], None],
        totals: dict[str, int], held: HeldSignals,
    ) -> None:
        """One device: its work runs in the calling thread. libgomp lets its idle workers spin
        only while it manages no more threads than there are cores; a second computing thread
        (with the pool the caller built when the model was loaded) throttles the spin and every
        parallel region then waits on a futex: the small model's encoder ran 1.5x slower."""
        done = dict.fromkeys(totals, 0)

        def tick(stage: str) -> None:
            done[stage] += 1
            self.report(stage, done[stage], totals[stage])
            held.deliver()
            self.check_cancel()

        self.check_cancel()
        handle = self.source.reopen()
        try:
            with torch.inference_mode():
                work(0, Worker(self.replicas[0], handle), threading.Event(), tick)
        finally:
            handle.close()
            release_free_memory()


# Callers close the generator (contextlib.closing) as soon as their work ends: an exception
# raised in the calling thread (a signal: Terminated, KeyboardInterrupt) keeps the frame, and
# with it an unclosed generator, alive in its traceback until the interpreter shuts down, when
# the reader thread can no longer run and the generator's drain loop would wait for it forever.
def _prefetch(
    source: RasterSource, cells: Sequence[Subimage], stop: threading.Event,
    depth: int = READ_AHEAD,
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
