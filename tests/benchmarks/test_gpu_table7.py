"""benchmarks/gpu_table7.py keeps running: its multi-device path on the CPU, at tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_table7.py"


def test_gpu_table7_runs_on_a_cpu_device_list(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu,cpu", "--size", "128",
         "--scene-size", "256", "--repeats", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = ("| configuration | devices | s per image | peak MB per GPU | Mpx/s "
              "| paper (Table VII) |")
    assert header in lines
    rows = [line for line in lines[lines.index(header) + 2 :] if line.startswith("| ")]
    expected = [f"| {what}, {n} dev | {devices} |"
                for what in ("128^2, 2x2, fp32", "256^2 streaming, bf16")
                for n, devices in ((1, "cpu"), (2, "cpu,cpu"), (4, "cpu,cpu,cpu,cpu"))]
    assert len(rows) == len(expected)
    for row, start in zip(rows, expected, strict=True):
        assert row.startswith(start), row
        assert "| n/a |" in row  # no CUDA memory figure on the CPU
    assert "0.0857 s / 2742 MB" in rows[0] and "0.0463 s / 739 MB" in rows[2]
