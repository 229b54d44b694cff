"""`geoddu train`: train (or resume) a DDU-Net on DeepGlobe, the synthetic set or own data.

The options are the fields of :class:`geoddu.train.request.TrainRequest`, by name; the run
itself is :func:`geoddu.train.api.train_model`, the same for the Python API and QGIS.
"""

from __future__ import annotations

import signal
import sys

import click

from geoddu.errors import GeodduError
from geoddu.train.request import TrainRequest

from .launch import command_args, end_now, run_local_ranks, strip_options
from .options import (
    bands_option,
    device_option,
    encoder_weights_options,
    field_type,
    model_option,
    model_options,
    output_option,
    overwrite_option,
    progress_option,
    quiet_option,
    request_option,
    timeout_option,
    train_precision_option,
)
from .requests import error_events, given, request_fields


def _typed(flags: str, name: str, help: str, **kwargs: object):
    """An option for the TrainRequest field ``name``, typed by the field's check."""
    return click.option(flags, name, type=field_type(TrainRequest, name), help=help,
                        **{"default": None, **kwargs})


@click.command(short_help="Train a DDU-Net; writes RUN_DIR/best.pt and last.pt.")
@_typed("--dataset", "dataset", "Which kind of data --data holds.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="The dataset folder.")
@output_option("Run folder: best.pt, last.pt, history.csv, history.json (required, unless "
               "--request names it).", dest="run_dir", folder=True)
@model_option("Start from this checkpoint (e.g. from `geoddu init`).", dest="init_model",
              exists=True)
@click.option("--arch", default=None, metavar="NAME",
              help="Architecture in the paper's notation: 'DDU-Net(3,32,Y)', 'U-Net(4)'; the "
                   "model options below override it.")
@model_options
@_typed("--dropout", "dropout", "Dropout rate [0.1].")
@encoder_weights_options
@click.option("--freeze-encoder/--train-encoder", default=None,
              help="Keep the pretrained encoder fixed (Sec. V-B) [frozen with --encoder-weights].")
@_typed("--epochs", "epochs", "Maximum epochs [DeepGlobe/folder 100, synthetic 40].")
@_typed("--batch-size", "batch_size",
        "Global patches per batch [DeepGlobe/folder 12, synthetic 16].")
@click.option("--subimages", default=None, metavar="P|NxM",
              help="Subimage grid per global patch: 8 = 8 x 8, 1x6 = 1 row of 6 "
                   "[DeepGlobe 8, folder 4, synthetic 1 x k].")
@_typed("--lr", "lr", "Initial learning rate [DeepGlobe/folder 0.001, synthetic 0.008].")
@_typed("--lr-patience", "lr_patience",
        "Epochs without a better validation loss before halving the LR [5; 3].")
@_typed("--patience", "patience", "Early stopping: epochs without a better validation loss "
        "[15; 8].")
@_typed("--min-epochs", "min_epochs", "Never stop early before this epoch [30; 20].")
@_typed("--loss", "loss", "class-dice: Eq. 1 per class, averaged [default]; dice: Eq. 1 as "
        "one ratio over all classes (a soft accuracy: rare classes barely train).")
@_typed("--batchnorm", "batchnorm", "BatchNorm statistics in training: pooled over every "
        "subimage of the batch [default], or per subimage as the paper's reference code does.")
@click.option("--augment/--no-augment", default=None,
              help="Random flips and 90-degree rotations [on; off for synthetic].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds initialisation, data order, augmentation and the data splits.")
@click.option("--deterministic", is_flag=True,
              help="Two runs of this command (killed and resumed or not) give bit-identical "
                   "weights: deterministic kernels, one intra-op thread, seeded workers. "
                   "Slower: a CPU run uses one core.")
@device_option("cpu, cuda or cuda:N. Under torchrun: this rank's GPU (cuda:LOCAL_RANK) on a "
               "GPU host unless --device cpu.", default="cpu")
@train_precision_option
@click.option("--amp/--no-amp", default=None,
              help="Older spelling: --amp = --precision fp16 on CUDA (ignored on the CPU), "
                   "--no-amp = --precision fp32.")
@_typed("--workers", "workers", "Data loading processes.", default=0, show_default=True)
@_typed("--spatial-ranks", "spatial_ranks", "Under torchrun: ranks that share each global "
        "patch, each running its block of the subimages; WORLD_SIZE / S groups split the batch "
        "(data parallel).", default=1, show_default=True)
@click.option("--ranks", type=click.IntRange(1), default=None,
              help="Start this many ranks on this host with torchrun for you (CPU: gloo).")
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="Train on this many GPUs of this host: --ranks N --device cuda.")
@timeout_option
@_typed("--patch-size", "patch_size", "Global patch size in px [DeepGlobe 1024, folder 512].")
@_typed("--val-fraction", "val_fraction",
        "Share of images (DeepGlobe) or patches (folder) for validation.")
@_typed("--test-fraction", "test_fraction", "Share kept out for testing: evaluated once after "
        "the last epoch into the model card (\"test\"), and by `geoddu evaluate`.")
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Folder data: classes YAML/JSON [DATA/classes.yaml].")
@click.option("--class-column", default=None, help="Folder data: vector attribute with the class.")
@bands_option("Folder data: image bands to train on [all].")
@click.option("--keep-unknown", is_flag=True,
              help="DeepGlobe: count 'unknown' in loss and mIoU (ignored by default).")
@click.option("--card", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model card fields (YAML or JSON): description, license, citation, authors, "
                   "intended_use, limitations; geoddu adds what it knows (docs/model-cards.md).")
@click.option("--resume", is_flag=True,
              help="Continue RUN_DIR/last.pt exactly where it stopped: the first run's command "
                   "line with --resume added, or just -o RUN_DIR --resume. --epochs may extend "
                   "it, --device, --workers and --data may change; other options must equal "
                   "the run's.")
@overwrite_option
@quiet_option
@request_option("geoddu.train.request.TrainRequest")
@progress_option
@click.pass_context
def train(ctx: click.Context, request_file, progress, quiet, ranks, gpus, timeout, **_) -> None:
    """Train a DDU-Net with the paper's recipe (Sec. III-C): dice loss (Eq. 1), Adam
    (0.9, 0.999), learning rate halved when the validation loss stalls, early stopping after a
    minimum number of epochs, dropout, He initialisation, mixed precision on CUDA (--precision
    bf16 on the CPU). Defaults
    come from Table VI (DeepGlobe) and Table X (synthetic); every one can be overridden.

    Each global patch is cut into a grid of subimages; all subimages of all patches of a batch
    run as one batch (BatchNorm sees them all) and the communication network runs over each
    patch's mosaic. After every epoch RUN_DIR/last.pt (with everything --resume needs) and, on
    a better validation loss, RUN_DIR/best.pt are replaced atomically: a run killed at any
    moment resumes with --resume, losing at most the epoch in progress (a run killed in its
    first epoch starts again). Checkpoints are self-describing: `geoddu segment` and
    `geoddu info` need nothing else.

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
      geoddu train --dataset synthetic --data data/k2 -o runs/k2-bf16 --precision bf16
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg --device cuda --subimages 8
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg18 --encoder resnet18 \\
          --encoder-weights resnet18.pth --comm-features 256 --device cuda
      geoddu train --dataset folder --data mydata -o runs/mine --class-column landuse
      geoddu train -o runs/k2 --resume
      geoddu train --dataset deepglobe --data DeepGlobe -o runs/dg --gpus 4
      torchrun --nproc-per-node 4 -m geoddu.cli train --dataset deepglobe --data DeepGlobe \\
          -o runs/dg --device cuda --spatial-ranks 2
      geoddu train --request run.json --device cuda --progress json

    \b
    A program (the QGIS plugin, a script) describes the whole run as JSON, the fields of
    geoddu.train.request.TrainRequest (named as the options: run_dir for -o, init_model for
    -m, num_classes for --classes), with --request FILE or --request - (stdin); options given
    as well override its fields. --progress json writes one JSON object per line on stderr
    (start, progress, epoch, done, error; docs/requests.md) instead of bars and the summary.

    \b
    Several devices or hosts (docs/distributed.md): under torchrun every rank runs this same
    command; one step equals the single-process step on the same global batch (same --seed,
    same data order), rank 0 alone writes RUN_DIR and prints. --ranks/--gpus start the ranks
    on this host for you.
    """
    from geoddu.parallel.group import launched_by_torchrun

    if ranks is not None or gpus is not None:
        with error_events(progress == "json"):
            command_request(ctx, request_file)  # a bad request fails here, once
            args = _rank_args(ctx, request_file, ranks, gpus)
        sys.exit(run_local_ranks(gpus or ranks, "train", args))
    if launched_by_torchrun():
        sys.exit(_train_as_rank(ctx, request_file, progress, quiet, timeout))
    with error_events(progress == "json"):
        _train(ctx, command_request(ctx, request_file), progress, quiet, mesh=None)


def command_request(ctx: click.Context, request_file: str | None) -> TrainRequest:
    """The run the command line (and --request) describes, checked."""
    fields = request_fields(ctx, TrainRequest, request_file)
    if request_file is None and "run_dir" not in fields:
        # -o is required unless --request names the run folder: click's own message.
        raise click.MissingParameter(ctx=ctx, param=_param(ctx, "run_dir"))
    return TrainRequest.from_dict(fields)


def _param(ctx: click.Context, name: str) -> click.Parameter:
    return next(p for p in ctx.command.params if p.name == name)


def _rank_args(ctx: click.Context, request_file: str | None, ranks: int | None,
               gpus: int | None) -> list[str]:
    """This command line for each of the ranks --ranks/--gpus start."""
    from geoddu.parallel.group import launched_by_torchrun

    if launched_by_torchrun():
        raise GeodduError("--ranks/--gpus start torchrun themselves; under torchrun leave "
                          "them out")
    if ranks is not None and gpus is not None and ranks != gpus:
        raise GeodduError("give either --ranks or --gpus")
    if request_file == "-":
        raise GeodduError("--request -: the ranks cannot share stdin; give --request FILE")
    args = strip_options(command_args("train"), ("--ranks", "--gpus"))
    if gpus is not None:
        from geoddu.parallel.devices import resolve_devices

        if given(ctx, "device") and not ctx.params["device"].startswith("cuda"):
            raise GeodduError("--gpus trains on CUDA devices; leave out --device")
        try:
            resolve_devices(gpus=gpus)
        except GeodduError as exc:
            raise GeodduError(f"{exc}; use --ranks N to train on the CPU") from exc
        args = [*strip_options(args, ("--device",)), "--device", "cuda"]
    return args


def _train_as_rank(ctx: click.Context, request_file: str | None, progress: str, quiet: bool,
                   timeout: int) -> int:
    """One rank of a torchrun job: join the group, build the mesh, train; rank 0 reports."""
    import torch.distributed as dist

    from geoddu.events import emit_json, error_event
    from geoddu.parallel.group import AgreedError, init_from_env
    from geoddu.train import TrainMesh

    # A failing peer makes torchrun's agent SIGTERM the others: unwind like Ctrl-C (the
    # checkpoints are replaced atomically, so the last one stays intact).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rank = 0
    try:
        local_device = init_from_env(timeout)
        rank = dist.get_rank()
        if request_file == "-":
            raise AgreedError("--request -: the ranks cannot share stdin; give --request FILE")
        request = command_request(ctx, request_file)
        cuda = (request.device or "cpu").startswith("cuda")
        if cuda and local_device.type != "cuda":
            raise AgreedError("--device cuda, but this host has no CUDA device")
        if cuda or request.device is None:
            # One device per rank: cuda:LOCAL_RANK on a GPU host (as segment does), else CPU.
            request = request.replace(device=str(local_device))
        mesh = TrainMesh.create(request.spatial_ranks or 1,
                                "cuda" if request.device.startswith("cuda") else "cpu")
        _train(ctx, request, progress if rank == 0 else "rich", quiet or rank != 0, mesh=mesh)
    except GeodduError as exc:
        if rank == 0 and progress == "json":
            emit_json(error_event(str(exc)))
        if not isinstance(exc, AgreedError):
            click.echo(f"Error: rank {rank}: {exc}" if rank else f"Error: {exc}", err=True)
        elif rank == 0:
            click.echo(f"Error: {exc}", err=True)
        return 1
    finally:
        # Past this point a SIGTERM from torchrun's agent has nothing to unwind (see end_now).
        signal.signal(signal.SIGTERM, end_now)
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _train(ctx: click.Context, request: TrainRequest, progress: str, quiet: bool,
           mesh) -> None:
    from geoddu.train.api import train_model

    from .train_progress import train_display
    from .train_resume import check_resume

    if request.resume:
        check_resume(ctx, request, mesh)
    display = train_display(progress, quiet)
    with display.live() as on_event:
        result = train_model(request, on_event=on_event, mesh=mesh)
    display.done(result)
