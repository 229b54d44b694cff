"""A fixed seed of the fuzzer (tests/fuzz_harness.py, issue 26): mutated GeoTIFFs, plain TIFFs,
checkpoints, classes files, areas of interest and requests through the real CLI. Each must
exit 0 with outputs that read back, or exit 1/2 with one `Error:` line and nothing left; no
traceback, no hang, no peak RSS above 2 GB. `benchmarks/fuzz.py --cases N --seed S` runs more."""

from __future__ import annotations

import fuzz_harness as fh
import fuzz_runner as fr
import pytest

pytest.importorskip("hypothesis")

CASES, SEED = 300, 26


def test_fuzzed_inputs_end_cleanly(tmp_path):
    corpus = fh.build_corpus(tmp_path / "corpus")
    cases = fh.draw_cases(CASES, SEED, tmp_path / "cases", corpus)
    assert len(cases) >= CASES * 0.95  # the draw itself works
    outcomes = fr.run_cases(cases, timeout_s=60, workers=2)
    kinds = {o.kind for o in outcomes}
    # The cases reach past the parsers: some succeed, some are refused cleanly.
    assert {"ok", "error"} <= kinds
    failed = [o for o in outcomes if not o.passed]
    assert not failed, fr.summary(outcomes)
