"""Whole-layer polygon geometry steps: repair, edge matching, map coordinates, orientation.

Each works on the whole layer in place, batch by batch, so that only one batch exists twice
at a time.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine

from geoddu.errors import GeodduError

# Polygons per batch in the steps over the whole layer (edge matching, map coordinates): the
# layer is changed in place batch by batch, so only one batch exists twice at a time.
_BATCH = 20_000


def repair(geoms: np.ndarray, src: str) -> np.ndarray:
    """Make sure every polygon is valid (GDAL's and GEOS's already are; this is a safety net)."""
    bad = np.flatnonzero(~shapely.is_valid(geoms))
    if bad.size:
        fixed = shapely.make_valid(geoms[bad])
        kinds = shapely.get_type_id(fixed)
        if not np.isin(kinds, (3, 6)).all():  # Polygon, MultiPolygon
            raise GeodduError(f"{src}: produced an invalid polygon that cannot be repaired")
        geoms = geoms.copy()
        geoms[bad] = fixed
    return geoms


def match_edges(geoms: np.ndarray) -> np.ndarray:
    """Add to each polygon the vertices of other polygons lying on its edges.

    GDAL puts vertices only where a boundary turns, so where three regions meet (a T) the
    straight side has no vertex: the polygons cover the plane without gaps or overlaps, but
    their edges do not match vertex for vertex, which GEOS's coverage operations require. In
    pixel coordinates every vertex is a grid point: each ring is cut at every grid point
    (``segmentize(1)``) and keeps those points that are a vertex of some polygon.
    """
    if geoms.size == 0:
        return geoms
    xy = np.rint(shapely.get_coordinates(geoms)).astype(np.int64)
    span = int(xy[:, 1].max()) + 2
    vertices = np.unique(xy[:, 0] * span + xy[:, 1])
    del xy
    for start in range(0, geoms.size, _BATCH):
        batch = geoms[start : start + _BATCH]
        n_int = shapely.get_num_interior_rings(batch)
        owner = np.repeat(np.arange(batch.size), n_int)
        ring_no = np.concatenate([np.arange(k) for k in n_int]) if n_int.sum() else owner
        holes = shapely.get_interior_ring(batch[owner], ring_no)
        rings = np.concatenate([shapely.get_exterior_ring(batch), holes])
        ring_owner = np.concatenate([np.arange(batch.size), owner])
        dense = shapely.segmentize(rings, 1.0)
        coords, ring_idx = shapely.get_coordinates(dense, return_index=True)
        coords = np.rint(coords)
        ci = coords.astype(np.int64)
        keys = ci[:, 0] * span + ci[:, 1]
        # ``vertices`` is sorted: a binary search per point beats np.isin's sort of the batch.
        found = np.minimum(np.searchsorted(vertices, keys), vertices.size - 1)
        keep = vertices[found] == keys
        new_rings = shapely.linearrings(coords[keep], indices=ring_idx[keep])
        # Shell first for each polygon: stable sort by owner keeps shells (listed first) ahead.
        order = np.argsort(ring_owner, kind="stable")
        geoms[start : start + batch.size] = shapely.polygons(
            new_rings[order], indices=ring_owner[order]
        )
    return geoms


def to_map(geoms: np.ndarray, transform: Affine, *, orient: bool = False) -> np.ndarray:
    """Pixel -> map coordinates, in place and in chunks (never two copies of the layer)."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack((a * x + b * y + c, d * x + e * y + f))

    for start in range(0, geoms.size, _BATCH):
        part = shapely.transform(geoms[start : start + _BATCH], apply)
        if orient:
            part = orient_polygons(part)
        geoms[start : start + _BATCH] = part
    return geoms


def orient_polygons(geoms: np.ndarray) -> np.ndarray:
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        # Counter-clockwise shells, clockwise holes: what RFC 7946 (GeoJSON) asks for.
        return shapely.orient_polygons(geoms, exterior_cw=False)
    return geoms
