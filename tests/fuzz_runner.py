"""Running fuzz cases (``fuzz_harness`` draws them) through the real CLI and judging them.

Worker processes call the CLI's entry point in-process, one case after another, so thousands
fit in minutes; the parent watches them. A case passes when it

* exits 0 and every output it names reads back in full, or
* exits 1 or 2 with one ``Error:`` line on stderr (after any ``Warning:`` lines) and nothing
  left in its output folder;

it fails on a traceback, any other stderr line, another exit status, a hang longer than the
timeout, a peak RSS above the limit, or files left behind.
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGETS = ("geotiff", "tiff", "checkpoint", "classes", "aoi", "segment-request",
           "train-request")
RSS_LIMIT_MB = 2048
# Cases one worker runs before it is replaced. A worker stands in for one `geoddu` process per
# case, but keeps what torch never hands back (~2.6 MB per distinct checkpoint traced, see
# geoddu/models/frozen_cpu.py), which a user's single run does not carry.
CASES_PER_WORKER = 250


@dataclass
class Case:
    id: int
    target: str
    how: str  # the mutation, for the report
    argv: list[str]
    folder: str  # the case's own folder: its input and its out/ folder
    outputs: list[str]  # what a successful run must have written (relative to folder)


@dataclass
class Outcome:
    case: Case
    kind: str  # "ok", "error" (a clean failure) or the failure: traceback, lines, ...
    code: object = None
    stderr: str = ""
    seconds: float = 0.0
    rss_mb: float = 0.0
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.kind in ("ok", "error")


def run_cases(cases: list[Case], timeout_s: float = 60.0, rss_limit_mb: float = RSS_LIMIT_MB,
              workers: int = 1, env: dict | None = None) -> list[Outcome]:
    """Each case through the CLI in worker processes; a hung worker is killed and replaced."""
    todo = collections.deque(cases)
    outcomes: dict[int, Outcome] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    by_id = {c.id: c for c in cases}

    def start() -> tuple[subprocess.Popen, float, int | None]:
        p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
                             cwd=str(Path(__file__).parent))
        return p

    procs: list[dict] = []
    for _ in range(max(1, min(workers, len(cases)))):
        procs.append({"p": start(), "case": None, "since": 0.0})
    while todo or any(w["case"] is not None for w in procs):
        for w in procs:
            if w["case"] is None and todo:
                case = todo.popleft()
                w["case"], w["since"] = case, time.monotonic()
                w["p"].stdin.write(json.dumps(asdict(case)) + "\n")
                w["p"].stdin.flush()
        busy = [w for w in procs if w["case"] is not None]
        ready, _, _ = select.select([w["p"].stdout for w in busy], [], [], 0.5)
        for w in busy:
            if w["p"].stdout in ready:
                line = w["p"].stdout.readline()
                if not line:  # the worker died (a crash in native code, or killed)
                    outcomes[w["case"].id] = Outcome(w["case"], "worker died",
                                                     detail=f"exit {w['p'].wait()}")
                    w["p"], w["case"] = start(), None
                    continue
                r = json.loads(line)
                o = Outcome(by_id[r["id"]], "", r["code"], r["stderr"], r["seconds"],
                            r["rss_mb"])
                judge(o, rss_limit_mb)
                outcomes[o.case.id] = o
                w["case"] = None
                w["ran"] = w.get("ran", 0) + 1
                if o.rss_mb > rss_limit_mb or w["ran"] >= CASES_PER_WORKER:
                    w["p"].kill()
                    w["p"].wait()
                    w["p"], w["ran"] = start(), 0
            elif time.monotonic() - w["since"] > timeout_s:
                w["p"].kill()
                w["p"].wait()
                outcomes[w["case"].id] = Outcome(w["case"], "hang",
                                                 detail=f"no exit within {timeout_s:.0f} s")
                w["p"], w["case"] = start(), None
    for w in procs:
        w["p"].stdin.close()
        w["p"].wait()
    return [outcomes[c.id] for c in cases]


def judge(o: Outcome, rss_limit_mb: float) -> None:
    """The verdict on one finished case (see the module's docstring)."""
    folder = Path(o.case.folder)
    left = sorted(str(p.relative_to(folder)) for p in (folder / "out").rglob("*"))
    lines = [x for x in o.stderr.splitlines() if x.strip()]
    if o.rss_mb > rss_limit_mb:
        o.kind, o.detail = "memory", f"peak RSS {o.rss_mb:.0f} MB"
    elif o.code == "traceback":
        o.kind = "traceback"
    elif o.code == 0:
        outputs = o.case.outputs
        if outputs == ["*"]:
            outputs = [str(p.relative_to(folder)) for p in (folder / "out").rglob("*")
                       if p.suffix in (".tif", ".pt")]
        bad = [p for p in outputs if not readable(folder / p)]
        o.kind = "unreadable output" if bad else "ok"
        o.detail = ", ".join(bad)
        others = [x for x in lines if not x.startswith("Warning: ")]
        if others and o.kind == "ok":
            o.kind, o.detail = "stderr lines", others[0][:200]
    elif o.code in (1, 2):
        errors = [x for x in lines if x.startswith("Error: ")]
        others = [x for x in lines if not x.startswith(("Error: ", "Warning: "))]
        if len(errors) != 1 or others or not lines[-1].startswith("Error: "):
            o.kind, o.detail = "stderr lines", (others or lines or ["(none)"])[0][:200]
        elif left:
            o.kind, o.detail = "left behind", ", ".join(left)[:200]
        else:
            o.kind = "error"
    else:
        o.kind, o.detail = f"exit {o.code}", (lines or [""])[-1][:200]


def readable(path: Path) -> bool:
    """The output reads back in full: every band of a raster, every tensor of a checkpoint."""
    if not path.exists():
        return False
    try:
        if path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
            return True
        import rasterio

        with rasterio.open(path) as ds:
            ds.read()
        return True
    except Exception:  # noqa: BLE001 - any failure to read back is the finding
        return False


# One worker: cases in on stdin, one JSON line each out. The CLI runs in this process through
# click's entry point, as `geoddu` would run it, with stderr captured per case.
WORKER = r"""
import io, json, os, resource, sys, time, traceback, warnings, logging
from contextlib import redirect_stderr, redirect_stdout
out = os.fdopen(os.dup(1), "w", buffering=1)
from geoddu.cli import native_stderr
from geoddu.cli.main import cli
native_stderr.capture()  # as the CLI does: what C libraries print to fd 2 is kept aside
def reset_peak():
    # Each case's own peak, as its own process would have had (Linux: clear_refs 5 resets
    # VmHWM); elsewhere the worker's peak so far, which can only overstate.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
def peak_mb():
    try:
        with open("/proc/self/status") as f:
            for row in f:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for line in sys.stdin:
    case = json.loads(line)
    os.chdir(case["folder"])  # request files name their paths relative to it
    reset_peak()
    err = io.StringIO()
    t = time.perf_counter()
    with redirect_stderr(err), redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("default")  # as in a fresh process: each warning shown once
        try:
            cli.main(args=case["argv"], prog_name="geoddu", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            code = "traceback"
            err.write(traceback.format_exc())
    rss = peak_mb()
    out.write(json.dumps({"id": case["id"], "code": code, "stderr": err.getvalue(),
                          "seconds": time.perf_counter() - t, "rss_mb": rss}) + "\n")
"""


def summary(outcomes: list[Outcome]) -> str:
    """Counts per target and outcome, then every failure with its case."""
    table = collections.Counter((o.case.target, o.kind) for o in outcomes)
    kinds = sorted({k for _, k in table}, key=lambda k: (k not in ("ok", "error"), k))
    rows = ["| target | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for t in TARGETS:
        if any(tt == t for tt, _ in table):
            rows.append(f"| {t} | " + " | ".join(str(table[(t, k)]) for k in kinds) + " |")
    bad = [o for o in outcomes if not o.passed]
    rows.append(f"\n{len(outcomes)} cases, {len(bad)} failed; slowest "
                f"{max((o.seconds for o in outcomes), default=0):.1f} s, peak RSS "
                f"{max((o.rss_mb for o in outcomes), default=0):.0f} MB")
    for o in bad:
        rows.append(f"- case {o.case.id} [{o.case.target}] {o.case.how}: {o.kind}: {o.detail}"
                    f"\n    geoddu {' '.join(o.case.argv)}\n    "
                    + "\n    ".join(o.stderr.strip().splitlines()[-6:]))
    return "\n".join(rows)

