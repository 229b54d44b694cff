"""How much memory this process has used (for summaries and benchmarks)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident set size in MB.

    VmHWM rather than ru_maxrss: Linux carries ru_maxrss over exec, so a process started by a
    big parent would report the parent's peak.
    """
    return _status_mb("VmHWM:", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def current_rss_mb() -> float:
    """This process's resident set size now, in MB (0 where /proc is missing)."""
    return _status_mb("VmRSS:", 0.0)


def _status_mb(key: str, otherwise: float) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return otherwise


def _malloc_trim():  # noqa: ANN202 - a ctypes function, or None off glibc
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim).

    The one-pass schedule frees a row of skip tensors while the next row's are allocated;
    glibc then serves the next large tensors from the heap (its mmap threshold rises with
    every freed mapping) and the holes between them stay resident, so RSS would creep up with
    the number of rows. Trimming after each row keeps it flat. No-op off glibc.
    """
    if _TRIM is not None:
        _TRIM(0)
