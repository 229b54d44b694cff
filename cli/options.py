"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

# Not geoddu.models / geoddu.checkpoint: those import torch, and every `--help` reads these.
from geoddu.model_config import DEFAULT_CONFIG, ENCODERS, MAX_CLASSES, MAX_DEPTH

F = Callable[..., Any]


def model_options(f: F) -> F:
    """The architecture keywords, named as in segmentation-models-pytorch / torchgeo."""
    opts = [
        click.option(
            "--encoder",
            type=click.Choice(ENCODERS),
            default=DEFAULT_CONFIG["encoder"],
            show_default=True,
            help="Encoder: the paper's U-Net or a ResNet (Fig. 12).",
        ),
        click.option(
            "--in-channels",
            type=click.IntRange(1),
            default=DEFAULT_CONFIG["in_channels"],
            show_default=True,
            help="Number of input bands.",
        ),
        click.option(
            "--classes",
            "num_classes",
            type=click.IntRange(1, MAX_CLASSES),
            default=DEFAULT_CONFIG["num_classes"],
            show_default=True,
            help="Number of output classes.",
        ),
        click.option(
            "--depth",
            type=click.IntRange(1, MAX_DEPTH),
            default=DEFAULT_CONFIG["depth"],
            show_default=True,
            help="D: down/up-sampling blocks (U-Net encoder).",
        ),
        click.option(
            "--base-channels",
            type=click.IntRange(1),
            default=DEFAULT_CONFIG["base_channels"],
            show_default=True,
            help="Channels of the first block; doubled at each level.",
        ),
        click.option(
            "--comm-features",
            type=click.IntRange(0),
            default=DEFAULT_CONFIG["comm_features"],
            show_default=True,
            help="F: bottleneck maps sent through the communication network.",
        ),
        click.option(
            "--communicate/--no-communicate",
            default=True,
            show_default=True,
            help="C: stitch the F maps of all subimages (Y) or not (N).",
        ),
        click.option(
            "--up-bias/--no-up-bias",
            default=True,
            show_default=True,
            help="Bias on the transposed convs (Table VIII: yes, Table V: no).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def encoder_weights_options(f: F) -> F:
    """Pretrained ResNet weights from a local file (docs/models.md lists published ones)."""
    f = click.option(
        "--adapt-bands",
        is_flag=True,
        help="Spread 3-band (RGB) --encoder-weights over the model's bands: the RGB kernels "
        "repeated and scaled by 3/bands (timm's and torchgeo's rule).",
    )(f)
    return click.option(
        "--encoder-weights",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        metavar="FILE",
        help="Local torchvision, timm or torchgeo ResNet state dict for --encoder "
        "resnet18/resnet50, for as many bands as the model (or 3 with --adapt-bands).",
    )(f)


# The DDUNet keywords that `model_options` puts on a command (DEFAULT_CONFIG has the rest).
MODEL_OPTION_KEYS = (
    "encoder",
    "in_channels",
    "num_classes",
    "depth",
    "base_channels",
    "comm_features",
    "communicate",
    "up_bias",
)


def model_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the model options out of a command's kwargs."""
    cfg = {k: kwargs.pop(k) for k in MODEL_OPTION_KEYS}
    if cfg["encoder"] != "unet":
        cfg["depth"] = 4
    return cfg


def parse_bands(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        bands = [int(v) for v in value.split(",")]
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of band numbers"
        ) from exc
    if any(b < 1 for b in bands):
        raise click.BadParameter("band numbers start at 1")
    return bands


bands_option = click.option(
    "--bands",
    callback=lambda ctx, param, v: parse_bands(v),
    metavar="1,2,3",
    help="Input bands to use, 1-based, in the model's order (default: the checkpoint's).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace an existing output file."
)
timeout_option = click.option(
    "--timeout",
    type=click.IntRange(1),
    default=1800,
    show_default=True,
    help="Under torchrun: seconds a rank may wait on another before the whole job ends with an "
         "error (a dead or hung rank).",
)
