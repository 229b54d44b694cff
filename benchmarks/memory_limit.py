"""`geoddu segment --memory-limit`: the limit, the plan it chose, and the peak RSS measured.

Each limit is one `geoddu segment` process on the same scene; its peak RSS is the child's
`ru_maxrss`. With `--enforce`, the process also runs held to the limit: in a memory cgroup at
the limit where one can be made (resident memory and page cache; past the limit the kernel kills the
process), else under `prlimit --as` at the limit plus the address space torch reserves
without using it (`--as-slack`). The run must still end with exit 0 (or one `Error:` line).

    python benchmarks/memory_limit.py [--size 32768] [--limits 2G 1G 700M] [--enforce]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import make_checkpoint, make_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from memory_cgroup import run_limited  # noqa: E402

from geoddu.sizes import parse_bytes  # noqa: E402

GEODDU = [sys.executable, "-m", "geoddu.cli"]


def plan_line(scene: Path, model: Path, limit: str | None) -> str:
    extra = ["--memory-limit", limit] if limit else []
    r = subprocess.run([*GEODDU, "segment", "--plan", "-o", str(scene.with_suffix(".map.tif")),
                        "-m", str(model), *extra, str(scene)], capture_output=True, text=True)
    if r.returncode:
        return r.stderr.strip().splitlines()[-1]
    schedule = re.search(r"^schedule\s+(.*)$", r.stdout, re.M)
    host = re.search(r"^\s*host: (.*)$", r.stdout, re.M)
    return f"{schedule.group(1) if schedule else '?'}; estimate {host.group(1) if host else '?'}"


def run(scene: Path, model: Path, limit: str | None, enforce: bool, slack: str) -> tuple:
    out = scene.with_suffix(".map.tif")
    cmd = [*GEODDU, "segment", "-q", "--overwrite", "-o", str(out), "-m", str(model), str(scene)]
    if limit:
        cmd[4:4] = ["--memory-limit", limit]
    # With --enforce the run is held to the limit itself (a cgroup: past it the kernel kills
    # the process); without, to the machine's memory.
    hard = parse_bytes(limit) if (enforce and limit) else 2**62
    r = run_limited(cmd, hard, as_slack_bytes=parse_bytes(slack))
    lines = r.stderr.strip().splitlines()
    how = r.how if (enforce and limit) else "-"
    return r.returncode, (lines or [""])[-1], r.seconds, r.peak_rss_mb, r.peak_charged_mb, how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--limits", nargs="+", default=["2G", "1G", "700M"])
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--subimage-size", type=int, default=512)
    ap.add_argument("--enforce", action="store_true", help="also run under prlimit --as")
    ap.add_argument("--as-slack", default="6G",
                    help="address space beyond the limit for --enforce (torch reserves more "
                         "virtual memory than it touches)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-memlimit-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    model = make_checkpoint(work / "model.pt", "DDU-Net(4,64,Y)", args.base_channels,
                            args.subimage_size)
    print(f"scene {args.size}^2 3-band uint8, DDU-Net(4,64,Y) base {args.base_channels}, "
          f"{args.subimage_size}^2 subimages; {os.cpu_count()} CPUs")
    print("| --memory-limit | plan | held by | exit | peak RSS (MiB) | cgroup peak (MiB) | "
          "time (s) |")
    print("|---|---|---|---|---|---|---|")
    for limit in sorted(args.limits, key=lambda x: -_bytes(x)):
        plan = plan_line(scene, model, limit)
        code, last, seconds, peak, charged, how = run(scene, model, limit, args.enforce,
                                                      args.as_slack)
        shown = "ok" if code == 0 else f"{code}: {last[:80]}"
        cg = f"{charged:.0f}" if charged is not None else "-"
        print(f"| {limit} | {plan} | {how} | {shown} | {peak:.0f} | {cg} | {seconds:.1f} |",
              flush=True)


def _bytes(text: str) -> int:
    return parse_bytes(text)


if __name__ == "__main__":
    main()
