"""benchmarks/train_step.py keeps running, bf16 sides included, at a tiny size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "train_step.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--size", "64", "--depth", "2",
                           "--features", "8", "--base", "4", "--grids", "2", "--steps", "1",
                           "--warmup", "0", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300)


def test_bf16_sides_print_their_ratios():
    out = _run("--sides", "geoddu@bf16", "geoddu:stacked@bf16", "geoddu", "reference")
    assert out.returncode == 0, out.stderr
    ratios = dict(re.findall(r"^2x2: ratio (\S+) (\d+\.\d\d)$", out.stdout, re.MULTILINE))
    assert set(ratios) == {"geoddu@bf16/geoddu", "geoddu@bf16/reference",
                           "geoddu:stacked@bf16/reference"}, out.stdout
    assert all(float(r) > 0 for r in ratios.values())
    bad = _run("--sides", "geoddu@fp16", "reference")
    assert bad.returncode == 2 and "'geoddu@fp16' is not" in bad.stderr
