"""Crash-consistent training: `geoddu train` killed with SIGKILL at chosen moments (mid-epoch,
inside the writes of last.pt and best.pt, between the files of one epoch) resumes every time,
loses at most the epoch in progress, and with --deterministic ends with the weights of a run
that was never killed, bit for bit. A full disk while last.pt is written leaves the previous
one readable and stops with one `Error:` line. benchmarks/train_kill.py kills at 20 random
moments the same way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from crash_harness import (
    HERE,
    history_rows,
    last_epoch,
    run_geoddu,
    same_weights,
    temporaries,
    train_args,
)

from geoddu.checkpoint import load_checkpoint
from geoddu.data.synthetic import write
from geoddu.train.determinism import deterministic_mode

EPOCHS = 5  # of 3 steps each (12 training patches, batches of 4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write(tmp_path_factory.mktemp("data") / "k2", 2, train=12, val=6, test=6, seed=0)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The run never killed."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = run_geoddu(train_args(data, run, EPOCHS))
    assert done.returncode == 0, done.stderr
    return run


def _killed(data, run, at, *, resume=True):
    """`geoddu train` (with --resume) killed at `at`; checks that it got there and that the
    run lost at most the epoch it was in."""
    out = run_geoddu(train_args(data, run, EPOCHS, *(["--resume"] if resume else [])), at=at)
    assert out.killed and out.paused is not None, (at, out.returncode, out.stderr[-2000:])
    lost = out.epoch_in_progress - last_epoch(run)
    assert lost in (0, 1), (at, out.epoch_in_progress, last_epoch(run))
    return out


def _best_epoch(run):
    return load_checkpoint(run / "best.pt")["training"]["epochs_run"]


def test_killed_at_any_moment_resumes_to_the_same_weights(data, reference, tmp_path):
    improved = [row["best"] == "True" for row in history_rows(reference)]
    run = tmp_path / "run"
    # In epoch 1, before any last.pt: --resume with the run's command line starts it again.
    first = _killed(data, run, "step:2", resume=False)
    assert first.epoch_in_progress == 1 and not (run / "last.pt").exists()
    # After last.pt of epoch 2 is in place, before best.pt and the history follow it.
    _killed(data, run, "renamed:last.pt:2")
    assert last_epoch(run) == 2 and len(history_rows(run)) == 1
    if improved[1]:
        assert _best_epoch(run) == 1
    # Inside the write of last.pt (epoch 3): half a temporary file, last.pt of epoch 2 intact.
    # The resume first repaired what lagged behind last.pt: best.pt and the history.
    inside = _killed(data, run, "write:last.pt:1:20000")
    assert inside.epoch_in_progress == 3 and last_epoch(run) == 2
    assert any(name.startswith(".last.pt.") for name in temporaries(run))
    assert [row["epoch"] for row in history_rows(run)] == ["1", "2"]
    if improved[1]:
        assert _best_epoch(run) == 2 and same_weights(run / "best.pt", run / "last.pt")
    # Inside the write of best.pt (epoch 3 improved) or of the history (it did not). Which one
    # depends on the CPU's floating point (the reference is trained here). A resumed process
    # writes the history once before it trains (the repair), so epoch 3's is its second write.
    at = "write:best.pt:1:5000" if improved[2] else "write:history.json:2:10"
    _killed(data, run, at)
    assert last_epoch(run) == 3
    # Mid-epoch 4 of a resumed run.
    _killed(data, run, "step:2")
    assert last_epoch(run) == 3
    # After the last epoch's last.pt, before the history and (best.pt being older) the test
    # figures in best.pt's card: the resume has no epoch left to run, and finishes both.
    _killed(data, run, "renamed:last.pt:2")
    assert last_epoch(run) == EPOCHS and len(history_rows(run)) == EPOCHS - 1
    done = run_geoddu(train_args(data, run, EPOCHS, "--resume"))
    assert done.returncode == 0, done.stderr
    assert same_weights(run / "last.pt", reference / "last.pt")
    assert same_weights(run / "best.pt", reference / "best.pt")
    rows, ref_rows = history_rows(run), history_rows(reference)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in ref_rows]
    assert json.loads((run / "history.json").read_text())[-1]["epoch"] == EPOCHS
    assert temporaries(run) == []
    # best.pt's card holds the test figures, as the reference's does.
    card = load_checkpoint(run / "best.pt")["card"]["test"]
    assert card == load_checkpoint(reference / "best.pt")["card"]["test"]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), stderr
    return lines[0]


def test_a_full_disk_keeps_the_previous_checkpoint(data, reference, tmp_path):
    """The file system fails the write of last.pt (ENOSPC after 16 kB, as a full disk does,
    simulated where no small file system can be mounted): the run stops with one line naming
    the full disk, last.pt of the epoch before stays readable, no temporary file is left, and
    with room again the run resumes."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    args = train_args(data, run, EPOCHS + 1, "--resume", events=False)
    full = run_geoddu(args, enospc="last.pt:1:16384")
    assert full.returncode == 1
    assert "No space left on device" in _one_error_line(full.stderr)
    assert "last.pt" in full.stderr
    assert last_epoch(run) == EPOCHS and temporaries(run) == []
    assert same_weights(run / "last.pt", reference / "last.pt")
    again = run_geoddu(args)
    assert again.returncode == 0, again.stderr
    assert last_epoch(run) == EPOCHS + 1


def _tmpfs_works() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_works(), reason="no unprivileged user and mount namespaces here "
                                               "to mount a small tmpfs")
def test_a_really_full_tmpfs_keeps_the_previous_checkpoint(data, reference, tmp_path):
    """The same on a real full file system: a 1 MiB tmpfs in a user and mount namespace."""
    mount, out = tmp_path / "mnt", tmp_path / "report.json"
    mount.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); import crash_harness as h; "
            f"h.tmpfs_full_disk({str(data)!r}, {str(reference)!r}, {str(mount)!r}, "
            f"{str(out)!r}, {EPOCHS + 1})")
    res = subprocess.run(["unshare", "-Urm", "sh", "-c",
                          'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -c "$3"', "sh",
                          str(mount), sys.executable, code],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["returncode"] == 1
    line = _one_error_line(report["stderr"])
    assert "No space left on device" in line and "last.pt" in line, line
    assert report["last_epoch"] == EPOCHS and report["temporaries"] == []
    assert report["again_returncode"] == 0, report["again_stderr"]
    assert report["again_last_epoch"] == EPOCHS + 1


def test_deterministic_mode_puts_the_settings_back():
    """The Python API may train inside a program that does other work."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    with deterministic_mode(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
