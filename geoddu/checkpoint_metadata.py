"""What a checkpoint says about its model and the data it expects, next to the weights:
the architecture (`config`), `classes`, `bands`, `normalization`, `subimage_size` and the
optional record of the training data. `build_metadata` fills in the defaults; the one check,
`check_description`, runs when the fields are built and again whenever a checkpoint is read
(geoddu.checkpoint), so whatever is written loads again, and a damaged or foreign field is one
error line naming the file and the field.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .errors import Fail, GeodduError, first_line, kind_of, show
from .model_config import (
    DEFAULT_CONFIG,
    ENCODERS,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_COMM_DILATION,
    MAX_COMM_KERNEL,
    MAX_COMM_LAYERS,
    MAX_DEPTH,
)
from .models.ddunet import DDUNet
from .models.resnet import RESNET_ENCODERS

# The keys build_metadata fills in and every checkpoint carries next to config and state_dict.
METADATA_KEYS = ("classes", "bands", "normalization", "subimage_size")

# How the optional "data" record (what the model was trained on) got its value_range: every
# training pixel, a sample of training patches, or the data type's full range (not measured).
VALUE_RANGE_FROM = ("all", "sample", "dtype")

# Distinct, colour-blind-friendly defaults for checkpoints that do not name their classes.
DEFAULT_COLORS = [
    (0, 0, 0),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (127, 127, 127),
    (255, 255, 255),
]


def default_classes(num_classes: int) -> list[dict[str, Any]]:
    return [
        {"name": f"class {k}", "color": list(DEFAULT_COLORS[k % len(DEFAULT_COLORS)])}
        for k in range(num_classes)
    ]


def default_normalization(bands: int, scale: float = 255.0) -> dict[str, list[float]]:
    """x -> (x - mean) / std per band; the default maps 8-bit values to [0, 1]."""
    return {"mean": [0.0] * bands, "std": [scale] * bands}


def build_metadata(
    config: dict[str, Any],
    *,
    classes: list[dict[str, Any]] | None = None,
    bands: list[int] | None = None,
    normalization: dict[str, list[float]] | None = None,
    subimage_size: int = 256,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The descriptive part of a checkpoint, with defaults filled in and checked.

    `data` describes the training data (see `_check_data`); None (an untrained model, a dataset
    that cannot say) leaves the optional "data" key out. The check is the one
    `load_checkpoint` runs, so whatever is written here loads again.
    """
    n_in, n_cls = config["in_channels"], config["num_classes"]
    fields = {
        "config": config,
        "classes": default_classes(n_cls) if classes is None else classes,
        "bands": list(range(1, n_in + 1)) if bands is None else bands,
        "normalization": default_normalization(n_in) if normalization is None else normalization,
        "subimage_size": subimage_size,
        "data": data,
    }
    check_description(fields)
    described = {
        "classes": [
            {"name": str(c["name"]), "color": [int(v) for v in c["color"]]}
            for c in fields["classes"]
        ],
        "bands": [int(b) for b in fields["bands"]],
        "normalization": {
            k: [float(v) for v in fields["normalization"][k]] for k in ("mean", "std")
        },
        "subimage_size": int(subimage_size),
    }
    if data is not None:
        described["data"] = _plain_data(data)
    return described


def check_description(
    fields: Mapping[str, Any], where: str | os.PathLike | None = None
) -> DDUNet:
    """Check config, classes, bands, normalization, subimage_size and (when present) data of a
    checkpoint (or of metadata about to be written); the first problem is a GeodduError naming
    `where` and the field. Returns the architecture with shapes only (on the meta device, no
    weights)."""
    fail = Fail(where)
    config = fields["config"]
    if not isinstance(config, Mapping):
        fail("config", f"must be a dict of model options, not {kind_of(config)}")
    unknown = [k for k in config if k not in DEFAULT_CONFIG]
    if unknown:
        fail("config", f"unknown option(s) {', '.join(show(k) for k in unknown)}")
    # Files may predate an option; the model then uses its default, as model_from_checkpoint does.
    cfg = {**DEFAULT_CONFIG, **config}
    enc = cfg["encoder"]
    if enc not in ENCODERS:
        fail("config.encoder", f"{show(enc)} is not one of {', '.join(ENCODERS)}")
    check_int(fail, "config.depth", cfg["depth"], 1, MAX_DEPTH)
    if enc in RESNET_ENCODERS and cfg["depth"] != 4:
        fail("config.depth", f"ResNet encoders are cut at 1/16: must be 4, not {cfg['depth']}")
    n_in = check_int(fail, "config.in_channels", cfg["in_channels"], 1, MAX_CHANNELS)
    n_cls = check_int(fail, "config.num_classes", cfg["num_classes"], 1, MAX_CLASSES)
    check_int(fail, "config.base_channels", cfg["base_channels"], 1, MAX_CHANNELS)
    check_int(fail, "config.comm_features", cfg["comm_features"], 0, MAX_CHANNELS)
    check_int(fail, "config.comm_layers", cfg["comm_layers"], 1, MAX_COMM_LAYERS)
    if check_int(fail, "config.comm_kernel", cfg["comm_kernel"], 1, MAX_COMM_KERNEL) % 2 == 0:
        fail("config.comm_kernel", f"must be odd ('same' padding), not {cfg['comm_kernel']}")
    check_int(fail, "config.comm_dilation", cfg["comm_dilation"], 1, MAX_COMM_DILATION)
    for key in ("communicate", "up_bias"):
        if not isinstance(cfg[key], bool):
            fail(f"config.{key}", f"must be true or false, not {show(cfg[key])}")
    p = cfg["dropout"]
    if not _real(p) or not 0 <= p < 1:
        fail("config.dropout", f"must be a number in [0, 1), not {show(p)}")
    # The model itself says what its bottleneck and stride are: no second copy of the formulas.
    try:
        model = _shapes_only(cfg)
    except (GeodduError, ValueError, TypeError, RuntimeError) as exc:
        bottleneck = _shapes_only({**cfg, "comm_features": 0}).encoder.out_channels
        if cfg["comm_features"] > bottleneck:
            fail(
                "config.comm_features",
                f"{cfg['comm_features']} is more than the {bottleneck} bottleneck channels",
            )
        fail("config", f"not a buildable model ({first_line(exc)})")

    classes = fields["classes"]
    if not isinstance(classes, list | tuple):
        fail("classes", f"must be a list of classes, not {kind_of(classes)}")
    if len(classes) != n_cls:
        fail("classes", f"{len(classes)} listed for a model with {n_cls} (config.num_classes)")
    for k, c in enumerate(classes):
        if not isinstance(c, Mapping):
            fail(f"classes[{k}]", f'must be {{"name": ..., "color": [r, g, b]}}, not {kind_of(c)}')
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            fail(f"classes[{k}].name", f"must be a non-empty string, not {show(name)}")
        color = c.get("color")
        if not (
            isinstance(color, list | tuple)
            and len(color) == 3
            and all(_integer(v) and 0 <= v <= 255 for v in color)
        ):
            fail(f"classes[{k}].color", f"must be [r, g, b], integers 0-255, not {show(color)}")

    bands = fields["bands"]
    if not isinstance(bands, list | tuple):
        fail("bands", f"must be a list of band numbers, not {kind_of(bands)}")
    if len(bands) != n_in:
        fail("bands", f"{len(bands)} listed for a model with {n_in} input channels "
                      f"(config.in_channels)")
    for k, b in enumerate(bands):
        check_int(fail, f"bands[{k}]", b, 1)

    norm = fields["normalization"]
    if not isinstance(norm, Mapping):
        fail("normalization", f'must be {{"mean": [...], "std": [...]}}, not {kind_of(norm)}')
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list | tuple) or len(values) != n_in:
            fail(f"normalization.{key}", f"must list one number per input channel ({n_in})")
        for k, v in enumerate(values):
            if not _real(v) or not math.isfinite(v):
                fail(f"normalization.{key}[{k}]", f"must be a finite number, not {show(v)}")
            if key == "std" and v <= 0:
                fail(f"normalization.std[{k}]", f"must be above 0 (it divides), not {v}")

    size = check_int(fail, "subimage_size", fields["subimage_size"], 1)
    if size % model.stride:
        fail("subimage_size", f"{size} is not a multiple of the model stride {model.stride}")
    if fields.get("data") is not None:
        _check_data(fail, fields["data"], n_in)
    return model


def _check_data(fail: Fail, data: Any, n_in: int) -> None:
    """The optional record of the training data (old and `geoddu init` checkpoints lack it):

    {"pixel_size": [x, y] map units per pixel, or None (not georeferenced),
     "units": the CRS's linear unit ("metre", "degree", ...) or None,
     "dtype": numpy name of the data type ("uint8", "uint16", "float32", ...),
     "value_range": [[min, max], ...] one pair per input band, or None,
     "value_range_from": "all" (every training pixel), "sample" (some training patches) or
                         "dtype" (the data type's full range, nothing measured)}
    """
    if not isinstance(data, Mapping):
        fail("data", f'must be {{"pixel_size": ..., "dtype": ..., "value_range": ...}}, '
                     f"not {kind_of(data)}")
    for key in ("pixel_size", "dtype", "value_range"):
        if key not in data:
            fail(f"data.{key}", "missing")
    size = data["pixel_size"]
    if size is not None and not (
        isinstance(size, list | tuple) and len(size) == 2
        and all(_real(v) and math.isfinite(v) and v > 0 for v in size)
    ):
        fail("data.pixel_size", f"must be [x, y], two numbers above 0, or None, not {show(size)}")
    units = data.get("units")
    if units is not None and not isinstance(units, str):
        fail("data.units", f"must be a unit name or None, not {show(units)}")
    dtype = data["dtype"]
    if not isinstance(dtype, str) or not _numeric_dtype_name(dtype):
        fail("data.dtype", f'must name a numeric data type ("uint8", "uint16", "float32", ...), '
                           f"not {show(dtype)}")
    values = data["value_range"]
    if values is not None:
        if not isinstance(values, list | tuple) or len(values) != n_in:
            fail("data.value_range", f"must list one [min, max] per input channel ({n_in})")
        for k, pair in enumerate(values):
            if not (
                isinstance(pair, list | tuple) and len(pair) == 2
                and all(_real(v) and math.isfinite(v) for v in pair) and pair[0] <= pair[1]
            ):
                fail(f"data.value_range[{k}]", f"must be [min, max], finite numbers with "
                                               f"min <= max, not {show(pair)}")
    source = data.get("value_range_from")
    if source is not None and source not in VALUE_RANGE_FROM:
        fail("data.value_range_from", f"{show(source)} is not one of "
                                      f"{', '.join(VALUE_RANGE_FROM)}")


def _numeric_dtype_name(name: str) -> bool:
    import numpy as np

    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        return False
    return dtype.kind in "uif" and dtype.name == name


def _plain_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data record as plain numbers and strings (what weights_only loading accepts)."""
    size, values = data["pixel_size"], data["value_range"]
    plain = {
        "pixel_size": None if size is None else [float(v) for v in size],
        "units": None if data.get("units") is None else str(data["units"]),
        "dtype": str(data["dtype"]),
        "value_range": None if values is None else [[float(a), float(b)] for a, b in values],
    }
    if data.get("value_range_from") is not None:
        plain["value_range_from"] = str(data["value_range_from"])
    return plain


class _SkipRandomInit(TorchFunctionMode):
    """Meta tensors have no values to initialise, and torch's meta normal_ imports
    torch._dynamo (seconds per process): skip it."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        if func is torch.Tensor.normal_:
            return args[0]
        return func(*args, **(kwargs or {}))


def _shapes_only(cfg: dict[str, Any]) -> DDUNet:
    """The architecture on the meta device: its shapes, stride and bottleneck, no memory."""
    with torch.device("meta"), _SkipRandomInit():
        return DDUNet(**cfg)


def check_int(fail: Fail, field: str, value: Any, low: int, high: int | None = None) -> int:
    if not _integer(value) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        fail(field, f"must be an integer {span}, not {show(value)}")
    return int(value)


def _integer(value: Any) -> bool:
    # bool is an int in Python, but True as a channel count is corruption.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
