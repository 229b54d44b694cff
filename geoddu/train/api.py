"""`geoddu.train_model`: the one front of training, a :class:`TrainRequest` run here.

The CLI (`geoddu train`, with or without --request), the Python API and the QGIS plugin's
in-process engine all come through :func:`train_model`: the request becomes the dataset's
preset with its overrides, the model options and the dataset's options, then a new run
(:func:`start_training`) or a resumed one (:func:`resume_training`). Progress goes out as the
events of :mod:`geoddu.events`, the same whether a terminal, a JSON line or QGIS shows them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..card import read_card_file
from ..errors import GeodduError
from ..events import epoch_event, progress_event, start_event
from .config import preset
from .loop import Callbacks, TrainResult
from .mesh import TrainMesh
from .request import TrainRequest
from .run import resume_training, start_training
from .run_folder import has_last

__all__ = ["EventFn", "event_callbacks", "summary_line", "train_model"]

EventFn = Callable[[dict[str, Any]], None]

# Table VIII: the synthetic experiments use 1-4-8-16-... channels, i.e. base 4, and Fig. 8's
# headline model is DDU-Net(3,32,Y).
SYNTHETIC_ARCH = "DDU-Net(3,32,Y)"
SYNTHETIC_BASE = 4
# The DDUNet keywords a request may set (create_model's defaults fill the others).
MODEL_FIELDS = ("encoder", "in_channels", "num_classes", "depth", "base_channels",
                "comm_features", "communicate", "up_bias")
# TrainConfig's fields a request may set (the dataset's preset fills the others).
CONFIG_FIELDS = ("epochs", "batch_size", "lr", "lr_patience", "patience", "min_epochs",
                 "dropout", "loss", "augment", "seed", "device", "precision", "amp", "workers",
                 "batchnorm", "deterministic")


def train_model(request: TrainRequest | None = None, *, on_event: EventFn | None = None,
                mesh: TrainMesh | None = None, **fields: Any) -> TrainResult:
    """Train (or resume) the run ``request``, or the request made of ``fields`` (the
    :class:`TrainRequest` field names: ``run_dir``, ``dataset``, ``data``, ``epochs`` ...);
    fields given with a request override it.

    ``on_event(event)`` receives every progress event (start, progress per batch and
    validation step, epoch; :mod:`geoddu.events`); an exception it raises (a cancellation)
    stops the run between batches, the checkpoints of the finished epochs staying. Under
    torchrun every rank calls this with the same request and its ``mesh``. A resumed run takes
    only ``data``, ``epochs``, ``device`` and ``workers`` from the request: the rest is the
    run's own (the CLI refuses options that contradict it).
    """
    if request is None:
        request = TrainRequest(**fields)
    elif fields:
        request = request.replace(**fields)
    if mesh is None and request.spatial_ranks not in (None, 1):
        raise GeodduError("--spatial-ranks needs several ranks: start with torchrun or --ranks N")
    callbacks = event_callbacks(on_event)
    # Read before any work: a bad card file is one line, not a run that fails at its first save.
    card = read_card_file(request.card) if request.card is not None else None
    if request.resume and request.dataset is not None and request.data is not None \
            and not _has_last(request.run_dir, mesh):
        # Killed in its first epoch, before last.pt: resuming is starting again. Anything
        # else in the folder (a best.pt of an older geoddu, which wrote it first) belongs to
        # that lost epoch.
        request = request.replace(resume=False, overwrite=True)
    if request.resume:
        return resume_training(request.run_dir, data=request.data, epochs=request.epochs,
                               device=request.device, workers=request.workers,
                               callbacks=callbacks, mesh=mesh, card=card)
    config = preset(request.dataset, subimages=request.subimages,
                    **{k: getattr(request, k) for k in CONFIG_FIELDS})
    return start_training(
        request.dataset, request.data, request.run_dir, config, arch=_arch(request),
        model_options=model_options(request), init_checkpoint=request.init_model,
        encoder_weights=request.encoder_weights, adapt_bands=request.adapt_bands,
        freeze_encoder=request.freeze_encoder, dataset_options=dataset_options(request),
        overwrite=request.overwrite, callbacks=callbacks, mesh=mesh, card=card,
    )


def _has_last(run_dir: str, mesh: TrainMesh | None) -> bool:
    """Rank 0's answer on every rank: only its host need hold the run folder."""
    if mesh is None:
        return has_last(run_dir)
    return mesh.broadcast_object(has_last(run_dir) if mesh.is_main else None)


def model_options(request: TrainRequest) -> dict[str, Any]:
    """The model keywords the request sets, with the synthetic set's and the ResNets' own
    defaults for those it leaves out."""
    options = {k: getattr(request, k) for k in MODEL_FIELDS if getattr(request, k) is not None}
    if request.dataset == "synthetic" and request.init_model is None:
        options.setdefault("base_channels", SYNTHETIC_BASE)
    if options.get("encoder", "unet") != "unet":
        options.setdefault("depth", 4)
    return options


def _arch(request: TrainRequest) -> str | None:
    if request.arch is None and request.dataset == "synthetic" and request.init_model is None \
            and all(getattr(request, k) is None for k in ("depth", "comm_features",
                                                          "communicate")):
        return SYNTHETIC_ARCH
    return request.arch


def dataset_options(request: TrainRequest) -> dict[str, Any]:
    """The dataset's keywords (None: the dataset's default)."""
    return {
        "patch_size": request.patch_size, "seed": request.seed,
        "val_fraction": request.val_fraction, "test_fraction": request.test_fraction,
        "classes_file": request.classes_file, "class_column": request.class_column,
        "bands": list(request.bands) if request.bands is not None else None,
        "ignore_unknown": False if request.keep_unknown else None,
    }


def event_callbacks(on_event: EventFn | None) -> Callbacks:
    """The trainer's callbacks as :mod:`geoddu.events` events for ``on_event``."""
    if on_event is None:
        return Callbacks()
    state = {"epochs": 0, "epoch": 0}

    def on_start(info: dict[str, Any]) -> None:
        state.update(epochs=info["epochs"], epoch=info["start_epoch"] + 1)
        on_event(start_event(info))

    def on_batch(epoch: int, done: int, total: int, loss: float, lr: float) -> None:
        state["epoch"] = epoch
        on_event({**progress_event("train", done, total), "epoch": epoch, "loss": loss,
                  "lr": lr})

    def on_validate(done: int, total: int) -> None:
        on_event({**progress_event("validate", done, total), "epoch": state["epoch"]})

    def on_epoch(row: dict[str, Any]) -> None:
        on_event(epoch_event(row, state["epochs"]))

    return Callbacks(on_start=on_start, on_batch=on_batch, on_validate=on_validate,
                     on_epoch=on_epoch)


def summary_line(result: TrainResult) -> str:
    """'done after 2 epochs; best.pt: epoch 2, val loss 0.4123, val mIoU 0.512 (runs/k2)'."""
    how = "stopped early" if result.stopped_early else "done"
    test = result.test or {}
    # The test split's figure when there is one (evaluated once, after the last epoch).
    tested = f", test mIoU {metric(test.get('miou'))}" if test.get("evaluated") else ""
    return (f"{how} after {result.epochs_run} epochs; best.pt: epoch {result.best_epoch}, "
            f"val loss {result.best_val_loss:.4f}, val mIoU {metric(result.best_val_miou)}"
            f"{tested} ({result.run_dir})")


def done_details(result: TrainResult) -> dict[str, Any]:
    """What the ``done`` event of a training run says besides its summary line."""
    return {"run_dir": str(result.run_dir), "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "best_val_miou": result.best_val_miou, "stopped_early": result.stopped_early,
            "best": str(result.best), "last": str(result.last), "test": result.test}


def metric(value: float | None) -> str:
    """A loss or mIoU as the progress lines print it: 3 decimals, '-' when unknown."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"
