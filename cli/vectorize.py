"""`geoddu vectorize`: a class map GeoTIFF into one polygon layer, window by window."""

from __future__ import annotations

import json

import click

from .options import area_options, json_option, output_option, overwrite_option, quiet_option


def parse_class_ids(ctx: click.Context, param: click.Parameter, value: str | None):
    if not value:
        return None
    try:
        ids = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of class ids") from exc
    if not ids:
        raise click.BadParameter("give at least one class id")
    return ids


@click.command(short_help="Turn a class map into polygons (GeoPackage, GeoJSON, ...).")
@click.argument("src", type=str)
@output_option("Vector file to write; the format comes from the extension: .gpkg, "
               ".geojson/.json, .fgb (FlatGeobuf), .shp (Shapefile).", required=True)
@area_options("First merge every region smaller than this (square map units, m^2 in a metric "
              "CRS) into its largest neighbour.",
              "Simplify the borders between polygons (map units), keeping neighbours glued: "
              "no gaps, no overlaps.")
@click.option("--classes", callback=parse_class_ids, metavar="1,3",
              help="Only write these class ids (default: every class).")
@click.option("--sieve", type=click.Choice(["gdal", "smallest-first"]), default="gdal",
              show_default=True,
              help="How --min-area merges. gdal: GDAL's sieve (GDALSieveFilter, as gdal_sieve "
                   "-4): each small region takes the class of its largest neighbour by the sizes "
                   "before any merge; a group of small regions that are each other's largest "
                   "neighbours stays. smallest-first: geoddu's own, slower sieve: smallest region "
                   "first, judged by its neighbours as they are then, until no region with a "
                   "neighbour is below --min-area.")
@click.option("--window-size", type=click.IntRange(16), default=512, show_default=True,
              help="Pixels per window side; memory grows with its square, not with the map.")
@click.option("--memory-limit", "memory_limit", default=None, metavar="SIZE",
              help="Keep the run's memory under SIZE (1G, 800M, 1.5GiB): windows and batches "
                   "are made small enough for the estimate (plus 10%) to fit, or the run stops "
                   "before any work, naming the smallest workable limit. What the map's content "
                   "makes grow (regions open across windows, the sieve's table, the layer held "
                   "for --simplify) is checked after every window: past SIZE the run stops with "
                   "one line and nothing written.")
@overwrite_option
@quiet_option
@json_option
def vectorize(
    src, output, min_area, simplify, classes, sieve, window_size, memory_limit, overwrite, quiet,
    as_json
) -> None:
    """Polygonise the class map SRC into one polygon layer: one polygon per connected region
    (4-connectivity), with the columns class_id and class_name (from the map's CLASS_NAMES
    tag), in the map's CRS. Nodata makes no polygon.

    The map is read window by window and the pieces of a region cut by window borders are
    merged, so a region is one polygon whatever the window size; polygons are written as soon
    as they are complete, so memory does not grow with the map. --min-area sieves the raster
    first, over the whole map (by default with GDAL's sieve, on a scratch copy of the map
    beside the output: one byte per pixel, twice); --simplify simplifies shared borders once
    for both neighbours (and holds the whole layer for it). The layer is written to a
    temporary file and renamed when complete: a failed run leaves nothing.

    \b
    Examples:
      geoddu vectorize landcover.tif -o landcover.gpkg
      geoddu vectorize landcover.tif -o landcover.gpkg --min-area 500 --simplify 5
      geoddu vectorize landcover.tif -o landcover.gpkg --min-area 500 --sieve smallest-first
      geoddu vectorize landcover.tif -o water.geojson --classes 1 --overwrite
      geoddu vectorize landcover.tif -o landcover.fgb --json
      geoddu vectorize landcover.tif -o landcover.gpkg --memory-limit 1G
    """
    from .progress import progress_reporter

    # Nothing is drawn before the first window is done (a terminal shows a status line that
    # leaves no trace): an error found up front (no CRS, output exists...) stays a single line
    # on stderr. Every stage is shown as it comes, writing the layer included.
    with progress_reporter(quiet or as_json) as progress:
        progress.setup(f"opening {src}")
        from geoddu.vectorize import vectorize as run_vectorize

        result = run_vectorize(src, output, min_area=min_area, simplify=simplify,
                               classes=classes, sieve=sieve, window_size=window_size,
                               overwrite=overwrite, memory_limit=memory_limit,
                               progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif not quiet:
        click.echo(result.summary())
