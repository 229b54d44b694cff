"""`geoddu train --resume` with the first run's options: every option given that the run
stored must equal it; a conflicting one is refused with its name and both values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from geoddu.errors import GeodduError
from geoddu.train.request import TrainRequest

from .options import MODEL_OPTION_KEYS

# Options a resumed run may change: where it runs, how long, where the data now lives, and
# how it reports. Every other option given with --resume must equal what the run stored.
RESUME_MAY_CHANGE = ("run_dir", "resume", "data", "epochs", "device", "workers", "spatial_ranks",
                     "ranks", "gpus", "timeout", "overwrite", "quiet", "progress", "card")
# Where last.pt keeps what each other option set: the model's config, the training config,
# the training record or the dataset's description. An option whose place holds nothing (a
# folder option on a synthetic run) had no effect on the run and has nothing to conflict with.
RESUME_STORED = {
    **{k: ("model", k) for k in MODEL_OPTION_KEYS},
    **{k: ("config", k) for k in ("dropout", "batch_size", "subimages", "lr", "lr_patience",
                                  "patience", "min_epochs", "loss", "augment", "seed", "amp",
                                  "precision", "batchnorm", "deterministic")},
    "dataset": ("dataset", "kind"),
    "init_model": ("training", "init_checkpoint"),
    "arch": ("training", "arch"),
    "encoder_weights": ("training", "encoder_weights"),
    "adapt_bands": ("training", "adapt_bands"),
    "freeze_encoder": ("training", "freeze_encoder"),
    **{k: ("dataset", k) for k in ("patch_size", "val_fraction", "test_fraction",
                                   "classes_file", "class_column", "bands")},
    "keep_unknown": ("dataset", "ignore_unknown"),
}
_PATHS = ("init_model", "encoder_weights", "classes_file")


def check_resume(ctx: click.Context, request: TrainRequest, mesh: Any) -> None:
    """Refuse a field of ``request`` (given on the command line or in --request) that
    contradicts what RUN_DIR/last.pt stored, naming it as the command line does."""
    from geoddu.checkpoint import load_checkpoint
    from geoddu.train.run_folder import LAST, check_run_dir, has_last

    given = {k: v for k, v in request.given().items() if k in RESUME_STORED}
    if not given:
        return  # nothing to compare: last.pt is read once, by the resume itself

    def check() -> None:
        if mesh is not None and not mesh.is_main:
            return  # only rank 0's host need hold the run (as resume_training reads it)
        if request.dataset is not None and request.data is not None and \
                not has_last(request.run_dir):
            return  # killed in its first epoch: the run starts again (geoddu.train.api)
        run_dir = check_run_dir(request.run_dir, resume=True, overwrite=False)
        ckpt = load_checkpoint(run_dir / LAST)
        record = ckpt.get("training") or {}
        places = {"model": ckpt.get("config") or {}, "config": record.get("config") or {},
                  "training": record, "dataset": record.get("dataset") or {}}
        for name, value in given.items():
            place, key = RESUME_STORED[name]
            if key not in places[place]:
                continue
            stored = places[place][key]
            if name == "keep_unknown":
                stored, value = not stored, bool(value)
            elif name == "subimages":
                stored = tuple(stored) if stored is not None else None
            elif name == "bands":
                value = list(value)
            if not _same(name, value, stored):
                option = next(o for o in ctx.command.params if o.name == name)
                had = (f"'s {_stored(option, stored)}" if stored is not None
                       else f", which had no {option.opts[-1]}")
                raise GeodduError(f"{_spell(option, value)} conflicts with the run{had}; a "
                                  f"resumed run keeps its configuration")

    if mesh is None:
        check()
    else:
        mesh.agreed(check)


def _same(name: str, value: Any, stored: Any) -> bool:
    if value is None or stored is None:
        return value is None and stored is None
    if name in _PATHS:
        return str(value) == str(stored) or Path(value).resolve() == Path(stored).resolve()
    if name == "arch":
        return "".join(str(value).split()).lower() == "".join(str(stored).split()).lower()
    if isinstance(value, float) or isinstance(stored, float):
        return math.isclose(float(value), float(stored), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(value, (list, tuple)) or isinstance(stored, (list, tuple)):
        return list(value) == list(stored)
    return value == stored


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _spell(option: click.Parameter, value: Any) -> str:
    """The option as a command line gives it: `--lr 0.01`, `--no-augment`, `--keep-unknown`."""
    name = option.opts[-1]
    if getattr(option, "is_flag", False):
        if value or not option.secondary_opts:
            return name
        return option.secondary_opts[-1]
    return f"{name} {_show(value)}"


def _stored(option: click.Parameter, stored: Any) -> str:
    if getattr(option, "is_flag", False):
        if option.secondary_opts:
            return option.opts[-1] if stored else option.secondary_opts[-1]
        return option.opts[-1] if stored else f"(no {option.opts[-1]})"
    return _show(stored)
