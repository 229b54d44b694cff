"""How much GDAL's block cache may hold, as GDAL reads ``GDAL_CACHEMAX`` (``geoddu.io`` sets
32 MB unless the user set it): a part of every memory plan (segment's and vectorize's)."""

from __future__ import annotations

import os

__all__ = ["GDAL_CACHE_DEFAULT", "gdal_cache_bytes"]

# GDAL's block cache when GDAL_CACHEMAX says nothing readable (geoddu.io sets 32 MB).
GDAL_CACHE_DEFAULT = 32 * 2**20


def gdal_cache_bytes() -> int:
    """GDAL_CACHEMAX as GDAL reads it: megabytes below 100000, bytes above, or a percentage
    of the RAM."""
    value = os.environ.get("GDAL_CACHEMAX", "").strip()
    try:
        if value.endswith("%"):
            return int(float(value[:-1]) / 100 * os.sysconf("SC_PAGE_SIZE")
                       * os.sysconf("SC_PHYS_PAGES"))
        n = int(value)
    except (ValueError, OSError):
        return GDAL_CACHE_DEFAULT
    return n * 2**20 if n < 100_000 else n
