"""`geoddu init`: an untrained, self-describing checkpoint."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from geoddu.errors import GeodduError

from .options import (
    bands_option,
    encoder_weights_options,
    model_config,
    model_options,
    output_option,
    overwrite_option,
)


@click.command(short_help="Write an untrained checkpoint.")
@model_options
@encoder_weights_options
@output_option("Checkpoint file to write.", required=True)
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Classes, the file `geoddu train --classes-file` reads: YAML or JSON, "
                   '[{"name": "water", "color": [0, 0, 255]}, ...] (one per class; '
                   "docs/training.md).")
@click.option("--subimage-size", type=click.IntRange(1), default=256, show_default=True,
              help="Subimage size segment will use (a multiple of the model stride).")
@bands_option("Input bands the model reads, 1-based, in its order (as `geoddu segment "
              "--bands`); sets --in-channels to their count [1..--in-channels].")
@click.option("--seed", type=int, default=0, show_default=True, help="Weight initialisation seed.")
@overwrite_option
def init(output, classes_file, subimage_size, bands, seed, overwrite, encoder_weights, adapt_bands,
         **kwargs) -> None:
    """Write an untrained DDU-Net checkpoint in the same format training writes: architecture,
    class names and colours, bands, normalisation (8-bit -> [0, 1]), subimage size and version.

    Use it to try a pipeline end to end before any training, or as `geoddu train --model`.
    With --encoder-weights its ResNet encoder is pretrained; 3-band weights are taken for
    ImageNet's and the checkpoint normalises with ImageNet's statistics.
    """
    import torch

    from geoddu.checkpoint import save_checkpoint
    from geoddu.checkpoint_metadata import build_metadata
    from geoddu.data.base import load_classes_file
    from geoddu.models import create_model
    from geoddu.models.encoder_weights import imagenet_normalization, load_encoder_weights

    ctx = click.get_current_context()
    cfg = model_config(kwargs)
    if bands is not None:
        if _given(ctx, "in_channels") and cfg["in_channels"] != len(bands):
            raise GeodduError(
                f"--in-channels {cfg['in_channels']} but --bands lists {len(bands)} bands; "
                f"give one or the other"
            )
        cfg["in_channels"] = len(bands)
    classes = None
    if classes_file:
        classes = load_classes_file(classes_file)["classes"]
        if _given(ctx, "num_classes") and cfg["num_classes"] != len(classes):
            raise GeodduError(
                f"--classes {cfg['num_classes']} but {classes_file} lists {len(classes)} "
                f"classes; give one or the other"
            )
        cfg["num_classes"] = len(classes)
    if Path(output).exists() and not overwrite:
        raise GeodduError(f"{output} exists; pass --overwrite to replace it")
    if adapt_bands and not encoder_weights:
        raise GeodduError("--adapt-bands adapts --encoder-weights; give those too")
    torch.manual_seed(seed)
    model = create_model(**cfg)
    normalization = None  # 8-bit -> [0, 1]
    if encoder_weights:
        pretrained = load_encoder_weights(model, encoder_weights, adapt_bands=adapt_bands)
        if pretrained.bands == 3:
            normalization = imagenet_normalization(cfg["in_channels"])
    meta = build_metadata(model.config, classes=classes, bands=bands, subimage_size=subimage_size,
                          normalization=normalization)
    save_checkpoint(output, model, meta)
    click.echo(f"wrote {output}")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
