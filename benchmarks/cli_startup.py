"""Start-up time of the `geoddu` command against importing torch alone.

`geoddu --version` (and every `--help`) should answer at once: the commands import torch,
rasterio and the engine only when they run. This times `python -m geoddu.cli --version` and
`python -c "import torch"`, each a fresh process, alternated so that both see the same machine
load, and prints the medians and their ratio (the goal: under 1/3). The wall time includes the
interpreter's own start-up, which is the floor for both.

    python benchmarks/cli_startup.py [--runs 9] [--command "--help"]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="Runs of each (alternated).")
    parser.add_argument("--command", default="--version",
                        help="Arguments to geoddu, e.g. '--help' or 'segment --help'.")
    args = parser.parse_args()
    geoddu = [sys.executable, "-m", "geoddu.cli", *shlex.split(args.command)]
    torch = [sys.executable, "-c", "import torch"]
    # One untimed run of each: the first start reads the files from disk, later ones from the
    # page cache, and a cold first run would only measure the disk.
    wall(geoddu)
    wall(torch)
    times: dict[str, list[float]] = {"geoddu": [], "torch": []}
    for _ in range(args.runs):
        times["geoddu"].append(wall(geoddu))
        times["torch"].append(wall(torch))
    g, t = statistics.median(times["geoddu"]), statistics.median(times["torch"])
    label = f"geoddu {args.command}"
    width = max(len(label), len("import torch"))
    print(f"{args.runs} runs each, alternated; wall time per process (median, min-max)")
    for name, key in ((label, "geoddu"), ("import torch", "torch")):
        ts = times[key]
        print(f"  {name:<{width}}  {statistics.median(ts) * 1000:7.0f} ms  "
              f"({min(ts) * 1000:.0f}-{max(ts) * 1000:.0f} ms)")
    verdict = "under" if g / t < 1 / 3 else "NOT under"
    print(f"  ratio {g / t:.3f} ({verdict} the 1/3 goal)")


if __name__ == "__main__":
    main()
