"""Options shared by several commands, declared once (as rasterio's `rio/options.py`).

An option that sets a request field (:mod:`geoddu.request_base`) is named after the field, so a
command line maps onto its request by name; where the request declares a check (a range, a list
of choices), :func:`field_type` makes the option's type from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

# Not geoddu.models / geoddu.checkpoint: those import torch, and every `--help` reads these.
from geoddu.model_config import DEFAULT_CONFIG
from geoddu.parallel import PRECISION_CHOICES, PRECISIONS
from geoddu.request_base import field_check
from geoddu.train.request import TrainRequest

F = Callable[..., Any]


def field_type(request: type, name: str, *, bare: bool = False) -> click.ParamType:
    """The click type of the option for ``request``'s field ``name``, from its declared check.
    ``bare``: the option may be given without its value (``flag_value``), see BareChoice."""
    check = field_check(request, name)
    if check is None:
        raise ValueError(f"{request.__name__}.{name} declares no check")
    if check.choices is not None:
        return BareChoice(check.choices) if bare else click.Choice(check.choices)
    if check.integer:
        return click.IntRange(_int(check.low), _int(check.high), min_open=check.low_open,
                              max_open=check.high_open)
    return click.FloatRange(check.low, check.high, min_open=check.low_open,
                            max_open=check.high_open)


class BareChoice(click.Choice):
    """The choices of an option that may be given bare (``flag_value``: ``--resample`` alone
    means bilinear). Click then takes the next word as the value whenever it does not start
    with "-", so ``--resample scene.tif`` reads the scene as a method: the one-line error says
    so, and how to write it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            name = param.opts[0] if param is not None and param.opts else "the option"
            flag = getattr(param, "flag_value", None)
            if flag is not None and _names_a_file(value):
                exc.message = (f"{exc.message.rstrip('.')}: {name} alone takes the next word "
                               f"as its value; give it ({name} {flag} {value}) or put {name} "
                               f"after {value}")
            raise


def _names_a_file(value: Any) -> bool:
    """A path or a file name (scene.tif, /vsicurl/...), not a mistyped word."""
    return isinstance(value, str) and (os.path.exists(value) or "/" in value or os.sep in value
                                       or os.path.splitext(value)[1] != "")


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def stacked(*options: F) -> F:
    """Several options as one decorator, in the order given (as they show in --help)."""

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


# -- what every command names the same way ---------------------------------------------------
def model_option(help: str, *, dest: str = "model", required: bool = False,
                 exists: bool = False) -> F:
    """-m/--model: a geoddu checkpoint."""
    return click.option("-m", "--model", dest, required=required, default=None, help=help,
                        type=click.Path(exists=exists, dir_okay=False))


def output_option(help: str, *, dest: str = "output", required: bool = False,
                  folder: bool = False, **kwargs: Any) -> F:
    """-o/--output: the file (or, ``folder``, the folder) a command writes."""
    path = click.Path(file_okay=False) if folder else click.Path(dir_okay=False)
    return click.option("-o", "--output", dest, required=required, type=path, help=help,
                        **{"default": None, **kwargs})


def device_option(help: str, default: str | None = None) -> F:
    return click.option("--device", default=default, show_default=default is not None,
                        help=help)


def precision_option(help: str, default: str | None = "fp32",
                     choices: tuple[str, ...] = PRECISION_CHOICES) -> F:
    """--precision fp32|bf16|fp16|auto (geoddu.parallel.PRECISION_CHOICES)."""
    return click.option("--precision", type=click.Choice(choices), default=default,
                        show_default=default is not None, help=help)


# segment's, demo's and evaluate's: how the loaded model computes.
model_precision_option = precision_option(
    "Arithmetic of the model. bf16 on the CPU runs a bf16 copy of the weights (about 2x "
    "faster where the CPU has AVX-512 BF16 or AMX; classes can differ from fp32 on "
    "near-ties); bf16/fp16 on CUDA are mixed precision (autocast); fp16 needs CUDA. "
    "auto: what a short probe, measured once per machine and cached, finds fastest "
    "(never slower than fp32; `geoddu info --hardware` shows it).")
# train's: left out, the device decides (TrainConfig.precision_on).
train_precision_option = precision_option(
    "The training step's precision: fp32; bf16 (autocast bfloat16 with float32 master "
    "weights, BatchNorm statistics and gradient sums; fast on CPUs with AVX-512 BF16 or AMX); "
    "fp16 (autocast float16 with gradient scaling, CUDA only). Validation runs in it too. "
    "[fp16 on CUDA, fp32 on the CPU]", default=None, choices=PRECISIONS)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace an existing output file."
)
timeout_option = click.option(
    "--timeout", type=click.IntRange(1), default=1800, show_default=True,
    help="Under torchrun: seconds a rank may wait on another before the whole job ends with an "
         "error (a dead or hung rank).")
# --progress-format was its first name (the QGIS plugin's segment runs still send it).
progress_option = click.option(
    "--progress", "--progress-format", "progress", type=click.Choice(["rich", "json"]),
    default="rich", show_default=True,
    help="json: one JSON object per line on stderr (for QGIS and other programs; "
         "docs/requests.md lists the events).")


def request_option(request: str) -> F:
    """--request FILE|-: the whole run as JSON (``request``: the class, for the help)."""
    return click.option(
        "--request", "request_file", default=None, metavar="FILE|-",
        type=click.Path(dir_okay=False, allow_dash=True),
        help=f"The run described as JSON ({request}.to_json); '-' reads it from stdin. "
             "Options given as well override its fields. How the QGIS plugin starts a run.")


def area_options(min_area: str, simplify: str, dest: str = "") -> F:
    """--min-area and --simplify for polygons (``dest``: the field-name prefix)."""
    return stacked(
        click.option("--min-area", f"{dest}min_area", metavar="M2", default=None, help=min_area,
                     type=click.FloatRange(min=0, min_open=True)),
        click.option("--simplify", f"{dest}simplify", metavar="TOL", default=None,
                     help=simplify, type=click.FloatRange(min=0, min_open=True)),
    )


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


def parse_list(value: str | None) -> list[str] | None:
    """A comma-separated list (``B04.tif,B03.tif``); None if not given."""
    if value is None:
        return None
    items = value.split(",")
    if not all(items):
        raise click.BadParameter(f"{value!r}: an empty entry in the comma-separated list")
    return items


def bands_option(help: str) -> F:
    return click.option("--bands", callback=lambda ctx, param, v: parse_bands(v),
                        metavar="1,2,3", help=help)


# -- the model's architecture ----------------------------------------------------------------
# (field, option, help): the DDUNet keywords, named as in segmentation-models-pytorch /
# torchgeo; their types are the training request's checks, their defaults DEFAULT_CONFIG's.
MODEL_OPTIONS = (
    ("encoder", "--encoder", "Encoder: the paper's U-Net or a ResNet (Fig. 12)."),
    ("in_channels", "--in-channels", "Number of input bands."),
    ("num_classes", "--classes", "Number of output classes."),
    ("depth", "--depth", "D: down/up-sampling blocks (U-Net encoder)."),
    ("base_channels", "--base-channels", "Channels of the first block; doubled at each level."),
    ("comm_features", "--comm-features",
     "F: bottleneck maps sent through the communication network."),
    ("communicate", "--communicate/--no-communicate",
     "C: stitch the F maps of all subimages (Y) or not (N)."),
    ("up_bias", "--up-bias/--no-up-bias",
     "Bias on the transposed convs (Table VIII: yes, Table V: no)."),
)
# The DDUNet keywords that `model_options` puts on a command (DEFAULT_CONFIG has the rest).
MODEL_OPTION_KEYS = tuple(name for name, _, _ in MODEL_OPTIONS)


def _model_option(name: str, flags: str, help: str) -> F:
    kind = {} if "/" in flags else {"type": field_type(TrainRequest, name)}
    return click.option(flags, name, default=DEFAULT_CONFIG[name], show_default=True,
                        help=help, **kind)


model_options = stacked(*(_model_option(*option) for option in MODEL_OPTIONS))


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


def model_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the model options out of a command's kwargs."""
    cfg = {k: kwargs.pop(k) for k in MODEL_OPTION_KEYS}
    if cfg["encoder"] != "unet":
        cfg["depth"] = 4
    return cfg
