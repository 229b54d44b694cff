"""`geoddu train`: train (or resume) a DDU-Net on DeepGlobe, the synthetic set or own data."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
from collections.abc import Iterator

import click
from click.core import ParameterSource

from geoddu.data import DATASETS

from .launch import command_args, run_local_ranks, strip_options
from .options import (
    MODEL_OPTION_KEYS,
    encoder_weights_options,
    model_options,
    overwrite_option,
    parse_bands,
    quiet_option,
    timeout_option,
)
from .progress import progress_bars

# Table VIII: the synthetic experiments use 1-4-8-16-... channels, i.e. base 4, and Fig. 8's
# headline model is DDU-Net(3,32,Y).
SYNTHETIC_ARCH = "DDU-Net(3,32,Y)"
SYNTHETIC_BASE = 4


@click.command(short_help="Train a DDU-Net; writes RUN_DIR/best.pt and last.pt.")
@click.option("--dataset", type=click.Choice(DATASETS),
              default=None, help="Which kind of data --data holds.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="The dataset folder.")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: best.pt, last.pt, history.csv, history.json.")
@click.option("-m", "--model", "init_model", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Start from this checkpoint (e.g. from `geoddu init`).")
@click.option("--arch", default=None, metavar="NAME",
              help="Architecture in the paper's notation: 'DDU-Net(3,32,Y)', 'U-Net(4)'; the "
                   "model options below override it.")
@model_options
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Dropout rate [0.1].")
@encoder_weights_options
@click.option("--freeze-encoder/--train-encoder", default=None,
              help="Keep the pretrained encoder fixed (Sec. V-B) [frozen with --encoder-weights].")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Maximum epochs [DeepGlobe/folder 100, synthetic 40].")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Global patches per batch [DeepGlobe/folder 12, synthetic 16].")
@click.option("--subimages", default=None, metavar="P|NxM",
              help="Subimage grid per global patch: 8 = 8 x 8, 1x6 = 1 row of 6 "
                   "[DeepGlobe 8, folder 4, synthetic 1 x k].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Initial learning rate [DeepGlobe/folder 0.001, synthetic 0.008].")
@click.option("--lr-patience", type=click.IntRange(0), default=None,
              help="Epochs without a better validation loss before halving the LR [5; 3].")
@click.option("--patience", type=click.IntRange(1), default=None,
              help="Early stopping: epochs without a better validation loss [15; 8].")
@click.option("--min-epochs", type=click.IntRange(0), default=None,
              help="Never stop early before this epoch [30; 20].")
@click.option("--loss", type=click.Choice(["class-dice", "dice"]), default=None,
              help="class-dice: Eq. 1 per class, averaged [default]; dice: Eq. 1 as one ratio "
                   "over all classes (a soft accuracy: rare classes barely train).")
@click.option("--batchnorm", type=click.Choice(["pooled", "per-subimage"]), default=None,
              help="BatchNorm statistics in training: pooled over every subimage of the batch "
                   "[default], or per subimage as the paper's reference code does.")
@click.option("--augment/--no-augment", default=None,
              help="Random flips and 90-degree rotations [on; off for synthetic].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds initialisation, data order, augmentation and the data splits.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda or cuda:N. Under torchrun: this rank's GPU (cuda:LOCAL_RANK) "
                   "on a GPU host unless --device cpu.")
@click.option("--amp/--no-amp", default=None,
              help="Mixed precision (float16 + gradient scaling) [on for CUDA, never on CPU].")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Data loading processes.")
@click.option("--spatial-ranks", type=click.IntRange(1), default=1, show_default=True,
              help="Under torchrun: ranks that share each global patch, each running its block "
                   "of the subimages; WORLD_SIZE / S groups split the batch (data parallel).")
@click.option("--ranks", type=click.IntRange(1), default=None,
              help="Start this many ranks on this host with torchrun for you (CPU: gloo).")
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="Train on this many GPUs of this host: --ranks N --device cuda.")
@timeout_option
@click.option("--patch-size", type=click.IntRange(16), default=None,
              help="Global patch size in px [DeepGlobe 1024, folder 512].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of images (DeepGlobe) or patches (folder) for validation.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share kept out for `geoddu evaluate`.")
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Folder data: classes YAML/JSON [DATA/classes.yaml].")
@click.option("--class-column", default=None, help="Folder data: vector attribute with the class.")
@click.option("--bands", "band_list", default=None, metavar="1,2,3",
              callback=lambda ctx, param, v: parse_bands(v),
              help="Folder data: image bands to train on [all].")
@click.option("--keep-unknown", is_flag=True,
              help="DeepGlobe: count 'unknown' in loss and mIoU (ignored by default).")
@click.option("--resume", is_flag=True,
              help="Continue RUN_DIR/last.pt exactly where it stopped: the first run's command "
                   "line with --resume added, or just -o RUN_DIR --resume. --epochs may extend "
                   "it, --device, --workers and --data may change; other options must equal "
                   "the run's.")
@overwrite_option
@quiet_option
@click.pass_context
def train(ctx: click.Context, **params) -> None:
    """Train a DDU-Net with the paper's recipe (Sec. III-C): dice loss (Eq. 1), Adam
    (0.9, 0.999), learning rate halved when the validation loss stalls, early stopping after a
    minimum number of epochs, dropout, He initialisation, mixed precision on CUDA. Defaults
    come from Table VI (DeepGlobe) and Table X (synthetic); every one can be overridden.

    Each global patch is cut into a grid of subimages; all subimages of all patches of a batch
    run as one batch (BatchNorm sees them all) and the communication network runs over each
    patch's mosaic. After every epoch RUN_DIR/last.pt (with everything --resume needs) and, on
    a better validation loss, RUN_DIR/best.pt are replaced atomically: a killed run resumes
    exactly. Checkpoints are self-describing: `geoddu segment` and `geoddu info` need nothing
    else.

    \b
    Data (--dataset):
      synthetic  a folder from `geoddu synth`
      deepglobe  DeepGlobe land cover as downloaded: <id>_sat.jpg + <id>_mask.png, or
                 torchgeo's data/{training_data,test_data}/{images,masks}
      folder     DATA/images/*.tif with DATA/labels/*.tif (same names) or one vector file
                 DATA/labels.gpkg (.geojson, .shp) + --class-column, and DATA/classes.yaml

    \b
    Examples:
      geoddu synth -o data/k2 --k 2
      geoddu train --dataset synthetic --data data/k2 -o runs/k2
      geoddu train --dataset synthetic --data data/k2 -o runs/k2-n --arch "DDU-Net(3,32,N)"
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg --device cuda --subimages 8
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg18 --encoder resnet18 \\
          --encoder-weights resnet18.pth --comm-features 256 --device cuda
      geoddu train --dataset folder --data mydata -o runs/mine --class-column landuse
      geoddu train -o runs/k2 --resume
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg --gpus 4
      torchrun --nproc-per-node 4 -m geoddu.cli train --dataset deepglobe --data DeepGlobe \\
          -o runs/dg --device cuda --spatial-ranks 2

    \b
    Several devices or hosts (docs/distributed.md): under torchrun every rank runs this same
    command; one step equals the single-process step on the same global batch (same --seed,
    same data order), rank 0 alone writes RUN_DIR and prints. --ranks/--gpus start the ranks
    on this host for you.
    """
    from geoddu.errors import GeodduError
    from geoddu.parallel.group import launched_by_torchrun

    ranks, gpus = params["ranks"], params["gpus"]
    if ranks is not None or gpus is not None:
        if launched_by_torchrun():
            raise GeodduError("--ranks/--gpus start torchrun themselves; under torchrun leave "
                              "them out")
        if ranks is not None and gpus is not None and ranks != gpus:
            raise GeodduError("give either --ranks or --gpus")
        args = strip_options(command_args("train"), ("--ranks", "--gpus"))
        if gpus is not None:
            from geoddu.parallel.devices import resolve_devices

            if _given(ctx, "device") and not params["device"].startswith("cuda"):
                raise GeodduError("--gpus trains on CUDA devices; leave out --device")
            try:
                resolve_devices(gpus=gpus)
            except GeodduError as exc:
                raise GeodduError(f"{exc}; use --ranks N to train on the CPU") from exc
            args = [*strip_options(args, ("--device",)), "--device", "cuda"]
        sys.exit(run_local_ranks(gpus or ranks, "train", args))
    if launched_by_torchrun():
        sys.exit(_train_as_rank(ctx, params))
    if params["spatial_ranks"] != 1:
        raise GeodduError("--spatial-ranks needs several ranks: start with torchrun or --ranks N")
    _train(ctx, params, mesh=None)


def _train_as_rank(ctx: click.Context, params: dict) -> int:
    """One rank of a torchrun job: join the group, build the mesh, train; rank 0 reports."""
    import torch.distributed as dist

    from geoddu.errors import GeodduError
    from geoddu.parallel.group import AgreedError, init_from_env
    from geoddu.train import TrainMesh

    # A failing peer makes torchrun's agent SIGTERM the others: unwind like Ctrl-C (the
    # checkpoints are replaced atomically, so the last one stays intact).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rank = 0
    try:
        local_device = init_from_env(params["timeout"])
        rank = dist.get_rank()
        params = dict(params, quiet=params["quiet"] or rank != 0)
        cuda = params["device"].startswith("cuda")
        if cuda and local_device.type != "cuda":
            raise AgreedError("--device cuda, but this host has no CUDA device")
        if cuda or not _given(ctx, "device"):
            # One device per rank: cuda:LOCAL_RANK on a GPU host (as segment does), else CPU.
            params["device"] = str(local_device)
        mesh = TrainMesh.create(params["spatial_ranks"],
                                "cuda" if params["device"].startswith("cuda") else "cpu")
        _train(ctx, params, mesh=mesh)
    except AgreedError as exc:
        if rank == 0:
            click.echo(f"Error: {exc}", err=True)
        return 1
    except GeodduError as exc:
        click.echo(f"Error: rank {rank}: {exc}" if rank else f"Error: {exc}", err=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _train(ctx: click.Context, p: dict, mesh) -> None:
    from geoddu.errors import GeodduError
    from geoddu.train import parse_grid, preset, resume_training, start_training

    explicit = {k: p[k] for k in MODEL_OPTION_KEYS
                if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    display = _Display(p["quiet"])
    run_dir, data, dataset, arch = p["run_dir"], p["data"], p["dataset"], p["arch"]
    if p["resume"]:
        _check_resume(ctx, p, mesh)
        with display.live() as callbacks:
            result = resume_training(
                run_dir, data=data, epochs=p["epochs"],
                device=p["device"] if (_given(ctx, "device") or mesh is not None) else None,
                workers=p["workers"] if _given(ctx, "workers") else None,
                callbacks=callbacks, mesh=mesh)
        display.summary(result)
        return
    if dataset is None or data is None:
        raise GeodduError("give --dataset and --data (or --resume to continue a run)")
    config = preset(
        dataset, subimages=parse_grid(p["subimages"]),
        **{k: p[k] for k in ("epochs", "batch_size", "lr", "lr_patience", "patience",
                             "min_epochs", "dropout", "loss", "augment", "seed", "device", "amp",
                             "workers", "batchnorm")},
    )
    if dataset == "synthetic" and p["init_model"] is None:
        if arch is None and not {"depth", "comm_features", "communicate"} & set(explicit):
            arch = SYNTHETIC_ARCH
        explicit.setdefault("base_channels", SYNTHETIC_BASE)
    if explicit.get("encoder", "unet") != "unet":
        explicit.setdefault("depth", 4)
    bands = p["band_list"]
    dataset_options = {
        "patch_size": p["patch_size"], "seed": p["seed"], "val_fraction": p["val_fraction"],
        "test_fraction": p["test_fraction"], "classes_file": p["classes_file"],
        "class_column": p["class_column"], "bands": bands,
        "ignore_unknown": False if p["keep_unknown"] else None,
    }
    with display.live() as callbacks:
        result = start_training(
            dataset, data, run_dir, config, arch=arch, model_options=explicit,
            init_checkpoint=p["init_model"], encoder_weights=p["encoder_weights"],
            adapt_bands=p["adapt_bands"],
            freeze_encoder=p["freeze_encoder"], dataset_options=dataset_options,
            overwrite=p["overwrite"], callbacks=callbacks, mesh=mesh,
        )
    display.summary(result)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


# Options a resumed run may change: where it runs, how long, where the data now lives, and
# how it reports. Every other option given with --resume must equal what the run stored.
RESUME_MAY_CHANGE = ("run_dir", "resume", "data", "epochs", "device", "workers", "spatial_ranks",
                     "ranks", "gpus", "timeout", "overwrite", "quiet")
# Where last.pt keeps what each other option set: the model's config, the training config,
# the training record or the dataset's description. An option whose place holds nothing (a
# folder option on a synthetic run) had no effect on the run and has nothing to conflict with.
RESUME_STORED = {
    **{k: ("model", k) for k in MODEL_OPTION_KEYS},
    **{k: ("config", k) for k in ("dropout", "batch_size", "subimages", "lr", "lr_patience",
                                  "patience", "min_epochs", "loss", "augment", "seed", "amp",
                                  "batchnorm")},
    "dataset": ("dataset", "kind"),
    "init_model": ("training", "init_checkpoint"),
    "arch": ("training", "arch"),
    "encoder_weights": ("training", "encoder_weights"),
    "adapt_bands": ("training", "adapt_bands"),
    "freeze_encoder": ("training", "freeze_encoder"),
    **{k: ("dataset", k) for k in ("patch_size", "val_fraction", "test_fraction",
                                   "classes_file", "class_column")},
    "band_list": ("dataset", "bands"),
    "keep_unknown": ("dataset", "ignore_unknown"),
}
_PATHS = ("init_model", "encoder_weights", "classes_file")


def _check_resume(ctx: click.Context, p: dict, mesh) -> None:
    """--resume with the first run's command line: every option given that the run stored
    must equal it; a conflicting one is refused with its name and both values."""
    from geoddu.checkpoint import load_checkpoint
    from geoddu.errors import GeodduError
    from geoddu.train.loop import LAST, check_run_dir

    given = [k for k in RESUME_STORED if _given(ctx, k)]
    if not given:
        return  # nothing to compare: last.pt is read once, by the resume itself

    def check() -> None:
        if mesh is not None and not mesh.is_main:
            return  # only rank 0's host need hold the run (as resume_training reads it)
        run_dir = check_run_dir(p["run_dir"], resume=True, overwrite=False)
        ckpt = load_checkpoint(run_dir / LAST)
        record = ckpt.get("training") or {}
        places = {"model": ckpt.get("config") or {}, "config": record.get("config") or {},
                  "training": record, "dataset": record.get("dataset") or {}}
        for name in given:
            place, key = RESUME_STORED[name]
            if key not in places[place]:
                continue
            stored, value = places[place][key], p[name]
            if name == "keep_unknown":
                stored, value = not stored, bool(value)
            elif name == "subimages":
                from geoddu.train import parse_grid

                value = parse_grid(value)
                stored = tuple(stored) if stored is not None else None
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


def _same(name: str, value, stored) -> bool:
    if value is None or stored is None:
        return value is None and stored is None
    if name in _PATHS:
        from pathlib import Path

        return str(value) == str(stored) or Path(value).resolve() == Path(stored).resolve()
    if name == "arch":
        return "".join(str(value).split()).lower() == "".join(str(stored).split()).lower()
    if isinstance(value, float) or isinstance(stored, float):
        return math.isclose(float(value), float(stored), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(value, (list, tuple)) or isinstance(stored, (list, tuple)):
        return list(value) == list(stored)
    return value == stored


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _spell(option: click.Parameter, value) -> str:
    """The option as a command line gives it: `--lr 0.01`, `--no-augment`, `--keep-unknown`."""
    name = option.opts[-1]
    if getattr(option, "is_flag", False):
        if value or not option.secondary_opts:
            return name
        return option.secondary_opts[-1]
    return f"{name} {_show(value)}"


def _stored(option: click.Parameter, stored) -> str:
    if getattr(option, "is_flag", False):
        if option.secondary_opts:
            return option.opts[-1] if stored else option.secondary_opts[-1]
        return option.opts[-1] if stored else f"(no {option.opts[-1]})"
    return _show(stored)


class _Display:
    """rich progress (epochs, batches with loss / LR / ETA) and one line per epoch."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def live(self) -> Iterator[object]:
        from geoddu.train import Callbacks

        if self.quiet:
            yield Callbacks()
            return
        state: dict = {}
        bar = progress_bars("info", transient=True)
        self.console = bar.console
        # In a file or a pipe a bar is not redrawn but dumped (and rich wraps long lines at
        # 80 columns): there, the epoch lines alone, each one plain line.
        terminal = self.console.is_terminal

        def say(text: str) -> None:
            if terminal:
                self.console.print(text)
            else:
                from rich.text import Text

                click.echo(Text.from_markup(text).plain, err=True)

        try:

            def on_start(info):
                # Drawn only once training starts: an error while setting up (a damaged
                # last.pt, say) stays the one line on stderr, without a blank line before it.
                state["epochs"] = info["epochs"]
                if terminal:
                    bar.start()
                    state["started"] = True
                state["epoch_task"] = bar.add_task("epochs", total=info["epochs"],
                                                   completed=info["start_epoch"], info="")
                state["batch_task"] = bar.add_task("batches", total=info["batches"], info="")
                grid = "x".join(map(str, info["grid"]))
                amp = ", mixed precision" if info["amp"] else ""
                where = info["device"]
                if info.get("ranks", 1) > 1:
                    s = info["spatial_ranks"]
                    where = (f"{info['ranks']} ranks ({info['ranks'] // s} data x {s} spatial) "
                             f"on {where}")
                say(f"training on {where}{amp}, {grid} subimages per patch, from epoch "
                    f"{info['start_epoch'] + 1}")

            def on_batch(epoch, b, n, loss, lr):
                if b == 1:
                    bar.reset(state["batch_task"], total=n)
                    bar.update(state["batch_task"], description=f"epoch {epoch}")
                bar.update(state["batch_task"], completed=b, info=f"loss {loss:.4f}  lr {lr:.2g}")

            def on_validate(done, total):
                bar.update(state["batch_task"], description="validate", completed=done,
                           total=total)

            def on_epoch(row):
                bar.update(state["epoch_task"], completed=row["epoch"])
                best = "  [green]best[/green]" if row["best"] else ""
                say(
                    f"epoch {row['epoch']:>3}/{state['epochs']}  train loss "
                    f"{row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  val mIoU "
                    f"{_fmt(row['val_miou'])}  lr {row['lr']:.2g}  {row['seconds']:.1f} s{best}"
                )

            yield Callbacks(on_start=on_start, on_batch=on_batch, on_validate=on_validate,
                            on_epoch=on_epoch)
        finally:
            if state.get("started"):  # stopping a bar never started still prints a newline
                bar.stop()

    def summary(self, result) -> None:
        if self.quiet:
            return
        how = "stopped early" if result.stopped_early else "done"
        click.echo(f"{how} after {result.epochs_run} epochs; best.pt: epoch {result.best_epoch}, "
                   f"val loss {result.best_val_loss:.4f}, val mIoU {_fmt(result.best_val_miou)} "
                   f"({result.run_dir})")


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"
