"""The precision probe (geoddu.precision_probe): the choice from timings (injected through the
`timer` parameter), the cache per machine, and a cache that is corrupt or cannot be written.
One test measures for real, on this machine's CPU."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from geoddu.errors import GeodduWarning
from geoddu.precision_probe import (
    CACHE_ENV,
    CACHE_FILE,
    MARGIN,
    cache_dir,
    cache_key,
    candidates,
    choose_precision,
    pick,
    probe_precision,
)


class Timings:
    """A timer that returns fixed seconds per run and counts how often it was asked."""

    def __init__(self, **seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def __call__(self, device, precisions):
        self.calls += 1
        return {p: self.seconds[p] for p in precisions if p in self.seconds}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _bf16_measured() -> bool:
    return "bf16" in candidates(torch.device("cpu"))[0]


def test_pick_never_takes_a_precision_slower_than_fp32_or_barely_faster():
    assert pick({"fp32": 1.0, "bf16": 1.5}) == "fp32"  # slower
    assert pick({"fp32": 1.0, "bf16": 1.0 / (MARGIN - 0.05)}) == "fp32"  # under the margin
    assert pick({"fp32": 1.0, "bf16": 1.0 / (MARGIN + 0.05)}) == "bf16"
    assert pick({"fp32": 1.0, "bf16": 0.5, "fp16": 0.4}) == "fp16"  # the fastest
    assert pick({"fp32": 1.0}) == "fp32"


@pytest.mark.skipif(not _bf16_measured(), reason="this CPU has no bf16 instructions")
def test_bf16_slower_than_fp32_gives_fp32_and_is_cached(cache):
    slow = Timings(fp32=0.010, bf16=0.015)
    probe = probe_precision("cpu", timer=slow)
    assert (probe.choice, probe.cached, slow.calls) == ("fp32", False, 1)
    assert probe.speedup["bf16"] == pytest.approx(2 / 3)
    stored = json.loads((cache / CACHE_FILE).read_text())
    [entry] = stored["entries"].values()
    assert entry["choice"] == "fp32" and entry["seconds"] == {"fp32": 0.010, "bf16": 0.015}
    assert entry["key"]["threads"] == torch.get_num_threads()
    assert entry["key"]["torch"] == torch.__version__

    # The cache answers from now on: the timer is not asked again, whatever it would say.
    fast = Timings(fp32=0.010, bf16=0.002)
    again = probe_precision("cpu", timer=fast)
    assert (again.choice, again.cached, fast.calls) == ("fp32", True, 0)
    assert choose_precision("cpu") == "fp32"
    # --refresh measures again and replaces the entry.
    assert probe_precision("cpu", timer=fast, refresh=True).choice == "bf16"
    assert fast.calls == 1
    assert choose_precision("cpu") == "bf16"


def test_another_thread_count_is_another_machine(cache):
    before = torch.get_num_threads()
    timer = Timings(fp32=0.01, bf16=0.02)
    try:
        torch.set_num_threads(1)
        probe_precision("cpu", timer=timer)
        torch.set_num_threads(2)
        probe_precision("cpu", timer=timer)
        probe_precision("cpu", timer=timer)
    finally:
        torch.set_num_threads(before)
    assert timer.calls == 2
    entries = json.loads((cache / CACHE_FILE).read_text())["entries"]
    assert sorted(e["key"]["threads"] for e in entries.values()) == [1, 2]


def _bad_entry(key: str) -> str:
    return json.dumps({"format": 1, "entries": {key: {"choice": "fp64", "seconds": {}}}})


@pytest.mark.parametrize("damage", [
    lambda key: "{not json",
    lambda key: '{"format": 1, "entries": ["a list"]}',
    _bad_entry,  # this machine's own entry, nonsense
], ids=["not-json", "not-entries", "bad-entry"])
def test_a_corrupt_cache_is_measured_again_with_one_warning(cache, damage):
    cache.mkdir()
    key = json.dumps(cache_key(torch.device("cpu")), sort_keys=True, separators=(",", ":"))
    (cache / CACHE_FILE).write_text(damage(key))
    timer = Timings(fp32=0.01, bf16=0.02)
    with pytest.warns(GeodduWarning, match="precision cache"):
        probe = probe_precision("cpu", timer=timer)
    assert (probe.choice, probe.cached, timer.calls) == ("fp32", False, 1)
    # Rewritten whole: the next run reads it.
    assert probe_precision("cpu", timer=timer).cached and timer.calls == 1
    # Damaged again in the same process: measured again, but not warned about twice.
    (cache / CACHE_FILE).write_text(damage(key))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe_precision("cpu", timer=timer).choice == "fp32"
    assert timer.calls == 2


def test_an_unwritable_cache_never_fails_a_run(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # A folder under a file cannot be made, even by root (a read-only folder can).
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    timer = Timings(fp32=0.01, bf16=0.005)
    with pytest.warns(GeodduWarning, match="cannot write the precision cache"):
        first = probe_precision("cpu", timer=timer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        second = probe_precision("cpu", timer=timer)
    assert first.choice == second.choice
    assert not second.cached and timer.calls == 2  # measured each time instead


def test_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "geoddu"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "geoddu"


def test_the_real_probe_on_this_cpu(cache):
    """Measured for real: fp32 and (where the CPU has it) a bf16 copy of the layers; the
    choice is fp32 or a precision at least MARGIN times faster than fp32 in that measurement."""
    probe = probe_precision("cpu")
    assert not probe.cached and probe.device == "cpu"
    expected = ["fp32", "bf16"] if _bf16_measured() else ["fp32"]
    assert list(probe.seconds) == expected
    assert all(s > 0 for s in probe.seconds.values())
    assert probe.skipped["fp16"] == "needs a CUDA device"
    if probe.choice != "fp32":
        assert probe.seconds["fp32"] / probe.seconds[probe.choice] >= MARGIN
    assert probe.gflops()["fp32"] == pytest.approx(probe.flops / probe.seconds["fp32"] / 1e9)
    again = probe_precision("cpu")
    assert again.cached and again.seconds == probe.seconds and again.choice == probe.choice
    json.dumps(again.to_dict())
