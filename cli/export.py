"""`geoddu export`: a checkpoint as one ONNX graph (onnxruntime, QGIS's Deepness plugin)."""

from __future__ import annotations

import json

import click

from geoddu.errors import GeodduError
from geoddu.train.request import parse_grid

from .options import json_option, model_option, output_option, overwrite_option, quiet_option

# Not geoddu.export_onnx (it imports torch, and every `--help` reads these): its INPUT_DTYPES
# and OPSETS.
INPUT_DTYPES = ("float32", "uint8")
OPSETS = (10, 20)


def _grid(ctx: click.Context, param: click.Parameter, value: str | None):
    """'2' -> (2, 2); '1x3' -> (1, 3), rows x columns (as `geoddu train --subimages`)."""
    try:
        return parse_grid(value)
    except GeodduError:
        raise click.BadParameter(f"{value!r}: use P (P x P) or NxM, e.g. 2 or 1x3") from None


@click.command(short_help="Export a checkpoint as one ONNX graph (onnxruntime, Deepness).")
@model_option("geoddu checkpoint (from `geoddu train` or `geoddu init`).", dest="model_path",
              required=True)
@output_option("ONNX file to write (one file, weights included).", required=True)
@click.option("--size", nargs=2, type=click.IntRange(1), required=True, metavar="H W",
              help="Image (tile) size the graph takes. Deepness needs H = W.")
@click.option("--subimages", callback=_grid, default=None, metavar="P|NxM",
              help="Subimage grid of the image: 2 = 2 x 2, 1x3 = 1 row of 3 [the checkpoint's "
                   "subimage size].")
@click.option("--input", "input_dtype", type=click.Choice(INPUT_DTYPES), default="float32",
              show_default=True,
              help="Input type: float32 (what Deepness feeds) or uint8 (8-bit images, cast in "
                   "the graph). Either holds the raster's raw values; normalisation is in the "
                   "graph.")
@click.option("--opset", type=click.IntRange(*OPSETS), default=17, show_default=True,
              help="ONNX opset (17 runs in onnxruntime 1.12 and later, Deepness's range).")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="CM",
              help="Pixel size in cm per pixel for Deepness [the training data's, when in "
                   "metres].")
@click.option("--tiles-overlap", type=click.IntRange(0, 99), default=15, show_default=True,
              metavar="PCT", help="Tile overlap Deepness proposes, percent of the tile size.")
@overwrite_option
@quiet_option
@json_option
def export(
    model_path, output, size, subimages, input_dtype, opset, resolution, tiles_overlap,
    overwrite, quiet, as_json,
) -> None:
    """Write the DDU-Net of a checkpoint as one ONNX graph for H x W images cut into N x M
    subimages: normalisation (and the uint8 cast), the encoders, the communication network
    over the stitched bottleneck maps and the decoders, with softmax probabilities
    (batch, classes, H, W) out. The metadata is what QGIS's Deepness plugin reads (model
    type, class names, tile size, resolution); docs/models.md has the details.

    The file is checked with onnxruntime against the torch model before it is written.
    Needs the onnx extra: pip install 'geoddu[onnx]'.

    \b
    Examples:
      geoddu export -m model.pt -o model.onnx --size 512 512 --subimages 2
      geoddu export -m model.pt -o model-u8.onnx --size 256 256 --input uint8
    """
    from geoddu.export_onnx import export_onnx, require_onnx

    require_onnx()
    result = export_onnx(
        model_path,
        output,
        tuple(size),
        subimages,
        input_dtype=input_dtype,
        opset=opset,
        resolution_cm=resolution,
        tiles_overlap=tiles_overlap,
        overwrite=overwrite,
    )
    if as_json:
        click.echo(json.dumps({
            "output": result.path,
            "size": list(result.size),
            "subimages": list(result.grid),
            "input": result.input_dtype,
            "opset": result.opset,
            "ir_version": result.ir_version,
            "bytes": result.bytes,
            "max_prob_diff": result.max_prob_diff,
            "metadata": {k: json.loads(v) for k, v in result.metadata.items()},
        }, indent=2))
    elif not quiet:
        h, w = result.size
        n, m = result.grid
        click.echo(
            f"wrote {result.path}: {h} x {w} {result.input_dtype} input, {n} x {m} subimages, "
            f"opset {result.opset}, {result.bytes / 1e6:.1f} MB; onnxruntime vs torch: "
            f"max |prob diff| {result.max_prob_diff:.2g}"
        )
