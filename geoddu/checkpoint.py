"""Self-describing checkpoints: everything `segment`, `info` and `train` need, in one file.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: opening a checkpoint never runs code from it. Every field
is checked when it is read (and, by the same function, when it is written), so a damaged or
foreign file is one error line naming the file and the field, never a traceback or a
segmentation made from garbage.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch
from torch.overrides import TorchFunctionMode

from .card import check_card, kind_of
from .errors import GeodduError, first_line
from .io.atomic import write_atomically
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
from .version import __version__

FORMAT = "geoddu-checkpoint"
FORMAT_VERSION = 1

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
    fail = _Fail(where)
    config = fields["config"]
    if not isinstance(config, Mapping):
        fail("config", f"must be a dict of model options, not {kind_of(config)}")
    unknown = [k for k in config if k not in DEFAULT_CONFIG]
    if unknown:
        fail("config", f"unknown option(s) {', '.join(_show(k) for k in unknown)}")
    # Files may predate an option; the model then uses its default, as model_from_checkpoint does.
    cfg = {**DEFAULT_CONFIG, **config}
    enc = cfg["encoder"]
    if enc not in ENCODERS:
        fail("config.encoder", f"{_show(enc)} is not one of {', '.join(ENCODERS)}")
    _int(fail, "config.depth", cfg["depth"], 1, MAX_DEPTH)
    if enc in RESNET_ENCODERS and cfg["depth"] != 4:
        fail("config.depth", f"ResNet encoders are cut at 1/16: must be 4, not {cfg['depth']}")
    n_in = _int(fail, "config.in_channels", cfg["in_channels"], 1, MAX_CHANNELS)
    n_cls = _int(fail, "config.num_classes", cfg["num_classes"], 1, MAX_CLASSES)
    _int(fail, "config.base_channels", cfg["base_channels"], 1, MAX_CHANNELS)
    _int(fail, "config.comm_features", cfg["comm_features"], 0, MAX_CHANNELS)
    _int(fail, "config.comm_layers", cfg["comm_layers"], 1, MAX_COMM_LAYERS)
    if _int(fail, "config.comm_kernel", cfg["comm_kernel"], 1, MAX_COMM_KERNEL) % 2 == 0:
        fail("config.comm_kernel", f"must be odd ('same' padding), not {cfg['comm_kernel']}")
    _int(fail, "config.comm_dilation", cfg["comm_dilation"], 1, MAX_COMM_DILATION)
    for key in ("communicate", "up_bias"):
        if not isinstance(cfg[key], bool):
            fail(f"config.{key}", f"must be true or false, not {_show(cfg[key])}")
    p = cfg["dropout"]
    if not _real(p) or not 0 <= p < 1:
        fail("config.dropout", f"must be a number in [0, 1), not {_show(p)}")
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
            fail(f"classes[{k}].name", f"must be a non-empty string, not {_show(name)}")
        color = c.get("color")
        if not (
            isinstance(color, list | tuple)
            and len(color) == 3
            and all(_integer(v) and 0 <= v <= 255 for v in color)
        ):
            fail(f"classes[{k}].color", f"must be [r, g, b], integers 0-255, not {_show(color)}")

    bands = fields["bands"]
    if not isinstance(bands, list | tuple):
        fail("bands", f"must be a list of band numbers, not {kind_of(bands)}")
    if len(bands) != n_in:
        fail("bands", f"{len(bands)} listed for a model with {n_in} input channels "
                      f"(config.in_channels)")
    for k, b in enumerate(bands):
        _int(fail, f"bands[{k}]", b, 1)

    norm = fields["normalization"]
    if not isinstance(norm, Mapping):
        fail("normalization", f'must be {{"mean": [...], "std": [...]}}, not {kind_of(norm)}')
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list | tuple) or len(values) != n_in:
            fail(f"normalization.{key}", f"must list one number per input channel ({n_in})")
        for k, v in enumerate(values):
            if not _real(v) or not math.isfinite(v):
                fail(f"normalization.{key}[{k}]", f"must be a finite number, not {_show(v)}")
            if key == "std" and v <= 0:
                fail(f"normalization.std[{k}]", f"must be above 0 (it divides), not {v}")

    size = _int(fail, "subimage_size", fields["subimage_size"], 1)
    if size % model.stride:
        fail("subimage_size", f"{size} is not a multiple of the model stride {model.stride}")
    if fields.get("data") is not None:
        _check_data(fail, fields["data"], n_in)
    return model


def _check_data(fail: _Fail, data: Any, n_in: int) -> None:
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
        fail("data.pixel_size", f"must be [x, y], two numbers above 0, or None, not {_show(size)}")
    units = data.get("units")
    if units is not None and not isinstance(units, str):
        fail("data.units", f"must be a unit name or None, not {_show(units)}")
    dtype = data["dtype"]
    if not isinstance(dtype, str) or not _numeric_dtype_name(dtype):
        fail("data.dtype", f'must name a numeric data type ("uint8", "uint16", "float32", ...), '
                           f"not {_show(dtype)}")
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
                                               f"min <= max, not {_show(pair)}")
    source = data.get("value_range_from")
    if source is not None and source not in VALUE_RANGE_FROM:
        fail("data.value_range_from", f"{_show(source)} is not one of "
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


def save_checkpoint(
    path: str | os.PathLike,
    model: DDUNet,
    metadata: dict[str, Any],
    *,
    training: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """Write atomically: a killed run leaves the previous checkpoint, never a truncated one.

    `training` is the training configuration (for the record); `state` is what `--resume`
    needs (optimiser, scheduler, epoch, RNG) and is only stored in `last.pt`-style files;
    `card` is the model card (geoddu.card), checked before anything is written.
    """
    path = Path(path)
    checked_card = None if card is None else check_card(card, path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geoddu_version": __version__,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **metadata,
        "training": training or {},
    }
    if state is not None:
        payload["resume"] = state
    if checked_card is not None:
        payload["card"] = checked_card
    _write_payload(path, payload)
    return path


def write_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write a checkpoint dict as `load_checkpoint` returned it (or part of one), atomically:
    the same tensors, bit for bit."""
    _write_payload(Path(path), ckpt)


class _WriteErrors(io.RawIOBase):
    """The temporary file as torch.save writes it, keeping the OSError of a failed write:
    torch's zip writer turns it into a RuntimeError that no longer says why (a full disk)."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__()
        self.f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def _write_payload(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, renamed over it."""

    def write(tmp: Path) -> None:
        try:
            with open(tmp, "wb") as f:
                out = _WriteErrors(f)
                try:
                    torch.save(payload, out)
                except RuntimeError as exc:
                    if out.error is not None:
                        raise out.error from exc
                    raise
                f.flush()
        except OSError as exc:
            raise GeodduError(f"{path}: cannot write checkpoint: {exc.strerror or exc}") from exc
        except RuntimeError as exc:
            # torch's zip writer reports a failed write as a RuntimeError.
            raise GeodduError(f"{path}: cannot write checkpoint: {first_line(exc)}") from exc

    # A temporary file beside it, fsynced and renamed over it: a killed run (or a full disk)
    # leaves the previous checkpoint.
    write_atomically(path, write)


def update_card(
    path: str | os.PathLike,
    fields: Mapping[str, Any] | None = None,
    *,
    remove: tuple[str, ...] | list[str] = (),
    clear: bool = False,
) -> dict[str, Any]:
    """Set `fields` and drop the `remove` keys of `path`'s model card, in place and atomically
    (temp file + rename), leaving every other entry, the weights above all, exactly as read.
    Any card field may be set (e.g. ``{"accuracy": {...}}`` from `geoddu assess`); the result
    is checked as on load. `clear`: start from an empty card, the old one unread (also one
    that fails the checks). Returns the new card."""
    path = Path(path)
    ckpt = load_checkpoint(path, drop_card=clear)
    card = dict(ckpt.get("card") or {})
    for key in remove:
        card.pop(key, None)
    card.update(fields or {})
    if card:
        ckpt["card"] = check_card(card, path)
    else:
        ckpt.pop("card", None)
    # The dict torch.load gave back is written as it came: the same tensors, bit for bit.
    _write_payload(path, ckpt)
    return ckpt.get("card", {})


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a checkpoint ({} when it has none), the checkpoint checked."""
    return dict(load_checkpoint(path).get("card") or {})


def load_checkpoint(path: str | os.PathLike, *, drop_card: bool = False) -> dict[str, Any]:
    """Read and check a checkpoint; any problem is one GeodduError line naming the field.
    `drop_card`: leave the model card out, unchecked (`geoddu card --clear` repairs a damaged
    one this way)."""
    path = Path(path)
    if not path.exists():
        raise GeodduError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise GeodduError(f"{path}: is a directory, not a checkpoint file")
    damaged = f"{path}: not a geoddu checkpoint, or the file is damaged"
    try:
        f = path.open("rb")
    except OSError as exc:
        raise GeodduError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from exc
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise GeodduError(f"{damaged} (it is empty)")
        try:
            # torch warns about what it finds in foreign pickles; the error below says it all.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files are one user error
            # torch's own message suggests weights_only=False, i.e. running the file's code:
            # never pass that on.
            raise GeodduError(f"{damaged} (cannot be read as a torch checkpoint)") from exc
    if drop_card and isinstance(ckpt, dict):
        ckpt.pop("card", None)
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: Any, where: str | os.PathLike | None = None) -> None:
    """Check a checkpoint already read (what `load_checkpoint` does after `torch.load`)."""
    fail = _Fail(where)
    if not isinstance(ckpt, dict):
        fail("", f"not a geoddu checkpoint (it holds {kind_of(ckpt)}, not a checkpoint dict)")
    if "format" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            fail("", "not a geoddu checkpoint (a bare state dict? it has weights but no "
                     "architecture, classes or bands; write a checkpoint with `geoddu init` "
                     "and put these weights in its state_dict)")
        fail("", f'not a geoddu checkpoint (no "format": "{FORMAT}" entry)')
    if not (isinstance(ckpt["format"], str) and ckpt["format"] == FORMAT):
        fail("", f"not a geoddu checkpoint (format {_show(ckpt['format'])}, not {FORMAT!r})")
    version = ckpt.get("format_version", FORMAT_VERSION)
    _int(fail, "format_version", version, 1)
    if version > FORMAT_VERSION:
        fail("", f"written by a newer geoddu ({_show(ckpt.get('geoddu_version'))}, "
                 f"format {version}); update geoddu to read it")
    for key in ("config", "state_dict", *METADATA_KEYS):
        if key not in ckpt:
            fail(key, "missing")
    model = check_description(ckpt, where)
    check_weights(ckpt["state_dict"], model, where)
    for key in ("training", "resume"):
        # Their contents belong to training (and change with it); the shape is what readers
        # rely on, e.g. ckpt.get("training", {}).get(...).
        if key in ckpt and not isinstance(ckpt[key], dict):
            fail(key, f"must be a dict, not {kind_of(ckpt[key])}")
    if ckpt.get("card") is not None:
        # Optional (older checkpoints, `geoddu init`); when present, every field is checked,
        # and the message says how to get rid of a damaged one.
        try:
            check_card(ckpt["card"], where)
        except GeodduError as exc:
            raise GeodduError(f"{exc} (`geoddu card -m FILE --clear` removes the card)") from None


def check_weights(
    state: Any, model: torch.nn.Module, where: str | os.PathLike | None = None
) -> None:
    """The state dict must fit `model` exactly: same names, shapes and kinds, finite values."""
    fail = _Fail(where)
    if not isinstance(state, Mapping):
        fail("state_dict", f"must be a dict of tensors, not {kind_of(state)}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misfit = "weights do not fit the architecture in config"
    if missing:
        fail("state_dict", f"{misfit}: missing {_few(missing)}")
    if unexpected:
        fail("state_dict", f"{misfit}: unexpected {_few(unexpected)}")
    for key, ref in own.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            fail(f"state_dict[{key!r}]", f"must be a dense tensor, not {kind_of(value)}")
        if value.shape != ref.shape:
            fail("state_dict", f"{misfit}: {key} has shape {tuple(value.shape)}, "
                               f"expected {tuple(ref.shape)}")
        if value.dtype.is_floating_point != ref.dtype.is_floating_point or value.is_complex():
            fail(f"state_dict[{key!r}]", f"holds {value.dtype}, expected {ref.dtype}")
        # A NaN weight makes every prediction garbage (argmax of NaN is class 0). The sum is
        # the cheap test (no mask allocated); only when it is not finite, which a merely large
        # sum can also cause, is every value looked at.
        if (
            value.dtype.is_floating_point
            and not bool(value.sum().isfinite())
            and not bool(torch.isfinite(value).all())
        ):
            fail(f"state_dict[{key!r}]", "holds NaN or infinite values")


def model_from_checkpoint(
    ckpt: dict[str, Any], where: str | os.PathLike | None = None
) -> DDUNet:
    """The model of a checkpoint read by `load_checkpoint` (`where` names it in errors)."""
    config = {**DEFAULT_CONFIG, **ckpt["config"]}
    model = DDUNet(**config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        # torch's first line only says that loading failed; say which weight does not fit.
        check_weights(ckpt["state_dict"], model, where)
        _Fail(where)("state_dict", f"weights do not fit the architecture: {first_line(exc)}")
    return model


class _Fail:
    """Raises the one-line error: 'FILE: FIELD: problem' (FILE left out when building)."""

    def __init__(self, where: str | os.PathLike | None) -> None:
        self.where = where

    def __call__(self, field: str, problem: str) -> NoReturn:
        parts = [str(p) for p in (self.where, field) if p not in (None, "")]
        raise GeodduError(": ".join([*parts, problem]))


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


def _int(fail: _Fail, field: str, value: Any, low: int, high: int | None = None) -> int:
    if not _integer(value) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        fail(field, f"must be an integer {span}, not {_show(value)}")
    return int(value)


def _integer(value: Any) -> bool:
    # bool is an int in Python, but True as a channel count is corruption.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value: Any, limit: int = 40) -> str:
    """A value for a one-line message: repr keeps it on one line, the cut keeps it short."""
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor {tuple(value.shape)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")
