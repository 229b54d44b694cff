"""Run a command under a hard memory limit: a memory cgroup (v1 or v2) where this process may
make one, else ``prlimit --as``. Used by ``tests/engine/test_memory_limit.py`` and
``benchmarks/memory_limit.py``.

A cgroup limits what the run holds (its resident memory and its page cache, which the kernel
reclaims first): past it, the kernel kills the process. ``prlimit --as`` limits address space
instead, which torch reserves far beyond what it touches, so it needs slack and proves less.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

_V1 = Path("/sys/fs/cgroup/memory")
_V2 = Path("/sys/fs/cgroup")


@dataclass
class Limited:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float  # the process's own peak resident memory (ru_maxrss)
    peak_charged_mb: float | None  # the cgroup's peak (RSS + page cache), where one was used
    how: str  # "cgroup v1", "cgroup v2", "prlimit --as" or "none"
    seconds: float


def _cgroup_root() -> tuple[Path, str] | None:
    """A folder under which a memory cgroup can be made, and its version."""
    for root, version, probe in ((_V1, "v1", "memory.limit_in_bytes"),
                                 (_V2, "v2", "memory.max")):
        if not root.is_dir():
            continue
        test = root / f"geoddu-probe-{uuid.uuid4().hex[:8]}"
        try:
            test.mkdir()
        except OSError:
            continue
        try:
            if (test / probe).exists():
                return root, version
        finally:
            test.rmdir()
    return None


def hard_limit_available() -> str | None:
    """How a hard limit would be applied here, or None."""
    found = _cgroup_root()
    if found:
        return f"cgroup {found[1]}"
    return "prlimit --as" if shutil.which("prlimit") else None


# Between this process and the command: it joins the cgroup, starts the command, and reports
# the command's own peak. A child forked from a large process (pytest, with torch loaded)
# inherits the parent's peak in ru_maxrss across exec; one started from this small wrapper
# reports its own.
_WRAPPER = r"""
import os, subprocess, sys
procs, report, *cmd = sys.argv[1:]
if procs:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
p = subprocess.Popen(cmd)
_, status, usage = os.wait4(p.pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_limited(cmd: list[str], limit_bytes: int, timeout: float = 3600,
                as_slack_bytes: int = 6 * 2**30, env: dict | None = None) -> Limited:
    """``cmd`` under ``limit_bytes``; its exit status, output and peaks."""
    found = _cgroup_root()
    group: Path | None = None
    how = "none"
    procs = ""
    if found:
        root, version = found
        group = root / f"geoddu-limit-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        group.mkdir()
        how = f"cgroup {version}"
        if version == "v1":
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = group / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(limit_bytes))
                except OSError:
                    pass
        else:
            (group / "memory.max").write_text(str(limit_bytes))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        procs = str(group / "cgroup.procs")
    elif shutil.which("prlimit"):
        cmd = ["prlimit", f"--as={limit_bytes + as_slack_bytes}", *cmd]
        how = "prlimit --as"
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        try:
            r = subprocess.run([sys.executable, "-c", _WRAPPER, procs, str(report), *cmd],
                               capture_output=True, text=True, env=env, timeout=timeout)
            code, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = -9, str(exc.stdout or ""), str(exc.stderr or "")
        seconds = time.perf_counter() - t
        rss = float("nan")
        if report.exists():  # else the wrapper itself was killed
            status, maxrss = report.read_text().split()
            code, rss = int(status), int(maxrss) / 1024
    charged = None
    if group is not None:
        name = "memory.max_usage_in_bytes" if how.endswith("v1") else "memory.peak"
        try:
            charged = int((group / name).read_text()) / 2**20
        except (OSError, ValueError):
            charged = None
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return Limited(code, out, err, rss, charged, how, seconds)
