"""The precision probe behind `--precision auto`, measured several times from scratch: how
long one probe takes, how much its figures vary on this machine, and whether its choice holds.

Each run measures again (a cache of its own, emptied), in this process, with torch's current
thread count. With --model, the checkpoint's Mpx/s per precision follows (the figures of
`geoddu info --hardware -m`), to compare the probe's choice with the model's own speed-up.

    python benchmarks/precision_probe.py [--runs 5] [--threads N] [--model model.pt]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from geoddu.model_throughput import checkpoint_throughput
from geoddu.precision_probe import MARGIN, probe_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Probes, each measured afresh.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--model", default=None, help="Also time this checkpoint.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s); choice: the fastest at least {MARGIN}x faster than fp32, else fp32")
    seconds: dict[str, list[float]] = {}
    choices, walls = [], []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(args.runs):
            start = time.perf_counter()
            probe = probe_precision(args.device, refresh=True, cache=cache)
            walls.append(time.perf_counter() - start)
            choices.append(probe.choice)
            for p, s in probe.seconds.items():
                seconds.setdefault(p, []).append(s)
    print(f"workload: {probe.workload}; skipped: {probe.skipped or 'none'}")
    for p, ts in seconds.items():
        ms = [t * 1e3 for t in ts]
        gflops = probe.flops / statistics.median(ts) / 1e9
        print(f"  {p:5} {statistics.median(ms):7.1f} ms per run (median; {min(ms):.1f}-"
              f"{max(ms):.1f}), {gflops:.0f} GFLOP/s, "
              f"{statistics.median(seconds['fp32']) / statistics.median(ts):.2f}x fp32")
    print(f"  probe wall time {statistics.median(walls):.2f} s (median; {min(walls):.2f}-"
          f"{max(walls):.2f}); choices {choices}")
    if args.model:
        timed = checkpoint_throughput(args.model, args.device)
        size = "x".join(map(str, timed["size"]))
        base = timed["mpx_per_s"]["fp32"]
        for p, rate in timed["mpx_per_s"].items():
            print(f"  {args.model} {size}: {p:5} {rate:.3f} Mpx/s ({rate / base:.2f}x fp32)")


if __name__ == "__main__":
    main()
