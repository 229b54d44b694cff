"""*Plugins > geoddu > Hardware and precision…*: what the engine's machine has and what each
precision does there, asked of the engine the settings choose (``engine.hardware()``: the same
report as ``geoddu info --hardware --json``) and written as plain text for a message box.

Plain Python (standard library only, no QGIS import), so that it can be tested on its own.
"""

from __future__ import annotations

from .discovery import find_engine

TITLE = "geoddu: Hardware and precision"


def ask_engine(engine_settings: dict, model: str | None = None,
               refresh: bool = False) -> tuple[str, dict]:
    """(the engine's description, its hardware report) for the engine ``engine_settings``
    (keyword arguments of :func:`.discovery.find_engine`) chooses. Raises ``EngineError``."""
    engine = find_engine(**engine_settings)
    return engine.description, engine.hardware(model=model, refresh=refresh)


def describe(report: dict, engine: str = "") -> str:
    """The report as lines of text: the machine, the probe per device, what auto picks."""
    m = report["machine"]
    cpu = m["cpu"]
    build = f"CUDA {m['torch_cuda']} build" if m.get("torch_cuda") else "CPU build"
    lines = []
    if engine:
        lines.append(f"Engine: {engine}")
    lines.append(f"geoddu {m['geoddu']}, torch {m['torch']} ({build}), Python {m['python']}")
    lines += [
        "",
        f"CPU: {cpu['model']}",
        f"  {_count(cpu['physical_cores'])} cores, {_count(cpu['logical_threads'])} threads "
        f"({_count(cpu['usable_threads'])} usable); torch uses {cpu['torch_threads']}",
        f"  bf16 instructions: {_support(cpu['bf16'], cpu['bf16_flags'])}",
        f"  int8 instructions: {_support(cpu['int8'], cpu['int8_flags'])}",
        "",
    ]
    if m["cuda"]:
        lines.append("CUDA devices:")
        for d in m["cuda"]:
            lines.append(f"  cuda:{d['index']} {d['name']}, {d['memory_bytes'] / 2**30:.1f} GiB, "
                         f"compute capability {d['capability']}, "
                         f"bf16 {'yes' if d['bf16'] else 'no'}")
    else:
        lines.append("CUDA devices: none")
    lines.append("")
    for probe in report["probes"]:
        lines.append(f"Precision probe on {probe['device']} ({probe['workload']}):")
        for precision, seconds in probe["seconds"].items():
            lines.append(f"  {precision}: {seconds * 1e3:.1f} ms, "
                         f"{probe['gflops'][precision]:.0f} GFLOP/s, "
                         f"{probe['speedup'][precision]:.2f}x fp32")
        for precision, why in probe["skipped"].items():
            lines.append(f"  {precision}: not measured ({why})")
        when = "from the cache" if probe["cached"] else "measured now"
        lines.append(f"  Auto precision: {probe['choice']} ({when}; a reduced precision only "
                     f"when at least {probe['margin']}x faster than fp32)")
    for run in report.get("checkpoint", []):
        rates = ", ".join(f"{p} {r:.3g}" for p, r in run["mpx_per_s"].items())
        lines.append(f"{run['path']} on {run['device']}: Mpx/s {rates}")
    if m.get("notes"):
        lines.append("")
        lines += [f"Note: {note}" for note in m["notes"]]
    return "\n".join(lines)


def _count(value) -> str:
    return "?" if value is None else str(value)


def _support(answer: str, flags: list) -> str:
    return f"{answer} ({', '.join(flags)})" if flags else answer
