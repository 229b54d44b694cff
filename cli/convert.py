"""`geoddu convert`: weights saved by the paper's reference code -> a geoddu checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from geoddu.errors import GeodduError

from .options import bands_option, output_option, overwrite_option

# What the reference's training script writes next to its unet.pth (vars(args) as JSON).
TRAINING_ARGS = "training_args.json"


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from exc


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise click.BadParameter(f"{value!r} has an empty class name")
    return names


@click.command(short_help="Convert a checkpoint of the paper's reference code.")
@click.argument("reference", type=click.Path(exists=True, dir_okay=False))
@output_option("geoddu checkpoint to write.", required=True)
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Classes, the file `geoddu init/train --classes-file` read (YAML or JSON), "
                   "in the order of the model's outputs.")
@click.option("--class-names", callback=_names, metavar="NAME,NAME,...",
              help="Or just the class names, in the order of the model's outputs "
                   "(default colours).")
@bands_option("Raster bands the model reads, 1-based, in its order [1..input channels].")
@click.option("--mean", callback=_floats, metavar="M,M,M",
              help="Per-band mean subtracted after dividing by --scale, as the reference's "
                   "transform does [ImageNet: 0.485,0.456,0.406].")
@click.option("--std", callback=_floats, metavar="S,S,S",
              help="Per-band standard deviation, after --scale [ImageNet: 0.229,0.224,0.225].")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=255.0,
              show_default=True, help="What the reference divided raw values by first.")
@click.option("--subimage-size", type=click.IntRange(1), default=None,
              help=f"Subimage side segment will use: the one trained with [from "
                   f"{TRAINING_ARGS} beside REFERENCE: image_size / subdomain_dist; else 256].")
@click.option("--communicate/--no-communicate", default=None,
              help=f"Whether the subimages exchanged their maps (the reference's "
                   f"--exchange_fmaps; not stored in the weights) [from {TRAINING_ARGS}].")
@overwrite_option
def convert(reference, output, classes_file, class_names, bands, mean, std, scale,
            subimage_size, communicate, overwrite) -> None:
    """Convert REFERENCE, weights saved by the paper's reference code
    (github.com/corne00/HiRes-Seg-CNN: MultiGPU_UNet_with_comm or MultiGPU_ResNetUNet_with_comm,
    `save_weights` or a whole state dict), into a self-describing geoddu checkpoint.

    Depth, base channels, F, the communication kernel, input channels and the number of
    classes are read from the tensors; the result computes the same logits as the reference.
    """
    from geoddu.checkpoint import save_checkpoint
    from geoddu.checkpoint_metadata import build_metadata, default_classes
    from geoddu.data.base import load_classes_file
    from geoddu.models import DDUNet
    from geoddu.reference.convert import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        from_reference,
        infer_config,
        read_reference,
    )

    if Path(output).resolve() == Path(reference).resolve():
        raise GeodduError(f"{output}: the output would replace REFERENCE; choose another name")
    if Path(output).exists() and not overwrite:
        raise GeodduError(f"{output} exists; pass --overwrite to replace it")
    if classes_file and class_names:
        raise GeodduError("give --classes-file or --class-names, not both")
    sections = read_reference(reference)
    cfg = infer_config(sections, reference)
    args = _training_args(Path(reference))
    notes = []
    if cfg["comm_features"]:
        if communicate is None and isinstance(args.get("exchange_fmaps"), bool):
            communicate = args["exchange_fmaps"]
            notes.append(f"exchange_fmaps={communicate} from {TRAINING_ARGS}")
        if communicate is None:
            raise GeodduError(
                f"{reference}: whether the subimages exchanged their maps is not stored in the "
                f"weights (the reference's --exchange_fmaps); pass --communicate or "
                f"--no-communicate"
            )
        cfg["communicate"] = communicate
    if subimage_size is None:
        subimage_size = _trained_subimage(args)
        if subimage_size is not None:
            notes.append(f"subimage size {subimage_size} from {TRAINING_ARGS}")
        else:
            subimage_size = 256
            notes.append("subimage size 256 (default; --subimage-size sets it)")

    n_in, n_cls = cfg["in_channels"], cfg["num_classes"]
    classes = None
    if classes_file:
        classes = load_classes_file(classes_file)["classes"]
    elif class_names:
        classes = [{**c, "name": n} for c, n in zip(default_classes(len(class_names)),
                                                     class_names, strict=True)]
    if classes is not None and len(classes) != n_cls:
        raise GeodduError(f"{reference} has {n_cls} output classes but {len(classes)} class "
                          f"names were given")
    if bands is not None and len(bands) != n_in:
        raise GeodduError(f"{reference} reads {n_in} bands but --bands lists {len(bands)}")
    normalization = _normalization(mean, std, scale, n_in, IMAGENET_MEAN, IMAGENET_STD)

    model = DDUNet(**cfg)
    weights = from_reference(sections, model.state_dict(), cfg["encoder"], reference)
    model.load_state_dict(weights)
    meta = build_metadata(model.config, classes=classes, bands=bands,
                          normalization=normalization, subimage_size=subimage_size)
    save_checkpoint(output, model, meta,
                    training={"converted_from": str(reference), "source": "HiRes-Seg-CNN"})
    name = (f"DDU-Net({cfg['depth']},{cfg['comm_features']},"
            f"{'Y' if cfg['communicate'] else 'N'})") if cfg["comm_features"] else \
        f"U-Net({cfg['depth']})"
    encoder = "U-Net encoder, base " + str(cfg["base_channels"]) if cfg["encoder"] == "unet" \
        else f"{cfg['encoder']} encoder"
    extra = f"; {'; '.join(notes)}" if notes else ""
    click.echo(f"wrote {output}: {name}, {encoder}, {n_in} bands, {n_cls} classes, "
               f"subimages of {subimage_size}{extra}")


def _training_args(reference: Path) -> dict[str, Any]:
    """The reference training script's arguments, when its JSON sits beside the weights."""
    path = reference.parent / TRAINING_ARGS
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeodduError(f"{path}: cannot read ({exc.__class__.__name__}); move it away or "
                          f"pass --communicate/--no-communicate and --subimage-size") from exc
    return doc if isinstance(doc, dict) else {}


def _trained_subimage(args: dict[str, Any]) -> int | None:
    size, grid = args.get("image_size"), args.get("subdomain_dist")
    if not (isinstance(size, int) and isinstance(grid, list) and len(grid) == 2):
        return None
    # The reference cuts square images into square subimages (its split assumes them).
    nx = grid[0]
    if not isinstance(nx, int) or nx < 1 or size % nx:
        return None
    return size // nx


def _normalization(mean: list[float] | None, std: list[float] | None, scale: float, n_in: int,
                   imagenet_mean: tuple[float, ...], imagenet_std: tuple[float, ...],
                   ) -> dict[str, list[float]]:
    """The reference's x / scale -> (x - mean) / std, as geoddu's (x - mean') / std' on raw
    values: mean' = scale * mean, std' = scale * std."""
    if mean is None:
        if n_in != len(imagenet_mean):
            raise GeodduError(f"the model reads {n_in} bands: give --mean and --std (the "
                              f"ImageNet defaults are for 3 RGB bands)")
        mean = list(imagenet_mean)
    if std is None:
        if n_in != len(imagenet_std):
            raise GeodduError(f"the model reads {n_in} bands: give --std (the ImageNet "
                              f"default is for 3 RGB bands)")
        std = list(imagenet_std)
    for what, values in (("--mean", mean), ("--std", std)):
        if len(values) != n_in:
            raise GeodduError(f"{what} lists {len(values)} values for a model with {n_in} bands")
    if any(s <= 0 for s in std):
        raise GeodduError("--std values must be above 0")
    return {"mean": [scale * m for m in mean], "std": [scale * s for s in std]}
