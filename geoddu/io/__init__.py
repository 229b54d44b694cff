"""Raster and vector I/O. Never imports torch or the models."""

import os

# GDAL's block cache defaults to 5% of RAM; on a 16384^2 scene it would fill to that and make
# the process's memory grow with the scene. A fixed cache keeps memory flat; users can still
# set GDAL_CACHEMAX themselves.
os.environ.setdefault("GDAL_CACHEMAX", "256")
