"""Class maps to polygon layers: ``geoddu vectorize`` and ``geoddu segment --vector``.

What is where:

* :mod:`.polygonize`: :func:`vectorize`, which runs the steps below in order, and its result.
* :mod:`.class_windows`: reading the class map window by window (class ids, names, the grid).
* :mod:`.sieve_gdal`: ``--min-area`` with GDAL's sieve (the default), on a scratch copy.
* :mod:`.sieve_smallest_first`: ``--sieve smallest-first``, geoddu's own whole-map sieve.
* :mod:`.window_regions`: one window's regions (GDAL's polygons, border labels).
* :mod:`.seams` and :mod:`.stitch`: joining the pieces of regions cut by window borders.
* :mod:`.polygon_edges`: repair, edge matching, map coordinates, orientation.
* :mod:`.writers`: the layer written atomically, batch by batch; formats by extension.

Raster reading and atomic outputs are shared with the rest of geoddu and stay in
:mod:`geoddu.io`.
"""

from .polygonize import DRIVERS, SIEVES, VectorizeResult, driver_for, remove_vector, vectorize

__all__ = ["DRIVERS", "SIEVES", "VectorizeResult", "driver_for", "remove_vector", "vectorize"]
