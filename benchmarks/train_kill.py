"""Crash consistency of `geoddu train`: SIGKILL at random moments, then `--resume`.

One uninterrupted run (`--deterministic`, the tiny synthetic DDU-Net of
tests/train/test_crash_consistency.py) gives the reference weights. Then, for each kill, a new
run of the same command is killed with SIGKILL at a random moment and resumed with the same
command plus `--resume` until it ends. The moments are drawn from all there are: mid-epoch
(after optimiser step N), inside the write of last.pt or best.pt (the temporary file holding its
first B bytes), a finished temporary file before its rename, just after a rename (between the
files of one epoch), inside the history's writes, the final test figures' update of best.pt,
and a plain timer (T seconds after the run started). The moments are reached exactly through
the hooks of tests/train/crash_harness.py (geoddu has none); a timer kill lands where it lands.

Printed per kill: the moment, the epoch in progress and the epoch lost (the one last.pt did not
yet hold), whether the resume ran to the end (exit 0, no temporary file, the history one row
per epoch) and whether the final last.pt and best.pt are bit-identical to the reference.

    python benchmarks/train_kill.py --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))

from crash_harness import (  # noqa: E402 - found through the path above
    history_rows,
    last_epoch,
    run_geoddu,
    same_weights,
    temporaries,
    train_args,
)

from geoddu.checkpoint import load_checkpoint  # noqa: E402
from geoddu.data.synthetic import write  # noqa: E402

EPOCHS = 5
STEPS = 3  # per epoch: 12 training patches in batches of 4


def moments(rng: random.Random, kills: int, best_writes: int, sizes: dict[str, int],
            seconds: float) -> list[str]:
    """`kills` moments: one inside the write of each checkpoint at least, the rest of any
    kind (writes of the checkpoints twice as likely as the others)."""
    files = ("last.pt", "best.pt", "history.json", "history.csv")

    def draw(kind: str, name: str | None = None) -> str:
        if kind == "step":
            return f"step:{rng.randint(1, EPOCHS * STEPS)}"
        if kind == "timer":
            return f"timer:{rng.uniform(0, seconds):.2f}"
        name = name or rng.choice(files[:2] if kind == "write" else files)
        n = rng.randint(1, best_writes if name == "best.pt" else EPOCHS)
        if kind == "write":
            return f"write:{name}:{n}:{rng.randint(1, int(sizes[name] * 0.9))}"
        return f"{kind}:{name}:{n}"

    out = [draw("write", "last.pt"), draw("write", "best.pt")][:kills]
    kinds = ("step", "timer", "write", "write", "rename", "renamed")
    out += [draw(rng.choice(kinds)) for _ in range(kills - len(out))]
    rng.shuffle(out)
    return out


def describe(moment: str) -> str:
    parts = moment.split(":")
    if parts[0] == "step":
        return f"after optimiser step {parts[1]} (epoch {(int(parts[1]) - 1) // STEPS + 1})"
    if parts[0] == "timer":
        return f"{parts[1]} s after the start"
    nth = f"write {parts[2]} of {parts[1]}"
    if parts[0] == "write":
        return f"inside {nth}, {parts[3]} bytes in"
    return f"{nth} complete, before its rename" if parts[0] == "rename" else \
        f"just after {nth} was renamed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the data and runs here [a new temporary folder]")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-train-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write(work / "k2", 2, train=12, val=6, test=6, seed=0)
    reference = work / "reference"
    t0 = time.monotonic()
    ref = run_geoddu(train_args(data, reference, EPOCHS, "--overwrite"))
    if ref.returncode != 0:
        print(ref.stderr)
        return 1
    started = next(i for i, e in enumerate(ref.events) if e.get("event") == "start")
    seconds = sum(float(e.get("seconds", 0)) for e in ref.events[started:]
                  if e.get("event") == "epoch")
    improved = [row["best"] == "True" for row in history_rows(reference)]
    # best.pt is written at each better epoch, and once more for the test figures when the
    # best epoch is not the last.
    best_writes = sum(improved) + (not improved[-1])
    sizes = {"last.pt": (reference / "last.pt").stat().st_size,
             "best.pt": (reference / "best.pt").stat().st_size,
             "history.json": (reference / "history.json").stat().st_size // EPOCHS,
             "history.csv": (reference / "history.csv").stat().st_size // EPOCHS}
    print(f"reference: {EPOCHS} epochs of {STEPS} steps, best epoch "
          f"{load_checkpoint(reference / 'best.pt')['training']['epochs_run']}, "
          f"{time.monotonic() - t0:.1f} s; seed {args.seed}, {args.kills} kills")
    print(f"{'#':>2}  {'moment':<24} {'where':<50} {'in progress':<11} {'lost':<8} "
          f"{'resume':<7} identical")
    bad = 0
    for i, moment in enumerate(moments(random.Random(args.seed), args.kills, best_writes,
                                       sizes, seconds), 1):
        run = work / f"kill-{i:02d}"
        cmd = train_args(data, run, EPOCHS, "--overwrite")
        if moment.startswith("timer:"):
            killed = run_geoddu(cmd, kill_after=float(moment.split(":")[1]))
        else:
            killed = run_geoddu(cmd, at=moment)
        if not killed.killed:  # a timer past the end of the run
            lost_text, in_progress = "-", "finished"
        else:
            in_progress = str(killed.epoch_in_progress)
            lost = killed.epoch_in_progress - last_epoch(run)
            lost_text = "none" if lost == 0 else f"epoch {killed.epoch_in_progress}"
            if lost > 1:
                lost_text += " (!)"
                bad += 1
        resumed = run_geoddu(train_args(data, run, EPOCHS, "--resume"))
        ok = (resumed.returncode == 0 and temporaries(run) == []
              and [r["epoch"] for r in history_rows(run)] ==
              [str(e) for e in range(1, EPOCHS + 1)])
        same = ok and same_weights(run / "last.pt", reference / "last.pt") and \
            same_weights(run / "best.pt", reference / "best.pt")
        bad += (not ok) + (not same)
        print(f"{i:>2}  {moment:<24} {describe(moment):<50} {in_progress:<11} {lost_text:<8} "
              f"{'ok' if ok else 'FAILED':<7} {'yes' if same else 'no'}")
        if not ok:
            print("    " + resumed.stderr.strip().replace("\n", "\n    ")[-2000:])
    verdict = (f"{bad} failures" if bad else "all resumed, at most the epoch in progress "
               "lost, final weights bit-identical")
    print(f"{args.kills} kills: {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
