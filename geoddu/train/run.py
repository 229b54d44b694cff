"""Starting and resuming runs: datasets, model and normalisation put together for the Trainer.

The CLI, the tests and the benchmark all go through these two functions, so a run started from
Python resumes from the command line and the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..card import user_fields
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..data import open_dataset
from ..errors import GeodduError
from ..models.ddunet import DDUNet, create_model
from ..models.encoder_weights import imagenet_normalization, load_encoder_weights
from .config import TrainConfig
from .evaluation import check_model_fits
from .loop import Callbacks, Trainer, TrainResult
from .mesh import TrainMesh
from .run_folder import LAST, check_run_dir, reconcile


def open_splits(kind: str, data: str | os.PathLike, options: dict[str, Any] | None = None,
                splits: tuple[str, ...] = ("train", "val")) -> list[Any]:
    return [open_dataset(kind, data, s, **(options or {})) for s in splits]


def open_test_split(kind: str, data: str | os.PathLike,
                    options: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    """(the test split, None), or (None, why there is none): the model card says which.

    Data without a test split is not an error for training (e.g. a test fraction of 0), so the
    reason is kept, not raised."""
    try:
        test_set = open_dataset(kind, data, "test", **(options or {}))
    except GeodduError as exc:
        return None, f"no test split: {exc}"
    if len(test_set) == 0:
        return None, f"no test split: the {kind} data's test split is empty"
    return test_set, None


def start_training(
    dataset: str,
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    arch: str | None = None,
    model_options: dict[str, Any] | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    encoder_weights: str | os.PathLike | None = None,
    adapt_bands: bool = False,
    freeze_encoder: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    callbacks: Callbacks | None = None,
    mesh: TrainMesh | None = None,
    card: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a new model (or fine-tune `init_checkpoint`) on `dataset` into `run_dir`.

    `arch` is the paper's notation ('DDU-Net(3,32,Y)', 'U-Net(4)') or an encoder name;
    `model_options` override it (the CLI passes only the options given on the command line).
    Input bands and classes always come from the data. `encoder_weights`: a local ResNet
    state dict (`adapt_bands`: spread a 3-band one over the data's bands). `card`: the user's
    model card fields (geoddu.card.read_card_file); geoddu adds what it knows. Under torchrun every
    rank calls this with the same arguments and its `mesh`; only rank 0 touches `run_dir`.
    """
    mesh = mesh or TrainMesh()

    def build() -> Trainer:
        config.check()
        if mesh.is_main:
            check_run_dir(run_dir, resume=False, overwrite=overwrite)
        if adapt_bands and not encoder_weights:
            raise GeodduError("--adapt-bands adapts --encoder-weights; give those too")
        train_set, val_set = open_splits(dataset, data, dataset_options)
        test_set, no_test = open_test_split(dataset, data, dataset_options)
        opts = dict(model_options or {})
        pretrained, kept = None, None
        for key, have in (("in_channels", train_set.in_channels),
                          ("num_classes", train_set.num_classes)):
            if opts.get(key) not in (None, have):
                raise GeodduError(f"{key.replace('_', ' ')} {opts[key]} given, but the "
                                  f"{dataset} data has {have}")
            opts.pop(key, None)
        if init_checkpoint is not None:
            if arch or opts or encoder_weights:
                raise GeodduError("--model takes its architecture from the checkpoint; "
                                  "leave out the model options")
            init = load_checkpoint(init_checkpoint)
            model = model_from_checkpoint(init)
            check_model_fits(model, train_set, f"{init_checkpoint}:")
            set_dropout(model, config.dropout)
            freeze = bool(freeze_encoder)
            if freeze:
                model.encoder.freeze()
            # `geoddu init --encoder-weights` wrote ImageNet statistics for 8-bit data: keep them.
            if init["normalization"] == imagenet_normalization(train_set.in_channels):
                kept = init["normalization"]
        else:
            # Seeded before construction: He initialisation is part of what the seed reproduces.
            torch.manual_seed(config.seed)
            freeze = bool(encoder_weights) if freeze_encoder is None else bool(freeze_encoder)
            # Weights load after construction: the file may need its bands adapted first.
            model = create_model(
                arch, **opts, in_channels=train_set.in_channels, num_classes=train_set.num_classes,
                dropout=config.dropout, freeze_encoder=freeze and not encoder_weights,
            )
            if encoder_weights:
                pretrained = load_encoder_weights(model, encoder_weights, adapt_bands=adapt_bands)
                if freeze:
                    model.encoder.freeze()
        normalization = train_set.normalization
        # 3-band weights on 8-bit data are taken for ImageNet's, which expect its statistics.
        if _is_uint8_scale(normalization):
            if pretrained is not None and pretrained.bands == 3:
                normalization = imagenet_normalization(train_set.in_channels)
            elif kept is not None:
                normalization = kept
        record = {
            "dataset": train_set.describe(),
            "data": str(Path(data).resolve()),
            "arch": arch,
            "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
            "encoder_weights": str(encoder_weights) if encoder_weights else None,
            "adapt_bands": bool(adapt_bands),
            "freeze_encoder": freeze,
        }
        return Trainer(model, train_set, val_set, Path(run_dir), config,
                       normalization=normalization, record=record, callbacks=callbacks, mesh=mesh,
                       card=card, test_set=test_set, no_test=no_test)

    # Every rank stops on any rank's set-up error (rank 0 prints it) instead of the others
    # waiting for it in the first collective.
    return mesh.agreed(build).fit()


def resume_training(
    run_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    epochs: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    callbacks: Callbacks | None = None,
    mesh: TrainMesh | None = None,
    card: dict[str, Any] | None = None,
) -> TrainResult:
    """Continue `run_dir/last.pt` exactly where it stopped (optionally with more epochs).

    The model card keeps the run's user fields; `card` (user fields) replaces them.

    Under torchrun rank 0 reads the checkpoint and sends it to the other ranks, so only its
    host needs the run directory (every host needs the data). The number of ranks may differ
    from the run's start: the state does not depend on it.
    """
    mesh = mesh or TrainMesh()

    def read() -> tuple[dict[str, Any], bool] | None:
        if not mesh.is_main:
            return None
        check_run_dir(run_dir, resume=True, overwrite=False)
        ckpt = load_checkpoint(Path(run_dir) / LAST)
        if "resume" not in ckpt:  # refused before the folder is touched
            raise GeodduError(f"{Path(run_dir) / LAST}: holds no training state to resume from")
        # A kill at any moment left last.pt whole; what lags behind it is made to agree.
        return ckpt, reconcile(run_dir, ckpt)

    ckpt, best_test_pending = mesh.broadcast_object(mesh.agreed(read))

    def build() -> Trainer:
        model = model_from_resume(ckpt, Path(run_dir) / LAST)
        record = dict(ckpt.get("training", {}))
        config = TrainConfig.from_dict(record.get("config", {}))
        if epochs is not None:
            config.epochs = epochs
        if device is not None:
            config.device = device
        if workers is not None:
            config.workers = workers
        described = dict(record.get("dataset", {}))
        kind = described.pop("kind", None)
        source = data or record.get("data")
        if kind is None or source is None:
            raise GeodduError(f"{run_dir}: the checkpoint does not say which data it was "
                              f"trained on")
        train_set, val_set = open_splits(kind, source, described)
        test_set, no_test = open_test_split(kind, source, described)
        keep = ("dataset", "data", "arch", "init_checkpoint", "encoder_weights", "adapt_bands",
                "freeze_encoder")
        record = {k: record.get(k) for k in keep}
        record["data"] = str(Path(source).resolve())
        trainer = Trainer(model, train_set, val_set, Path(run_dir), config,
                          normalization=ckpt["normalization"], record=record,
                          callbacks=callbacks, resume_state=ckpt["resume"], mesh=mesh,
                          card=user_fields(ckpt.get("card")) if card is None else card,
                          test_set=test_set, no_test=no_test)
        trainer.best_test_pending = best_test_pending
        return trainer

    return mesh.agreed(build).fit()


def _is_uint8_scale(norm: dict[str, list[float]]) -> bool:
    return all(m == 0 for m in norm["mean"]) and all(s == 255 for s in norm["std"])


def model_from_resume(ckpt: dict[str, Any], where: str | os.PathLike) -> DDUNet:
    """The model of a `last.pt` checkpoint already read, with its encoder frozen if it was."""
    if "resume" not in ckpt:
        raise GeodduError(f"{where}: holds no training state to resume from")
    model = model_from_checkpoint(ckpt)
    if ckpt.get("training", {}).get("freeze_encoder"):
        model.encoder.freeze()
    return model


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Change every dropout rate of a model (and its recorded config)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout):
            m.p = p
    if hasattr(model, "config"):
        model.config["dropout"] = p
