"""Sizes in bytes as people write and read them (--memory-limit, summaries): one module below
every layer, so the engine and the vectorizer share it."""

from __future__ import annotations

from .errors import GeodduError

__all__ = ["MEMORY_MARGIN", "human_bytes", "parse_bytes"]

# What a memory plan's estimate leaves out that a --memory-limit must still hold: the
# estimate's own error (segment's and vectorize's plans are each within about 10% of the
# measured peak).
MEMORY_MARGIN = 1.10


def human_bytes(n: float) -> str:
    """Bytes as people read them, in powers of 1024: 512 B, 25.4 KB, 1.0 GB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str | int, what: str = "--memory-limit") -> int:
    """'1G', '800M', '1.5GiB', '2048MB', or a plain number of bytes; powers of 1024, as
    `human_bytes` prints them and as prlimit and cgroups count."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper().removesuffix("B").removesuffix("I")
        unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
        try:
            value = int(float(s[: len(s) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise GeodduError(f"{what}: {text!r} is not a size; write e.g. 1G, 800M or "
                              "1.5GiB") from None
    if value <= 0:
        raise GeodduError(f"{what} must be positive, got {text!r}")
    return value
