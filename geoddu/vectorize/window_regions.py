"""The regions of one window: GDAL's polygons, their labels along the borders, as a raster.

Everything is in pixel coordinates of the whole raster (integer vertices), so pieces of one
region cut at a window border meet vertex for vertex.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import rasterio.features
import shapely

from geoddu.vectorize.class_windows import NONE


def region_shapes(cls: np.ndarray) -> list[tuple[dict, float]]:
    """GDAL's polygons of the 4-connected regions of a window (pixel coordinates)."""
    if not (cls != NONE).any():
        return []
    return list(rasterio.features.shapes(cls, mask=cls != NONE, connectivity=4))


def polygon_chunks(
    cls: np.ndarray, c0: int, r0: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The window's polygons (whole-raster pixel coordinates) and classes, ``chunk`` at a time.

    GDAL hands its polygons over as GeoJSON-like dictionaries, several times the size of the
    polygons themselves: converting them a chunk at a time keeps only one chunk of them alive.
    """
    if not (cls != NONE).any():
        return
    shapes = rasterio.features.shapes(cls, mask=cls != NONE, connectivity=4)
    while part := list(itertools.islice(shapes, chunk)):
        values = np.fromiter((v for _, v in part), dtype=np.uint8, count=len(part))
        yield build_polygons(part, c0, r0), values


def build_polygons(shapes: Sequence[tuple[dict, float]], c0: int, r0: int) -> np.ndarray:
    """shapely polygons from GDAL's GeoJSON rings, shifted to whole-raster pixel coordinates.

    Built in bulk (one coordinate array, ``linearrings``/``polygons`` with indices): several
    times faster than ``shapely.geometry.shape`` per polygon.
    """
    if not shapes:
        return np.empty(0, dtype=object)
    rings: list = []
    ring_poly: list[int] = []
    for i, (geom, _) in enumerate(shapes):
        for ring in geom["coordinates"]:
            rings.append(ring)
            ring_poly.append(i)
    ring_len = np.fromiter(map(len, rings), np.int64, len(rings))
    # Straight from the tuples' floats into one array: about twice as fast as np.asarray on a
    # list of (x, y) tuples, and without that list.
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(rings))
    xy = np.fromiter(flat, np.float64, 2 * int(ring_len.sum())).reshape(-1, 2)
    xy += (c0, r0)  # integers: exact
    rings_geom = shapely.linearrings(xy, indices=np.repeat(np.arange(ring_len.size), ring_len))
    return shapely.polygons(rings_geom, indices=np.asarray(ring_poly))


def _runs(line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.r_[True, line[1:] != line[:-1]])
    return starts, np.diff(np.r_[starts, line.size])


def line_labels(
    cls: np.ndarray,
    polys: np.ndarray,
    r0: int,
    c0: int,
    cut: dict[str, bool] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Class and label (index in ``polys`` + 1, 0 = none) of the window's 4 border lines.

    Each run of equal class along a line lies in one region; the polygon holding the centre
    of its first pixel is found with a spatial index, so no label raster is needed. Only the
    lines ``cut`` names as True are labelled (all four by default), and ``polys`` need only
    hold the polygons that touch them; the other lines get label 0.
    """
    h, w = cls.shape
    specs = {
        "top": (cls[0, :], 0, 0, True),
        "bottom": (cls[-1, :], h - 1, 0, True),
        "left": (cls[:, 0], 0, 0, False),
        "right": (cls[:, -1], 0, w - 1, False),
    }
    runs = {}
    xs, ys = [], []
    for name, (line, r, c, horizontal) in specs.items():
        starts, lengths = _runs(line)
        keep = line[starts] != NONE
        if cut is not None and not cut[name]:
            keep[:] = False
        runs[name] = (starts, lengths, keep)
        s = starts[keep]
        if horizontal:
            xs.append(c0 + s + 0.5)
            ys.append(np.full(s.size, r0 + r + 0.5))
        else:
            xs.append(np.full(s.size, c0 + c + 0.5))
            ys.append(r0 + s + 0.5)
    x, y = np.concatenate(xs), np.concatenate(ys)
    found = np.zeros(x.size, np.int64)
    if x.size:
        tree = shapely.STRtree(polys)
        point_idx, poly_idx = tree.query(shapely.points(x, y), predicate="within")
        found[point_idx] = poly_idx + 1
        if np.count_nonzero(found) != x.size:
            raise RuntimeError("polygonize: a border pixel fell in no polygon")
    out = {}
    pos = 0
    for name, (line, _, _, _) in specs.items():
        starts, lengths, keep = runs[name]
        labels = np.zeros(starts.size, np.int64)
        k = int(keep.sum())
        labels[keep] = found[pos : pos + k]
        pos += k
        out[name] = (line, np.repeat(labels, lengths))
    return out


def label_raster(shapes: Sequence[tuple[dict, float]], shape: tuple[int, int]) -> np.ndarray:
    """Window-local label raster (polygon index + 1, 0 = none), burnt back from the polygons.

    Pixel-aligned polygons burnt with the pixel-centre rule reproduce the regions exactly.
    """
    if not shapes:
        return np.zeros(shape, np.int32)
    return rasterio.features.rasterize(
        ((geom, i + 1) for i, (geom, _) in enumerate(shapes)),
        out_shape=shape,
        fill=0,
        dtype="int32",
    )
