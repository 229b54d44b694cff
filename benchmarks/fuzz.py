"""Fuzz every file geoddu reads through the real CLI; print counts per target and outcome.

    python benchmarks/fuzz.py --cases 1000 --seed 1 [--targets geotiff checkpoint ...]
        [--workers 2] [--timeout 60] [--keep DIR]

The cases, the mutations and the verdicts are in tests/fuzz_harness.py; CI runs a fixed seed of
a few hundred (tests/cli/test_fuzz.py). Every failure found becomes a row of the fault table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_harness as fh  # noqa: E402
import fuzz_runner as fr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="+", default=list(fh.TARGETS), choices=fh.TARGETS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a case may run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the cases in this folder")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="geoddu-fuzz-"))
    t = time.perf_counter()
    corpus = fh.build_corpus(root / "corpus")
    cases = fh.draw_cases(args.cases, args.seed, root / "cases", corpus, args.targets)
    made = time.perf_counter() - t
    outcomes = fr.run_cases(cases, timeout_s=args.timeout, workers=args.workers)
    print(f"seed {args.seed}: {len(cases)} cases drawn in {made:.1f} s, run in "
          f"{time.perf_counter() - t - made:.1f} s with {args.workers} workers\n")
    print(fr.summary(outcomes))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if any(not o.passed for o in outcomes) else 0)


if __name__ == "__main__":
    main()
