"""`geoddu info`: parameter counts per part and the receptive field of a model; with
`--hardware`, what the machine has (:mod:`.hardware`)."""

from __future__ import annotations

import json

import click

from .options import device_option, json_option, model_config, model_option, model_options


@click.command(short_help="Parameters and receptive field of a model; --hardware: this machine.")
@model_options
@model_option("Describe this checkpoint instead of the model options.", dest="model_path")
# The old spelling, before every command named a checkpoint -m/--model; hidden, still works.
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, hidden=True)
@click.option("--size", nargs=2, type=click.IntRange(1), default=None, metavar="H W",
              help="Also estimate feature-map memory per block for an H x W input (Table V).")
@click.option("--subimages", type=click.IntRange(1), default=1, show_default=True,
              help="Subimages in the communication mosaic (memory estimate only).")
@click.option("--hardware", is_flag=True,
              help="Describe this machine instead: CUDA devices and memory, CPU cores and "
                   "threads, bf16/int8 instructions, the measured speed of each precision and "
                   "what --precision auto picks, and each dependency's installed version beside "
                   "the release pin (ok, differs or missing; GEODDU_CONSTRAINTS names another "
                   "constraints file); with -m, the checkpoint's Mpx/s per precision.")
@device_option("With --hardware: the device(s) to measure (cpu, cuda:1, cpu,cuda:0) "
               "[the CPU and every CUDA device].")
@click.option("--refresh", is_flag=True,
              help="With --hardware: measure the precisions again instead of using the cache.")
@json_option
def info(model_path, checkpoint, size, subimages, hardware, device, refresh, as_json,
         **kwargs) -> None:
    """Print the parameter counts per part (encoder-decoder, communication network) and the
    theoretical receptive field with and without communication, for the model options given
    or for a checkpoint. The numbers reproduce the paper's Tables IV, V, VIII and IX.

    With --hardware, describe this machine and how fast each precision runs on it (see
    docs/precision.md); the probe is measured once per machine and torch version, then cached.
    It also lists the versions installed beside those pinned at release (docs/reliability.md).

    \b
    Examples:
      geoddu info --in-channels 1 --base-channels 4 --depth 3 --comm-features 32
      geoddu info --encoder resnet18 --classes 7 --comm-features 256 --json
      geoddu info -m model.pt --size 1024 1024
      geoddu info --hardware
      geoddu info --hardware -m model.pt --device cuda:0 --json
    """
    if hardware:
        if size is not None or checkpoint is not None:
            raise click.UsageError("--hardware takes -m, --device, --refresh and --json only")
        from .hardware import print_hardware

        print_hardware(device, model_path, refresh, as_json)
        return
    if device is not None or refresh:
        raise click.UsageError("--device and --refresh go with --hardware")
    from rich.console import Console
    from rich.table import Table

    from geoddu.analysis import memory_table, parameter_counts, receptive_fields
    from geoddu.checkpoint import load_checkpoint, model_from_checkpoint
    from geoddu.models import create_model

    if checkpoint is not None:
        if model_path is not None:
            raise click.UsageError("give -m/--model (--checkpoint is its old name), not both")
        click.echo("geoddu info: --checkpoint is now -m/--model", err=True)
        model_path = checkpoint
    cfg = model_config(kwargs)
    meta = None
    if model_path:
        ckpt = load_checkpoint(model_path)
        model = model_from_checkpoint(ckpt)
        meta = {k: ckpt[k] for k in ("classes", "bands", "normalization", "subimage_size")}
        meta["geoddu_version"] = ckpt.get("geoddu_version")
        # The model card (docs/model-cards.md); {} for checkpoints that have none.
        meta["card"] = dict(ckpt.get("card") or {})
    else:
        model = create_model(**cfg)
    params = parameter_counts(model)
    out = {
        "config": model.config,
        "stride": model.stride,
        "parameters": params,
        "receptive_field": receptive_fields(model.config),
    }
    if meta:
        out["checkpoint"] = meta
    if size and model.config["encoder"] == "unet":
        out["memory"] = memory_table(model, size[0], size[1], subimages)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    console = Console()
    c = model.config
    console.print(
        f"[bold]DDU-Net({c['depth']},{c['comm_features']},{'Y' if c['communicate'] else 'N'})"
        f"[/bold] encoder={c['encoder']} in_channels={c['in_channels']} "
        f"classes={c['num_classes']} stride={model.stride}"
    )
    t = Table("block", "parameters", title="Parameters")
    for name, n in params["blocks"].items():
        t.add_row(name, f"{n:,}")
    t.add_row("communication network", f"{params['communication']:,}")
    t.add_row("[bold]encoder-decoder[/bold]", f"{params['encoder_decoder']:,}")
    t.add_row("[bold]total[/bold]", f"{params['total']:,}")
    console.print(t)
    rf = out["receptive_field"]
    console.print(
        f"Receptive field: {rf['without_communication']} px without communication, "
        f"{rf['with_communication']} px with communication"
    )
    if "memory" in out:
        m = Table(
            "block",
            "size",
            "in",
            "out",
            "values",
            "MB",
            "weights",
            title=f"Feature-map memory for training on {size[0]} x {size[1]}",
        )
        for r in out["memory"]:
            m.add_row(
                r["name"],
                str(r["size"]),
                str(r["in_channels"]),
                str(r["out_channels"]),
                f"{r['values']:,}",
                f"{r['megabytes']:.1f}",
                f"{r['weights']:,}",
            )
        console.print(m)
    if meta:
        names = ", ".join(k["name"] for k in meta["classes"])
        console.print(
            f"Classes: {names}; bands {meta['bands']}; subimage size {meta['subimage_size']}"
        )
        from .card import print_card

        print_card(meta["card"], model_path)
