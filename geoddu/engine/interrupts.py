"""Signals that stop a run arrive between subimages, not in the middle of one.

Python runs a signal's handler in the main thread at whatever bytecode it is executing, so the
exception the handler raises (KeyboardInterrupt, or the CLI's Terminated for SIGTERM/SIGHUP)
can surface anywhere: inside ``queue.Queue.put`` too. With a device computing in the main
thread, the main thread hands each window to the writer thread through a queue, and a SIGTERM
raised inside ``Condition.notify``, after it had woken the writer but before it had taken that
waiter off its list, made the next ``notify`` wake a stale waiter: the writer slept forever
beside the queue's final ``None`` and the run hung in ``join`` (2 of 4 CI runs; caught by
``py-spy dump`` on a hung process). While a run computes, :class:`HeldSignals` only notes the
signal, and the runner delivers it (calls the handler that was there before) at the next
subimage boundary, where unwinding is as ordinary as a cancelled run's. A second signal is
delivered at once: a user who presses Ctrl-C twice does not wait for the subimage.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["HeldSignals"]

_STOPPING = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class HeldSignals:
    """Holds SIGINT, SIGTERM and SIGHUP while the block runs; :meth:`deliver` hands a held one to
    its handler. Only handlers written in Python are held (the default action of SIGTERM, say,
    ends the process at once as it always did), and only in the main thread, the one thread
    Python runs handlers in (elsewhere, as in QGIS's task threads, this does nothing)."""

    def __init__(self) -> None:
        self._handlers: dict[int, Any] = {}
        self._held = False
        self._pending: int | None = None

    def __enter__(self) -> HeldSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in _STOPPING:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._handlers[signum] = handler
                signal.signal(signum, self._hold)
                self._held = True
        return self

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        if self._pending is None:
            self._pending = signum
            return
        self._pending = None  # this one is delivered in its place
        self._restore()
        self._handlers[signum](signum, frame)

    def _restore(self) -> None:
        if self._held:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)
            self._held = False

    def deliver(self) -> None:
        """If a signal came, run its handler now (it raises, as a rule)."""
        if self._pending is None:
            return
        signum, self._pending = self._pending, None
        self._restore()
        self._handlers[signum](signum, None)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.deliver()
        finally:
            self._restore()
