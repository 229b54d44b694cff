"""The training loop (Sec. III-C): dice loss (Eq. 1), Adam, plateau LR halving, early stopping.

A run lives in one directory: `last.pt` (weights + everything `--resume` needs, written after
every epoch), `best.pt` (lowest validation loss so far), `history.csv` / `history.json` (the
curves). All are replaced atomically, `last.pt` first, so killing the process at any moment
leaves a run that resumes exactly where its last completed epoch ended (geoddu.train.run_folder
repairs what lagged behind `last.pt`): model, optimiser, scheduler, AMP scaler, epoch,
early-stopping counters and RNG states are restored; data order and augmentation are drawn from
(seed, epoch) so they do not depend on the process.

Under torchrun the same loop runs on every rank of a `TrainMesh` (data x spatial). Each global
batch is the one a single process would draw; data-parallel groups load their share of it,
the ranks of a group each run their block of every patch's subimages, the loss is finished from
pixel sums added over all ranks, and the gradients are averaged over all ranks, so a step is
the single-process step. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import datetime
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..card import check_user_fields
from ..checkpoint import load_checkpoint, save_checkpoint, update_card
from ..checkpoint_metadata import build_metadata
from ..errors import GeodduError
from ..models.ddunet import DDUNet
from ..parallel.devices import autocast, resolve_device
from ..parallel.group import AgreedError
from ..version import __version__
from .augment import apply_augmentation, draw_augmentation
from .batchnorm import PER_SUBIMAGE
from .card_facts import describe_data, epoch_metrics, finite, model_card_facts, test_figures
from .config import TrainConfig
from .determinism import deterministic_mode, seed_everything, seed_worker
from .dropout import dropout_masks
from .evaluation import (
    Normalizer,
    cell_size,
    check_bottleneck_trains,
    check_model_fits,
    evaluate,
    make_partition,
)
from .execution import SubimageTraining
from .losses import get_loss
from .mesh import TrainMesh
from .rng_state import restore_rng_state, rng_state
from .run_folder import BEST, LAST, write_history
from .spatial import SpatialTraining, average_gradients


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
    # The weights after the last epoch (last.pt holds the same), on every rank.
    model: DDUNet | None = None
    # best.pt's card "test" section: the test split's figures, or why there are none.
    test: dict[str, Any] | None = None

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
        mesh: TrainMesh | None = None,
        card: dict[str, Any] | None = None,
        test_set: Any = None,
        no_test: str | None = None,
    ) -> None:
        self.config = config.check()
        # The user's model card fields (--card FILE); geoddu adds its own at every save.
        self.user_card = check_user_fields(card or {}, "--card")
        self._card_static: dict[str, Any] | None = None
        self.mesh = mesh or TrainMesh()
        self.device = resolve_device(
            config.device, "training runs on one device; give --device cpu, cuda or cuda:N")
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        if len(train_set) == 0 or len(val_set) == 0:
            raise GeodduError("training needs a non-empty training and validation split")
        for ds in (train_set, val_set):
            check_model_fits(model, ds, "the model")
        # The test split is evaluated once, after the last epoch (never to pick weights); without
        # one, the card says why (`no_test`).
        self.test_set = test_set if test_set is not None and len(test_set) else None
        if self.test_set is not None:
            check_model_fits(model, self.test_set, "the model")
        self.no_test = no_test or "no test split was given to the trainer"
        # A CPU copy of best.pt's weights, for evaluating them on the test split at the end
        # when a later epoch did not improve (None: not improved since this process started).
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.test_result: dict[str, Any] | None = None
        self.run_dir = Path(run_dir)
        self.callbacks = callbacks or Callbacks()
        self.record = dict(record or {})
        self.normalization = normalization or train_set.normalization
        self.grid = config.subimages or train_set.grid or (1, 1)
        h, w = train_set.patch_shape
        self.partition = make_partition(h, w, model.stride, self.grid)
        check_bottleneck_trains(self.partition, model.stride)
        # How the model runs in training (it wraps the model, as DDP does): the subimages as
        # streams meeting at BatchNorm under the chosen rule, over this rank's share of them.
        self.spatial = self._spread(model) if self.mesh.world > 1 else None
        self.executor: SubimageTraining = self.spatial or SubimageTraining(
            model, batchnorm=self.config.batchnorm)
        self.metadata = build_metadata(
            model.config,
            classes=train_set.classes,
            bands=train_set.bands,
            normalization=self.normalization,
            subimage_size=cell_size(self.partition),
            # What the model saw (pixel size, data type, value range), so that segment can
            # say when a scene is unlike it; None for datasets that cannot tell.
            data=describe_data(train_set),
        )
        self.precision = self.config.precision_on(self.device.type)
        # Gradient scaling for float16 alone: bfloat16 has float32's exponent range.
        self.amp = self.precision == "fp16"
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
        # A finished run killed before best.pt's card got the test figures: a resume adds them
        # although no epoch is left (geoddu.train.run_folder.reconcile tells).
        self.best_test_pending = False
        if resume_state is not None:
            self._restore(resume_state)
        elif config.deterministic:
            seed_everything(config.seed)
        else:
            torch.manual_seed(config.seed)
            random.seed(config.seed)

    def _spread(self, model: DDUNet) -> SpatialTraining:
        """The model as this rank runs it in training: its block of subimages, BatchNorm sums
        over the whole mesh."""
        mesh, cfg = self.mesh, self.config
        shapes = {(c.height, c.width) for c in self.partition.subimages()}
        if len(shapes) > 1:
            # One process batches equal-size subimages together; a statistic over cells of
            # different sizes would differ from that rule.
            raise GeodduError(f"the {self.partition.grid[0]} x {self.partition.grid[1]} grid cuts "
                              f"the patches into subimages of different sizes; distributed "
                              f"training needs equal ones (pick --subimages that divide them)")
        if mesh.spatial_size > len(self.partition):
            raise GeodduError(f"--spatial-ranks {mesh.spatial_size} is more than the "
                              f"{len(self.partition)} subimages of a patch")
        if cfg.batch_size < mesh.data_size:
            raise GeodduError(f"a batch of {cfg.batch_size} patches cannot feed "
                              f"{mesh.data_size} data-parallel groups; raise --batch-size")
        if cfg.batchnorm == PER_SUBIMAGE and mesh.data_size > 1:
            # Each subimage is normalised over all of the batch's patches, which data-parallel
            # groups split between them; spatial ranks hold whole subimages and need no sums.
            raise GeodduError(f"--batchnorm per-subimage needs every rank to hold whole "
                              f"subimages: use --spatial-ranks {mesh.world} (no data-parallel "
                              f"groups) or --batchnorm pooled")
        return SpatialTraining(model, group=mesh.spatial_group, bn_group=mesh.world_group,
                               data_group=mesh.data_group if mesh.data_size > 1 else None,
                               batchnorm=cfg.batchnorm)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        with deterministic_mode(self.config.deterministic, self.device):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, main = self.config, self.mesh.is_main
        # Every rank built the same weights from the same seed or checkpoint; rank 0's copy is
        # sent anyway (cheap), so nothing rests on that.
        self.mesh.sync_parameters(self.model)
        if main and not self.run_dir.is_dir():
            self.run_dir.mkdir(parents=True)
        if self.callbacks.on_start:
            self.callbacks.on_start({
                "start_epoch": self.epoch, "epochs": cfg.epochs, "grid": self.grid,
                "batches": math.ceil(len(self.train_set) / cfg.batch_size),
                "device": str(self.device), "amp": self.amp, "precision": self.precision,
                "ranks": self.mesh.world, "spatial_ranks": self.mesh.spatial_size,
            })
        ran = False  # an epoch in this process (a resumed run may have none left)
        while self.epoch < cfg.epochs and not self.stopped_early:
            ran = True
            t0 = time.perf_counter()
            train_loss = self._train_epoch(self.epoch)
            val = evaluate(
                self.model, self.val_set, normalization=self.normalization, grid=self.grid,
                batch_size=cfg.batch_size, device=self.device, precision=self.precision,
                workers=cfg.workers, loss=cfg.loss, progress=self.callbacks.on_validate,
                shard=(self.mesh.rank, self.mesh.world), reduce=self.mesh.reduce_sum(),
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
            final = self.stopped_early or self.epoch >= cfg.epochs
            # These weights on the test split, once, after the last epoch (every rank takes
            # part, as in validation); earlier files say the test is still to come.
            test = self._test(self.model, self.epoch) if final else self._pending_test()
            if improved and final:
                self.test_result = test
            elif improved and self.test_set is not None:
                self._best_weights = {k: v.detach().to("cpu", copy=True)
                                      for k, v in self.model.state_dict().items()}
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
            if not main:
                continue
            # Both files hold this epoch's weights: the card's metrics are this epoch's.
            # last.pt first: a kill before best.pt is written leaves last.pt holding the best
            # epoch, from which a resume rebuilds best.pt (the other order would lose it).
            card = {**self._card(row, val), "test": test}
            save_checkpoint(self.run_dir / LAST, self.model, self.metadata,
                            training=self._training_record(), state=self._state(), card=card)
            if improved:
                save_checkpoint(self.run_dir / BEST, self.model, self.metadata,
                                training=self._training_record(), card=card)
            write_history(self.run_dir, self.history)
            if self.callbacks.on_epoch:
                self.callbacks.on_epoch(row)
        if (ran or self.best_test_pending) and self.test_result is None:
            self._test_best()
        return self.result()

    # -- the test split -----------------------------------------------------------------------
    def _pending_test(self) -> dict[str, Any]:
        if self.test_set is None:
            return {"evaluated": False, "reason": self.no_test}
        return {"evaluated": False, "reason": "training had not finished when this file was "
                                              "written: the test split is evaluated after the "
                                              "last epoch"}

    def _test(self, model: DDUNet, epoch: int) -> dict[str, Any]:
        """The card's "test" section for `model` (the weights of `epoch`)."""
        if self.test_set is None:
            return self._pending_test()
        cfg = self.config
        # A DataLoader draws its seed from torch's global generator: the test must leave no
        # trace in the state last.pt saves, or a run cut here would resume differently from one
        # that went on (the test runs at the end of a run, not of every epoch).
        rng = torch.get_rng_state()
        try:
            res = evaluate(
                model, self.test_set, normalization=self.normalization, grid=self.grid,
                batch_size=cfg.batch_size, device=self.device, precision=self.precision,
                workers=cfg.workers, loss=cfg.loss,
                shard=(self.mesh.rank, self.mesh.world), reduce=self.mesh.reduce_sum(),
            )
        finally:
            torch.set_rng_state(rng)
        return test_figures(res, epoch, len(self.test_set))

    def _test_best(self) -> None:
        """best.pt was written by an earlier epoch than the last: evaluate its weights on the
        test split and put the figures into its card (in place, atomically)."""
        if self.test_set is None:
            self.test_result = self._pending_test()
            return
        if self.best_epoch == 0:  # no epoch improved on the start (a NaN loss): no best.pt
            return
        weights = self._best_weights
        if weights is None:
            # Best before this process started (a resumed run): rank 0 holds best.pt.
            weights = self.mesh.broadcast_object(
                load_checkpoint(self.run_dir / BEST)["state_dict"] if self.mesh.is_main else None)
        # The last epoch's weights go back in afterwards (the result's model is the last one);
        # swapping beats a deep copy, which would also copy what the executor attached.
        last = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        try:
            self.test_result = self._test(self.model, self.best_epoch)
        finally:
            self.model.load_state_dict(last)
        if self.mesh.is_main:
            update_card(self.run_dir / BEST, {"test": self.test_result})

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(images, labels, global batch size): this rank's share of each global batch, in the
        order and with the augmentation one process would use."""
        cfg, ds = self.config, self.train_set
        # Data order and augmentation come from (seed, epoch) alone: the same in a resumed run
        # and on every rank.
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(ds)).tolist()
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        shares = [b[self.mesh.share(len(b))] for b in batches]
        loader = iter(torch.utils.data.DataLoader(
            ds, batch_sampler=[s for s in shares if s], num_workers=cfg.workers,
            worker_init_fn=seed_worker if cfg.deterministic and cfg.workers else None))
        h, w = ds.patch_shape
        square = h == w
        for batch, share in zip(batches, shares, strict=True):
            draws = draw_augmentation(rng, len(batch), square) if cfg.augment else None
            if share:
                x, y = next(loader)
            else:  # a short last batch leaves this rank nothing; it still joins the sums
                x, y = torch.zeros(0, ds.in_channels, h, w), torch.zeros(0, h, w, dtype=torch.long)
            if draws is not None:
                x, y = apply_augmentation(x, y, draws[self.mesh.share(len(batch))])
            yield x, y, len(batch)

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.config
        self.model.train()
        total, count = 0.0, 0
        n = math.ceil(len(self.train_set) / cfg.batch_size)
        ignore = self.train_set.ignore_index
        for b, (x, y, size) in enumerate(self._batches(epoch)):
            x, y = self.normalize(x), y.to(self.device)
            part = self.partition
            rows = (None if self.spatial is None
                    else self.spatial.batch_rows(part, self.mesh.share(size), size))
            # Dropout masks drawn per (seed, epoch, step), the same in one process and on any
            # mesh (geoddu.train.dropout says why not from torch's global generator).
            with autocast(self.device, self.precision), \
                    dropout_masks(self.executor, (cfg.seed, epoch, b), rows):
                if self.spatial is None:
                    # The loss over the subimages, as on ranks: its sums come out the same.
                    logits = [lg for row in self.executor.forward_subimages(part.split(x))
                              for lg in row]
                    target = [t for row in part.split(y) for t in row]
                else:  # this rank's subimages; the loss adds every rank's sums
                    logits = self.spatial(self.spatial.own_parts(x, part), part)
                    target = self.spatial.own_parts(y, part)
            loss = self.loss_fn(logits, target, ignore_index=ignore, reduce=self.mesh.reduce_sum())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.spatial is not None:
                # Every rank backpropagated the same global loss: the mean over ranks is the
                # single-process gradient (see geoddu.train.spatial). One flat all-reduce
                # after the backward pass; DDP would overlap it with the backward pass, the
                # sum is the same.
                average_gradients(self.spatial, self.mesh.world_group)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                # The loss is the global one, the same on every rank: all stop together.
                error = AgreedError if self.mesh.world > 1 else GeodduError
                raise error(f"the loss became {value} in epoch {epoch + 1}, batch {b + 1}; "
                                  f"try a lower --lr")
            total += value * size
            count += size
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
            "mesh": {"data": self.mesh.data_size, "spatial": self.mesh.spatial_size},
            "epochs_run": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": finite(self.best_val_loss),
            "best_val_miou": finite(best.get("val_miou")),
            "last_val_miou": finite(last.get("val_miou")),
            "stopped_early": self.stopped_early,
            "geoddu_version": __version__,
        }

    def _card(self, row: dict[str, Any], val: dict[str, Any]) -> dict[str, Any]:
        """The model card of the weights saved after epoch row["epoch"] (docs/model-cards.md)."""
        if self._card_static is None:  # once per run: the CPU's name, the data's sizes
            self._card_static = model_card_facts(self.train_set, self.val_set, self.metadata,
                                                 self.record, self.device)
        metrics = epoch_metrics(row, val, best_epoch=self.best_epoch, epochs_run=self.epoch)
        seconds = sum(float(r.get("seconds", 0.0)) for r in self.history)
        return {
            **self.user_card,
            **self._card_static,
            "metrics": metrics,
            "training_time_s": round(seconds, 3),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_loss": finite(self.best_val_loss),
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            **rng_state(),
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
        restore_rng_state(state)

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
            model=self.model,
            test=self.test_result,
        )
