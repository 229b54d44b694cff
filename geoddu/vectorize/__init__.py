"""Class map -> polygons, window by window, without seams (`geoddu vectorize`, `--vector`).

* `polygonize`: `vectorize()`, which runs the steps below in order;
* `class_windows`: reading the class map window by window, its class names;
* `window_regions`, `seams`, `stitch`: one window's regions, and joining a region's pieces
  across window borders;
* `gdal_sieve` (the default for `--min-area`) and `exact_sieve` (geoddu's own, which leaves
  no region below the area): the sieve over the whole map;
* `polygon_edges`: repair, matching edges for simplification, map coordinates;
* `layer_writer`: the polygon layer, written in batches and renamed into place when complete.

Never imports torch or the models (docs/vectorize.md says how and how fast).
"""

from .class_windows import class_names_of
from .layer_writer import DRIVERS, driver_for, remove_vector
from .polygonize import SIEVES, VectorizeResult, vectorize

__all__ = ["DRIVERS", "SIEVES", "VectorizeResult", "class_names_of", "driver_for",
           "remove_vector", "vectorize"]
