"""`geoddu init`: an untrained, self-describing checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from geoddu.errors import GeodduError

from .options import model_config, model_options, overwrite_option


@click.command(short_help="Write an untrained checkpoint.")
@model_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="Checkpoint file to write.",
)
@click.option(
    "--classes-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='JSON: [{"name": "water", "color": [0, 0, 255]}, ...] (one per class).',
)
@click.option(
    "--subimage-size",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Subimage size segment will use (a multiple of the model stride).",
)
@click.option(
    "--bands",
    "band_count",
    type=click.IntRange(1),
    default=None,
    help="Band count (defaults to --in-channels).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weight initialisation seed.")
@overwrite_option
def init(output, classes_file, subimage_size, band_count, seed, overwrite, **kwargs) -> None:
    """Write an untrained DDU-Net checkpoint in the same format training writes: architecture,
    class names and colours, bands, normalisation (8-bit -> [0, 1]), subimage size and version.

    Use it to try a pipeline end to end before any training, or as `geoddu train --model`.
    """
    import torch

    from geoddu.checkpoint import build_metadata, save_checkpoint
    from geoddu.models import create_model

    cfg = model_config(kwargs)
    if band_count is not None:
        cfg["in_channels"] = band_count
    classes = None
    if classes_file:
        try:
            classes = json.loads(Path(classes_file).read_text())
        except json.JSONDecodeError as exc:
            raise GeodduError(f"{classes_file}: not valid JSON ({exc.msg})") from exc
        except UnicodeDecodeError as exc:
            raise GeodduError(f"{classes_file}: not valid JSON (not UTF-8 text)") from exc
        except OSError as exc:
            raise GeodduError(f"{classes_file}: cannot read ({exc.strerror or exc})") from exc
        if isinstance(classes, dict):
            classes = classes.get("classes")
        if not isinstance(classes, list):
            raise GeodduError(f"{classes_file}: expected a list of classes")
        if not classes:
            raise GeodduError(f"{classes_file}: lists no classes; a model needs at least one")
        given = click.get_current_context().get_parameter_source("num_classes")
        if given not in (ParameterSource.DEFAULT, None) and cfg["num_classes"] != len(classes):
            raise GeodduError(
                f"--classes {cfg['num_classes']} but {classes_file} lists {len(classes)} "
                f"classes; give one or the other"
            )
        cfg["num_classes"] = len(classes)
    if Path(output).exists() and not overwrite:
        raise GeodduError(f"{output} exists; pass --overwrite to replace it")
    torch.manual_seed(seed)
    model = create_model(**cfg)
    meta = build_metadata(model.config, classes=classes, subimage_size=subimage_size)
    save_checkpoint(output, model, meta)
    click.echo(f"wrote {output}")
