"""`geoddu segment`: a whole scene of any size through a DDU-Net checkpoint, streamed."""

from __future__ import annotations

import sys

import click

from geoddu.engine.request import PROBABILITY_DTYPES, SCHEDULES, SegmentRequest
from geoddu.errors import GeodduError
from geoddu.io.warp import DEFAULT_WARP_RESAMPLING

from .options import (
    area_options,
    bands_option,
    device_option,
    field_type,
    model_option,
    model_precision_option,
    output_option,
    overwrite_option,
    parse_list,
    progress_option,
    quiet_option,
    request_option,
    timeout_option,
)
from .requests import error_events, request_fields


# Every option that sets a field of the request is named after it (geoddu.engine.request).
@click.command(short_help="Segment a raster into a class map GeoTIFF.")
@click.argument("src", nargs=-1, required=False, type=str)
@output_option("Class map GeoTIFF to write (uint8, nodata 255, colour table).")
@click.option("--output-dir", default=None, type=click.Path(file_okay=False),
              help="Several scenes (or a folder, or a .txt of paths): write OUTPUT_DIR/<stem>.tif "
                   "each.")
@click.option("--mosaic", is_flag=True,
              help="Take every SRC (files, folders, .txt lists, VRTs) as ONE scene: a GDAL "
                   "virtual mosaic over them, segmented without seams at sheet edges. With -o: "
                   "one map over their union; with --output-dir: one map per input, cut from "
                   "it on the input's grid (docs/seams.md).")
@click.option("--target-crs", default=None, metavar="CRS",
              help="With --mosaic: warp the inputs to this CRS (EPSG:XXXX, WKT, PROJ), nearest "
                   "neighbour; else inputs in other CRSs are refused.")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="R",
              help="With --mosaic: warp the inputs to pixels of R (target CRS units), aligned "
                   "on multiples of R; else inputs of other resolutions are refused.")
@click.option("--skip-existing", is_flag=True,
              help="With --output-dir: leave scenes whose output exists (continue a killed "
                   "batch).")
@timeout_option
@model_option("geoddu checkpoint (from `geoddu train` or `geoddu init`).")
@request_option("geoddu.engine.request.SegmentRequest")
@bands_option("Input bands to use, 1-based, in the model's order (default: the checkpoint's).")
@click.option("--band-files", callback=lambda ctx, param, v: parse_list(v),
              metavar="B04.tif,B03.tif,B02.tif",
              help="Instead of SRC: single-band files (paths or URLs; band 1 of each), stacked "
                   "in the model's band order on the first file's grid (docs/band-files.md).")
@click.option("--stac", default=None, metavar="ITEM",
              help="Instead of SRC: a STAC item (JSON file or https URL) whose --assets are "
                   "the band files.")
@click.option("--assets", callback=lambda ctx, param, v: parse_list(v),
              metavar="red,green,blue",
              help="With --stac: asset keys (or eo:bands common names), in the model's band "
                   "order.")
@click.option("--band-resampling", type=field_type(SegmentRequest, "band_resampling"),
              default=SegmentRequest.band_resampling, show_default=True,
              help="How a band file at another resolution than the first is resampled onto "
                   "its grid (GDAL's methods; nearest for classes or QA bands).")
@click.option("--resample", type=field_type(SegmentRequest, "resample", bare=True), default=None,
              is_flag=False, flag_value=DEFAULT_WARP_RESAMPLING, metavar="[METHOD]",
              help="Read the scene at the model's pixel size (its card's pixel_size) through a "
                   "GDAL warped VRT, with this GDAL warp kernel; --resample alone: "
                   f"{DEFAULT_WARP_RESAMPLING}. Methods: "
                   + ", ".join(field_type(SegmentRequest, "resample").choices)
                   + " (docs/resampling.md).")
@click.option("--output-grid", type=field_type(SegmentRequest, "output_grid"),
              default=SegmentRequest.output_grid, show_default=True,
              help="With --resample: write the class map on the scene's grid (same CRS, "
                   "transform and size as SRC; classes resampled by nearest neighbour) or on "
                   "the model's (the warped grid). --probabilities and --confidence need "
                   "model.")
@click.option("--strict", is_flag=True,
              help="Stop (exit 1, nothing written) when the scene's pixel size differs from "
                   "the model's by more than 1.5x, instead of warning.")
@click.option("--subimage-size", type=click.IntRange(1), default=None,
              help="Override the checkpoint's subimage size (a multiple of the model stride).")
@device_option("cpu (default), cuda, cuda:1; several comma-separated spread the work.")
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="Spread the subimages over this many CUDA devices on this host.")
@model_precision_option
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None,
              help="Also write per-class probabilities (float32, one band per class).")
@click.option("--confidence", type=click.Path(dir_okay=False), default=None,
              help="Also write the maximum softmax probability (float32).")
@click.option("--probabilities-dtype", type=click.Choice(PROBABILITY_DTYPES),
              default=SegmentRequest.probabilities_dtype, show_default=True,
              help="Data type of --probabilities and --confidence. uint8: p stored as "
                   "round(p*254), nodata 255, with GDAL scale 1/254 so GIS tools read p back; 4x "
                   "smaller.")
@click.option("--cog", is_flag=True, help="Write a Cloud-Optimised GeoTIFF.")
@click.option("--scratch", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder for the bottleneck store of large scenes (F/stride² float32 per pixel, "
                   "checked for free space before any work; two-pass runs only). Default: the "
                   "system's temporary folder.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=SegmentRequest.schedule,
              show_default=True,
              help="one-pass: every subimage encoded once, strips of up to 8 subimage columns "
                   "keep their skip connections until their row is decoded (at most 1 GB of "
                   "them). two-pass: encode everything, then encode again to decode; less "
                   "memory, more work. auto: one pass where it fits and costs less. Never "
                   "changes the result; the summary says which ran.")
@click.option("--memory-limit", "memory_limit", default=None, metavar="SIZE",
              help="Keep the run's peak memory under SIZE (1G, 800M, 1.5GiB): the plan narrows "
                   "its strips, or takes two passes with the bottleneck maps on --scratch, until "
                   "its estimate (plus 10%) fits, and stops before any work, naming the smallest "
                   "workable limit, when nothing does. --plan shows what was chosen.")
@click.option("--aoi", type=str, default=None,
              help="Area of interest (any vector GDAL reads, any CRS): only its pixels are "
                   "segmented; the rest is nodata. Work grows with the area, not the scene.")
@click.option("--vector", type=click.Path(dir_okay=False), default=None,
              help="Also write the classes as polygons (.gpkg, .geojson, .fgb, .shp), as "
                   "`geoddu vectorize`.")
@area_options("With --vector: sieve away regions smaller than this area.",
              "With --vector: simplify shared borders (map units).", dest="vector_")
@click.option("--aoi-layer", default=None, help="Layer of the --aoi file.")
@click.option("--aoi-where", default=None, metavar="SQL",
              help="Attribute filter for --aoi features, e.g. \"name = 'farm'\".")
@click.option("--resume", is_flag=True,
              help="Keep progress beside the output (a hidden .NAME.geoddu-resume folder) after "
                   "each strip, and continue a killed run of the same job from its last "
                   "finished strip; the result is byte-identical to an uninterrupted --resume "
                   "run. A changed model, input or option is refused (docs/resume.md).")
@click.option("--plan", "show_plan", is_flag=True,
              help="Print the plan (schedule and why, strips per device, steps, expected peak "
                   "memory, outputs) and exit: no pixel is read, nothing is written.")
@click.option("--json", "as_json", is_flag=True, help="With --plan: print it as JSON.")
@overwrite_option
@quiet_option
@progress_option
def segment(src, output_dir, skip_existing, timeout, request_file, show_plan, as_json, quiet,
            progress, **fields) -> None:
    """Segment the raster SRC with a DDU-Net checkpoint and write a georeferenced class map
    (same CRS, transform and size as SRC).

    The whole scene is treated as one DDU-Net over a grid of subimages: the encoder runs on
    every subimage, the communication network runs over the bottleneck mosaic of the whole
    scene (in exact tiles), then every subimage is decoded. Memory stays bounded whatever the
    scene size, and there are no seams at tile borders. Nodata in SRC stays nodata (255).

    SRC is anything GDAL opens (GeoTIFF, VRT, /vsicurl/...) or a plain/Big/OME-TIFF.
    The output is written to a temporary file and renamed when complete.

    \b
    Examples:
      geoddu segment scene.tif -o landcover.tif -m model.pt
      geoddu segment scene.tif -o landcover.tif -m model.pt --gpus 4 --precision bf16
      geoddu segment scan.ome.tif -o classes.tif -m model.pt --bands 1 --probabilities p.tif
      geoddu segment scene.tif -o farm.tif -m model.pt --aoi fields.gpkg --aoi-where "id = 7"
      geoddu segment scene.tif -o landcover.tif -m model.pt --vector landcover.gpkg --min-area 100
      geoddu segment a.tif b.tif scenes/ list.txt --output-dir out/ -m model.pt --skip-existing
      geoddu segment --band-files B04.tif,B03.tif,B02.tif -o landcover.tif -m model.pt
      geoddu segment --stac item.json --assets red,green,blue -o landcover.tif -m model.pt
      geoddu segment sheets/ --mosaic -o map.tif -m model.pt
      geoddu segment scene-0.5m.tif -o landcover.tif -m model-2m.pt --resample bilinear
      geoddu segment sheets/ --mosaic --output-dir out/ -m model.pt --target-crs EPSG:32631
      torchrun --nproc-per-node 4 -m geoddu.cli segment scene.tif -o out.tif -m model.pt

    Several SRC (a folder means its rasters, a .txt file one path per line) need
    --output-dir. Under torchrun the ranks share the work: scenes are spread over the ranks, and
    a scene larger than a fair share is cut into blocks of subimages, one per rank, which
    exchange only the halos the communication network needs (docs/distributed.md); a --mosaic
    is one such scene, its VRT built alike on every rank.
    """
    from .segment_run import run_segment

    with error_events(progress == "json"):
        options = request_fields(click.get_current_context(), SegmentRequest, request_file)
        stacked = options.get("band_files") is not None or options.get("stac") is not None
        if request_file is not None:
            if src:
                raise GeodduError("--request names the raster: give no SRC with it")
            options = SegmentRequest.from_dict(options).to_dict()
            src = options.pop("src")
            src = tuple(src) if isinstance(src, list) else (src,)
        elif stacked and src:
            raise GeodduError("--band-files and --stac name the scene: give no SRC with them")
        elif not src and not stacked:
            raise GeodduError("give the raster to segment (SRC), or --request FILE")
        elif options.get("model") is None:
            raise GeodduError(
                "no model (-m/--model): train one (geoddu train, or the QGIS Train model "
                "algorithm) or write an untrained one with geoddu init; see docs/models.md"
            )
        if not src:  # the scene is the band files, one scene
            src = (None,)
        if as_json and not show_plan:
            raise GeodduError("--json goes with --plan")
    if show_plan:
        from .segment_run import print_plans

        sys.exit(print_plans(src, options.pop("output", None), output_dir, options,
                             as_json=as_json))
    sys.exit(
        run_segment(
            src,
            options.pop("output", None),
            output_dir,
            options,
            skip_existing=skip_existing,
            timeout_s=timeout,
            quiet=quiet,
            progress_format=progress,
        )
    )
