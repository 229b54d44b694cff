"""The raster a request's scene is read from: ``src`` as given, or the VRT that stacks its band
files (``--band-files``, or the assets of a ``--stac`` item) in the model's band order.

Every route that opens a request's scene (the plan, the local and the rank executors) goes
through :func:`scene_path`, so the band files are resolved and stacked by one function
whatever the front (CLI, ``geoddu.segment``, QGIS, ``--request``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import GeodduError
from ..io.band_stack import BandRef, band_stack
from .request import SegmentRequest

__all__ = ["band_refs", "scene_path"]


def band_refs(request: SegmentRequest) -> list[BandRef] | None:
    """The band files of a stacked scene, in the model's band order; None for ``src``. A STAC
    item is read here (fetched, if it is a URL)."""
    if request.band_files is not None:
        return [BandRef(p) for p in request.band_files]
    if request.stac is not None:
        from ..io.stac import stac_bands

        return stac_bands(request.stac, request.assets or ())
    return None


@contextmanager
def scene_path(
    request: SegmentRequest, model_bands: int, *, beside_output: bool = False
) -> Iterator[tuple[str, tuple[int, ...] | None]]:
    """(the path to open, the bands to read) for as long as the block runs.

    A stacked scene is a VRT of ``model_bands`` bands, all read: in the output's private
    temporary folder (``beside_output``: a run; removed when the block ends), else in GDAL's
    memory (a plan, which writes nothing)."""
    refs = band_refs(request)
    if refs is None:
        yield str(request.src), request.bands
        return
    if len(refs) != model_bands:
        given = "--band-files" if request.band_files is not None else "--assets"
        raise GeodduError(
            f"{given}: {len(refs)} band{'s' if len(refs) != 1 else ''} given but the model "
            f"takes {model_bands}: give one per model band, in its order"
        )
    beside = request.output if beside_output else None
    with band_stack(refs, request.band_resampling, beside=beside) as path:
        yield path, tuple(range(1, len(refs) + 1))
