"""Many jobs at once (issue 26): eight real `geoddu segment` processes started together on this
machine's few cores, sharing one --scratch folder, some one input, some one output folder, and
two pairs racing for the same output path.

Every job with a path of its own writes the pixels of the same job run alone. Of each pair on
one path exactly one wins with its own result; the other exits 1 with the one documented line
("exists; pass --overwrite") and leaves nothing. No temporary file is left in any output
folder, the scratch folder is empty, and a dead process's temporary file in the shared folder
is gone (docs/reliability.md, "Many jobs at once").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import make_checkpoint, rank_env, write_geotiff

import geoddu
from geoddu.io.atomic import TEMP_MARKER

GEODDU = [sys.executable, "-m", "geoddu.cli", "segment", "-q"]
RACE_LINE = "exists; pass --overwrite to replace it"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _temps(*folders: Path) -> list[str]:
    return sorted(str(p) for d in folders for p in d.rglob(f"*{TEMP_MARKER}*"))


def _dead_pid() -> int:
    """The id of a process that has ended (its temporary files are fair game)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(26)
    tiles = dict(tiled=True, blockxsize=64, blockysize=64)
    for name, size in (("a", (256, 256)), ("b", (256, 256)), ("c", (192, 256))):
        write_geotiff(d / f"{name}.tif", rng.integers(0, 255, (3, *size), np.uint8), **tiles)
    make_checkpoint(d / "model.pt")
    for sub in ("scratch", "shared", "own", "ref"):
        (d / sub).mkdir()
    return d


# name -> request fields (paths relative to the world). Two-pass with store_max_ram_bytes 0
# puts the bottleneck store in a file in the shared --scratch folder.
SCRATCH = {"schedule": "two-pass", "store_max_ram_bytes": 0, "scratch": "scratch"}
JOBS: dict[str, dict] = {
    "a-scratch": {"src": "a.tif", "output": "shared/a1.tif", **SCRATCH},
    "a-one-pass": {"src": "a.tif", "output": "shared/a2.tif", "schedule": "one-pass"},
    "b-scratch": {"src": "b.tif", "output": "shared/b.tif", **SCRATCH},
    "c-probs": {"src": "c.tif", "output": "own/c.tif", "probabilities": "own/c_p.tif",
                "scratch": "scratch"},
    # Two pairs on one path each; the members differ in their input, so the winner is known
    # by its pixels.
    "race1-a": {"src": "a.tif", "output": "shared/race1.tif", **SCRATCH},
    "race1-b": {"src": "b.tif", "output": "shared/race1.tif", **SCRATCH},
    "race2-c": {"src": "c.tif", "output": "own/race2.tif", **SCRATCH},
    "race2-a": {"src": "a.tif", "output": "own/race2.tif", "scratch": "scratch",
                "schedule": "two-pass"},
}
PAIRS = {"shared/race1.tif": ("race1-a", "race1-b"), "own/race2.tif": ("race2-c", "race2-a")}


def _absolute(d: Path, fields: dict, output: str | None = None) -> dict:
    out = {k: str(d / v) if k in ("src", "output", "probabilities", "scratch") else v
           for k, v in fields.items()}
    out["model"] = str(d / "model.pt")
    if output is not None:  # the serial run's copy
        out["output"] = str(d / "ref" / output)
        if "probabilities" in out:
            out["probabilities"] = str(d / "ref" / f"{output}.p.tif")
    return out


@pytest.fixture(scope="module")
def serial(world: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each job alone, one after another, in this process (the engine the CLI runs)."""
    results = {}
    for name, fields in JOBS.items():
        request = _absolute(world, fields, output=f"{name}.tif")
        src, dst, model = request.pop("src"), request.pop("output"), request.pop("model")
        geoddu.segment(src, dst, model, **request)
        results[name] = {"output": _read(Path(dst))}
        if "probabilities" in request:
            results[name]["probabilities"] = _read(Path(request["probabilities"]))
    return results


def test_eight_jobs_at_once_equal_serial_runs(world: Path, serial) -> None:
    d = world
    stale = d / "shared" / f".race1.tif{TEMP_MARKER}{_dead_pid()}-deadbeef"
    stale.write_bytes(b"left by a process killed with SIGKILL")
    procs = {}
    t0 = time.perf_counter()
    for name, fields in JOBS.items():
        request = d / f"{name}.json"
        request.write_text(json.dumps(_absolute(d, fields)))
        procs[name] = subprocess.Popen([*GEODDU, "--request", str(request)], cwd=d,
                                       env=rank_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = (proc.returncode, err)
    took = time.perf_counter() - t0
    print(f"8 jobs at once: {took:.1f} s; exit codes "
          + ", ".join(f"{n} {rc}" for n, (rc, _) in done.items()))

    racing = {n for pair in PAIRS.values() for n in pair}
    for name, (rc, err) in done.items():
        if name in racing:
            continue
        assert rc == 0, (name, err)
        dst = d / JOBS[name]["output"]
        np.testing.assert_array_equal(_read(dst), serial[name]["output"], err_msg=name)
        if "probabilities" in JOBS[name]:
            np.testing.assert_array_equal(_read(d / JOBS[name]["probabilities"]),
                                          serial[name]["probabilities"], err_msg=name)

    for path, pair in PAIRS.items():
        codes = {n: done[n][0] for n in pair}
        winners = [n for n in pair if codes[n] == 0]
        assert len(winners) == 1 and sorted(codes.values()) == [0, 1], codes
        (winner,) = winners
        (loser,) = set(pair) - {winner}
        np.testing.assert_array_equal(_read(d / path), serial[winner]["output"],
                                      err_msg=f"{path}: not {winner}'s result")
        lines = [line for line in done[loser][1].splitlines() if line.strip()]
        assert lines == [f"Error: {d / path} {RACE_LINE}"], done[loser][1]

    assert not stale.exists(), "a dead process's temporary file was kept"
    assert not _temps(d / "shared", d / "own"), _temps(d / "shared", d / "own")
    assert not list((d / "scratch").iterdir())
    # Nothing but the outputs (each class map with its GDAL sidecar).
    outputs = {JOBS[n][k] for n in JOBS for k in ("output", "probabilities") if k in JOBS[n]}
    found = {str(p.relative_to(d)) for sub in ("shared", "own") for p in (d / sub).iterdir()}
    assert found == outputs | {f"{o}.aux.xml" for o in outputs if not o.endswith("_p.tif")}
