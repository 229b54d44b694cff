"""`geoddu info --hardware`: what the machine has, what each precision does on it and the installed
versions beside the release pins, printed
from :func:`geoddu.hardware_report.hardware_report` (the dict `--json` prints as it is)."""

from __future__ import annotations

import json
import os
from typing import Any

import click


def print_hardware(device: str | None, model: str | None, refresh: bool, as_json: bool) -> None:
    from rich.console import Console

    from geoddu.hardware_report import hardware_report

    if as_json:
        click.echo(json.dumps(hardware_report(device, model, refresh), indent=2))
        return
    what = "Timing the checkpoint in each precision" if model else "Measuring each precision"
    with Console(stderr=True).status(f"{what}…"):
        report = hardware_report(device, model, refresh)
    show(report, Console())


def show(report: dict[str, Any], console: Any) -> None:
    """The report as rich tables on ``console``."""
    from rich.table import Table

    m = report["machine"]
    cpu = m["cpu"]
    build = f"CUDA {m['torch_cuda']} build" if m["torch_cuda"] else "CPU build"
    console.print(f"[bold]geoddu {m['geoddu']}[/bold], torch {m['torch']} ({build}), "
                  f"Python {m['python']}, {m['platform']}")

    t = Table("", "", title="CPU", show_header=False)
    t.add_row("model", cpu["model"])
    t.add_row("cores / threads", f"{_n(cpu['physical_cores'])} physical, "
                                 f"{_n(cpu['logical_threads'])} logical, "
                                 f"{_n(cpu['usable_threads'])} usable by this process")
    t.add_row("torch threads", str(cpu["torch_threads"]))
    t.add_row("torch SIMD level", cpu["torch_capability"])
    t.add_row("bf16 instructions", _support(cpu["bf16"], cpu["bf16_flags"]))
    t.add_row("int8 instructions", _support(cpu["int8"], cpu["int8_flags"]))
    console.print(t)

    if m["cuda"]:
        g = Table("device", "name", "memory", "compute capability", "bf16", title="CUDA devices")
        for d in m["cuda"]:
            g.add_row(f"cuda:{d['index']}", d["name"], f"{d['memory_bytes'] / 2**30:.1f} GiB",
                      d["capability"], "yes" if d["bf16"] else "no")
        console.print(g)
    else:
        console.print("CUDA devices: none")

    p = Table("device", "precision", "ms per run", "GFLOP/s", "vs fp32",
              title="Precision probe")
    for probe in report["probes"]:
        for precision, seconds in probe["seconds"].items():
            p.add_row(probe["device"], precision, f"{seconds * 1e3:.1f}",
                      f"{probe['gflops'][precision]:.0f}", f"{probe['speedup'][precision]:.2f}x")
    console.print(p)
    if report["probes"]:
        console.print(f"Workload: {report['probes'][0]['workload']}")
    for probe in report["probes"]:
        for precision, why in probe["skipped"].items():
            console.print(f"{probe['device']} {precision}: not measured ({why})")
        where = (f"cached, measured {probe['measured_at']}" if probe["cached"]
                 else f"measured now in {probe['probe_seconds']:.2f} s")
        console.print(f"[bold]--precision auto on {probe['device']}: {probe['choice']}[/bold] "
                      f"(the fastest at least {probe['margin']}x faster than fp32, else fp32; "
                      f"{where})")
    console.print(f"Probe cache: {report['cache']} (--refresh measures again)")

    for run in report.get("checkpoint", []):
        size = "x".join(map(str, run["size"]))
        c = Table("precision", "Mpx/s", "vs fp32",
                  title=f"{os.path.basename(run['path'])} on {run['device']} ({size} px image)")
        base = run["mpx_per_s"].get("fp32")
        for precision, rate in run["mpx_per_s"].items():
            c.add_row(precision, f"{rate:.3g}", f"{rate / base:.2f}x" if base else "-")
        console.print(c)

    _show_versions(report["versions"], console)
    for note in m["notes"]:
        console.print(f"Note: {note}")


def _show_versions(versions: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    if versions.get("error"):
        console.print(f"Pinned versions: {versions['constraints']}: {versions['error']}")
        return
    t = Table("package", "installed", "pinned", "", title=f"Versions ({versions['constraints']})")
    for row in versions["packages"]:
        t.add_row(row["name"], row["installed"] or "-", row["pinned"], row["status"])
    console.print(t)


def _n(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _support(answer: str, flags: list[str]) -> str:
    return f"{answer} ({', '.join(flags)})" if flags else answer
