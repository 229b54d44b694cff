"""Raster and vector I/O. Never imports torch or the models."""

import os

# GDAL's block cache defaults to 5% of RAM; on a big scene it fills to that and makes the
# process's memory grow with the scene. 32 MB holds a row of 512 px input tiles of a
# 16384 px wide RGB scene (25 MB) plus the output tiles being filled, so each tile is still
# decompressed once per pass (a one-pass strip needs far less: 8 subimages wide); users can
# set GDAL_CACHEMAX themselves.
os.environ.setdefault("GDAL_CACHEMAX", "32")
