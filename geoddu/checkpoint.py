"""Self-describing checkpoints: everything `segment`, `info` and `train` need, in one file.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: opening a checkpoint never runs code from it. Every field
is checked when it is read (and, by the same function, when it is written), so a damaged or
foreign file is one error line naming the file and the field, never a traceback or a
segmentation made from garbage.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .card import check_card
from .checkpoint_metadata import METADATA_KEYS, check_description, check_int
from .errors import Fail, GeodduError, few, first_line, kind_of, show
from .io.atomic import write_atomically
from .model_config import (
    DEFAULT_CONFIG,
)
from .models.ddunet import DDUNet
from .version import __version__

FORMAT = "geoddu-checkpoint"
FORMAT_VERSION = 1


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
    fail = Fail(where)
    if not isinstance(ckpt, dict):
        fail("", f"not a geoddu checkpoint (it holds {kind_of(ckpt)}, not a checkpoint dict)")
    if "format" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            fail("", "not a geoddu checkpoint (a bare state dict? it has weights but no "
                     "architecture, classes or bands; write a checkpoint with `geoddu init` "
                     "and put these weights in its state_dict)")
        fail("", f'not a geoddu checkpoint (no "format": "{FORMAT}" entry)')
    if not (isinstance(ckpt["format"], str) and ckpt["format"] == FORMAT):
        fail("", f"not a geoddu checkpoint (format {show(ckpt['format'])}, not {FORMAT!r})")
    version = ckpt.get("format_version", FORMAT_VERSION)
    check_int(fail, "format_version", version, 1)
    if version > FORMAT_VERSION:
        fail("", f"written by a newer geoddu ({show(ckpt.get('geoddu_version'))}, "
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
    fail = Fail(where)
    if not isinstance(state, Mapping):
        fail("state_dict", f"must be a dict of tensors, not {kind_of(state)}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misfit = "weights do not fit the architecture in config"
    if missing:
        fail("state_dict", f"{misfit}: missing {few(missing)}")
    if unexpected:
        fail("state_dict", f"{misfit}: unexpected {few(unexpected)}")
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
        Fail(where)("state_dict", f"weights do not fit the architecture: {first_line(exc)}")
    return model
