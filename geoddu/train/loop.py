"""The training loop (Sec. III-C): dice loss (Eq. 1), Adam, plateau LR halving, early stopping.

A run lives in one directory: `last.pt` (weights + everything `--resume` needs, written after
every epoch), `best.pt` (lowest validation loss so far), `history.csv` / `history.json` (the
curves). All three are replaced atomically, so killing the process at any moment leaves a run
that resumes exactly where its last completed epoch ended: model, optimiser, scheduler, AMP
scaler, epoch, early-stopping counters and RNG states are restored; data order and augmentation
are drawn from (seed, epoch) so they do not depend on the process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..checkpoint import build_metadata, load_checkpoint, model_from_checkpoint, save_checkpoint
from ..engine.devices import resolve_devices
from ..errors import GeodduError
from ..models.ddunet import DDUNet
from .augment import augment_batch
from .config import TrainConfig
from .evaluate import Normalizer, cell_size, evaluate, make_partition
from .losses import get_loss

LAST, BEST = "last.pt", "best.pt"


@dataclass
class Callbacks:
    """Hooks for a front end (rich progress in the CLI); all optional."""

    on_start: Callable[[dict[str, Any]], None] | None = None
    on_batch: Callable[[int, int, int, float, float], None] | None = None  # epoch, b, n, loss, lr
    on_validate: Callable[[int, int], None] | None = None  # done, total
    on_epoch: Callable[[dict[str, Any]], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_miou: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> Path:
        return self.run_dir / BEST

    @property
    def last(self) -> Path:
        return self.run_dir / LAST


class Trainer:
    """Trains one model on one dataset into `run_dir`; `fit()` runs (or continues) it."""

    def __init__(
        self,
        model: DDUNet,
        train_set: Any,
        val_set: Any,
        run_dir: str | os.PathLike,
        config: TrainConfig,
        *,
        normalization: dict[str, list[float]] | None = None,
        record: dict[str, Any] | None = None,
        callbacks: Callbacks | None = None,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config.check()
        devices = resolve_devices(config.device)
        if len(devices) != 1:
            raise GeodduError("training runs on one device; give --device cpu, cuda or cuda:N")
        self.device = devices[0]
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        if len(train_set) == 0 or len(val_set) == 0:
            raise GeodduError("training needs a non-empty training and validation split")
        for ds in (train_set, val_set):
            if ds.in_channels != model.config["in_channels"]:
                raise GeodduError(f"the data has {ds.in_channels} band(s) but the model expects "
                                  f"{model.config['in_channels']}")
            if ds.num_classes != model.config["num_classes"]:
                raise GeodduError(f"the data has {ds.num_classes} classes but the model has "
                                  f"{model.config['num_classes']}")
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks or Callbacks()
        self.record = dict(record or {})
        self.normalization = normalization or train_set.normalization
        self.grid = config.subimages or train_set.grid or (1, 1)
        h, w = train_set.patch_shape
        self.partition = make_partition(h, w, model.stride, self.grid)
        self.metadata = build_metadata(
            model.config,
            classes=train_set.classes,
            bands=train_set.bands,
            normalization=self.normalization,
            subimage_size=cell_size(self.partition),
        )
        self.amp = self.device.type == "cuda" and config.amp is not False
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.normalize = Normalizer(self.normalization, self.device)
        self.loss_fn = get_loss(config.loss)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        if resume_state is not None:
            self._restore(resume_state)
        else:
            torch.manual_seed(config.seed)
            random.seed(config.seed)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        if not self.run_dir.is_dir():
            self.run_dir.mkdir(parents=True)
        if self.callbacks.on_start:
            self.callbacks.on_start({
                "start_epoch": self.epoch, "epochs": cfg.epochs, "grid": self.grid,
                "batches": math.ceil(len(self.train_set) / cfg.batch_size),
                "device": str(self.device), "amp": self.amp,
            })
        while self.epoch < cfg.epochs and not self.stopped_early:
            t0 = time.perf_counter()
            train_loss = self._train_epoch(self.epoch)
            val = evaluate(
                self.model, self.val_set, normalization=self.normalization, grid=self.grid,
                batch_size=cfg.batch_size, device=self.device, amp=self.amp,
                workers=cfg.workers, loss=cfg.loss, progress=self.callbacks.on_validate,
            )
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(val["loss"])
            self.epoch += 1
            improved = val["loss"] < self.best_val_loss
            if improved:
                self.best_val_loss, self.best_epoch, self.bad_epochs = val["loss"], self.epoch, 0
            else:
                self.bad_epochs += 1
            self.stopped_early = (self.epoch >= cfg.min_epochs and self.bad_epochs >= cfg.patience
                                  and self.epoch < cfg.epochs)
            row = {
                "epoch": self.epoch,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_miou": val["miou"],
                **{f"iou_{name}": v for name, v in zip(val["classes"], val["iou"], strict=True)},
                "lr": lr,
                "seconds": time.perf_counter() - t0,
                "best": improved,
            }
            self.history.append(row)
            if improved:
                save_checkpoint(self.run_dir / BEST, self.model, self.metadata,
                                training=self._training_record())
            save_checkpoint(self.run_dir / LAST, self.model, self.metadata,
                            training=self._training_record(), state=self._state())
            self._write_history()
            if self.callbacks.on_epoch:
                self.callbacks.on_epoch(row)
        return self.result()

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.config
        self.model.train()
        # Data order and augmentation come from (seed, epoch) alone: the same in a resumed run.
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(self.train_set)).tolist()
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=cfg.batch_size,
                                             sampler=order, num_workers=cfg.workers)
        total, count = 0.0, 0
        n = len(loader)
        for b, (x, y) in enumerate(loader):
            if cfg.augment:
                x, y = augment_batch(x, y, rng)
            x, y = self.normalize(x), y.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.model(x, self.partition)
            loss = self.loss_fn(logits, y, ignore_index=self.train_set.ignore_index)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise GeodduError(f"the loss became {value} in epoch {epoch + 1}, batch {b + 1}; "
                                  f"try a lower --lr")
            total += value * x.shape[0]
            count += x.shape[0]
            if self.callbacks.on_batch:
                self.callbacks.on_batch(epoch + 1, b + 1, n, value,
                                        self.optimizer.param_groups[0]["lr"])
        return total / max(count, 1)

    # -- state --------------------------------------------------------------------------------
    def _training_record(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        return {
            **self.record,
            "config": self.config.to_dict(),
            "grid": list(self.grid),
            "epochs_run": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": _finite(self.best_val_loss),
            "best_val_miou": _finite(best.get("val_miou")),
            "last_val_miou": _finite(last.get("val_miou")),
            "stopped_early": self.stopped_early,
            "geoddu_version": __version__,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_loss": _finite(self.best_val_loss),
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            # Our own numpy draws come from per-epoch generators; the legacy global state is
            # kept for datasets that use np.random directly.
            "numpy_rng": _numpy_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        best = state["best_val_loss"]
        self.best_val_loss = math.inf if best is None else float(best)
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self.history = [dict(r) for r in state["history"]]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(_as_tuple(state["python_rng"]))
        if state.get("numpy_rng"):
            ns = state["numpy_rng"]
            np.random.set_state(("MT19937", np.asarray(ns["keys"], np.uint32), ns["pos"],
                                 ns["has_gauss"], ns["cached_gaussian"]))

    def _write_history(self) -> None:
        _atomic_write(self.run_dir / "history.json", json.dumps(self.history, indent=1) + "\n")
        buf = io.StringIO()
        fields = list(self.history[0]) if self.history else []
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        _atomic_write(self.run_dir / "history.csv", buf.getvalue())

    def result(self) -> TrainResult:
        best = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        return TrainResult(
            run_dir=self.run_dir,
            epochs_run=self.epoch,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            best_val_miou=float(best.get("val_miou", math.nan)),
            stopped_early=self.stopped_early,
            history=list(self.history),
        )


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """A new run refuses to clobber an old one unless told to."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / LAST).is_file():
            raise GeodduError(f"{run_dir / LAST}: nothing to resume")
        return run_dir
    if (run_dir / LAST).exists() or (run_dir / BEST).exists():
        if not overwrite:
            raise GeodduError(f"{run_dir} already holds a run; pass --resume to continue it or "
                              f"--overwrite to start again")
        for name in (LAST, BEST, "history.csv", "history.json"):
            (run_dir / name).unlink(missing_ok=True)
    if run_dir.exists() and not run_dir.is_dir():
        raise GeodduError(f"{run_dir}: not a directory")
    return run_dir


def load_resume(run_dir: str | os.PathLike) -> tuple[DDUNet, dict[str, Any]]:
    """The model and checkpoint of `run_dir/last.pt`, ready for `Trainer(..., resume_state=)`."""
    ckpt = load_checkpoint(Path(run_dir) / LAST)
    if "resume" not in ckpt:
        raise GeodduError(f"{Path(run_dir) / LAST}: holds no training state to resume from")
    model = model_from_checkpoint(ckpt)
    if ckpt.get("training", {}).get("freeze_encoder"):
        model.encoder.freeze()
    return model, ckpt


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Change every dropout rate of a model (and its recorded config)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout):
            m.p = p
    if hasattr(model, "config"):
        model.config["dropout"] = p


def _numpy_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
