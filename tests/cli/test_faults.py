"""The standing fault table: bad inputs and faults through the real CLI, one subprocess each.

For every row: the exit code, one line on stderr and no traceback, nothing at the output
paths, no temporary files, and a rerun afterwards that succeeds and writes outputs that read
back in full. Rows marked `ok` are inputs GDAL accepts (alpha, 16-bit, NaN, no CRS, odd file
names): they must succeed, with GDAL's dataset mask as the class map's nodata.
docs/reliability.md lists the same table for users.

The rows run concurrently (each in its own folder) so the table costs about one run per core.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from fault_table import BACKGROUND, CASES, ENV, GEODDU, MAP, Case, mount, seg, temps, world


# -- running a row ----------------------------------------------------------------------------
@dataclass
class Outcome:
    rc: int
    stderr: str
    temps: list[str]
    present: list[str]
    rerun_rc: int | None = None
    rerun_stderr: str = ""
    rerun_temps: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped: str | None = None
    snapshot: dict = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    folder: Path | None = None
    error: str | None = None


def _readable(path: Path) -> bool:
    """Every block of every band decodes (rasters), or the layer reads (vectors)."""
    try:
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                for _, window in ds.block_windows(1):
                    ds.read(window=window)
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix in (".gpkg", ".fgb", ".geojson", ".shp"):
            import geopandas as gpd

            from geoddu.io.vector import pyogrio_path

            with pyogrio_path(path) as p:
                gpd.read_file(p)
        return True
    except Exception:  # noqa: BLE001 - any failure to read back is the finding
        return False


def _run(argv: list[str], d: Path, kill: int | None) -> subprocess.CompletedProcess:
    if kill is None:
        return subprocess.run([*GEODDU, *argv], cwd=d, env=ENV, capture_output=True, text=True,
                              timeout=300)
    proc = subprocess.Popen([*GEODDU, *argv], cwd=d, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not temps(d) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the run: its writers are open and writing
    proc.send_signal(kill)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _play(case: Case, d: Path) -> Outcome:
    with ExitStack() as stack:
        try:
            argv = case.argv(d, stack)
        except pytest.skip.Exception as exc:
            return Outcome(0, "", [], [], skipped=str(exc))
        snapshot = {p: (d / p).read_bytes() for p in case.unchanged if (d / p).exists()}
        r = _run(argv, d, case.kill)
        if d in BACKGROUND:
            BACKGROUND.pop(d).join()
        outcome = Outcome(r.returncode, r.stderr, temps(d),
                          [o for o in case.outputs if (d / o).exists()], folder=d)
        outcome.changed = [p for p, b in snapshot.items() if (d / p).read_bytes() != b]
        if case.check is not None:
            case.check(d)
        if case.ok:
            outcome.unreadable = [o for o in case.outputs if not _readable(d / o)]
            outcome.snapshot["argv"] = argv
            return outcome
    rerun = case.rerun(d) if case.rerun else _default_rerun(argv)
    r2 = subprocess.run([*GEODDU, *rerun], cwd=d, env=ENV, capture_output=True, text=True,
                        timeout=300)
    outcome.rerun_rc, outcome.rerun_stderr = r2.returncode, r2.stderr
    outcome.rerun_temps = temps(d)
    written = case.wrote or [o for o in case.outputs if o.startswith("out/")] or [MAP]
    outcome.unreadable = [o for o in written if not _readable(d / o)]
    return outcome


def _default_rerun(argv: list[str]) -> list[str]:
    """The same request with good inputs: the scene and the model of the world, same outputs."""
    if argv[0] != "segment":
        return argv
    extra = argv[argv.index("-m") + 2 : argv.index("--")]
    keep: list[str] = []
    skip = False
    for a in extra:  # drop what the row made bad, keep the outputs it asked for
        if skip:
            skip = False
            continue
        if a in ("--bands", "--subimage-size", "--gpus", "--device", "--scratch", "--aoi",
                 "--aoi-where"):
            skip = True
            continue
        keep.append(a)
    if "--probabilities" in keep and keep[keep.index("--probabilities") + 1] == MAP:
        keep[keep.index("--probabilities") + 1] = "out/p.tif"
    if "--vector" in keep and keep[keep.index("--vector") + 1] == MAP:
        keep[keep.index("--vector") + 1] = "out/v.gpkg"
    out = argv[argv.index("-o") + 1]
    out = out if out.startswith("out/") and out != "out" else MAP
    return seg(*keep, out=out)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("world")
    world(d)
    return d


@pytest.fixture(scope="module")
def outcomes(template: Path, tmp_path_factory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("faults")

    def play(case: Case) -> tuple[str, Outcome]:
        d = base / case.id
        shutil.copytree(template, d)
        try:
            return case.id, _play(case, d)
        except Exception as exc:  # noqa: BLE001 - reported by that row's test, not all rows
            return case.id, Outcome(-1, "", [], [], error=repr(exc), folder=d)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(play, CASES))


def test_the_table_is_large_enough() -> None:
    faults = [c for c in CASES if not c.ok]
    assert len(faults) >= 40 and len({c.id for c in CASES}) == len(CASES)


def _one_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[case.id]
    assert o.error is None, o.error
    if o.skipped:
        pytest.skip(o.skipped)
    assert "Traceback" not in o.stderr, o.stderr
    if case.ok:
        assert o.rc == 0, o.stderr
        # -q: nothing on stderr but geoddu's own warnings (no library log records, no Python
        # warnings with their source lines: both found by the fuzzer before they were kept aside)
        assert all(x.startswith("Warning: ") for x in _one_line(o.stderr)), o.stderr
        assert o.present == list(case.outputs) and not o.unreadable, (o.present, o.unreadable)
        assert not o.temps, o.temps
        _nodata_is_gdal_mask(o.folder, o.snapshot["argv"], case.outputs[0])
        return
    assert o.rc == case.rc, (o.rc, o.stderr)
    lines = _one_line(o.stderr)
    if case.kill != signal.SIGKILL:
        assert len(lines) == 1, o.stderr
        if case.kill is None:
            assert lines[0].startswith("Error: "), lines
        if case.says:
            assert case.says.lower() in lines[0].lower(), lines
    assert not o.present, f"left at output paths: {o.present}"
    if case.kill != signal.SIGKILL:
        assert not o.temps, f"temporary files left: {o.temps}"
    assert not o.changed, f"changed: {o.changed}"
    for name in case.absent:
        assert not (o.folder / name).exists(), f"{name} exists"
    # The rerun with good inputs succeeds, reads back in full, and (after SIGKILL) has
    # removed what the killed process left behind.
    assert o.rerun_rc == 0, o.rerun_stderr
    assert not o.unreadable, o.unreadable
    assert not o.rerun_temps, o.rerun_temps


def _nodata_is_gdal_mask(d: Path, argv: list[str], out: str) -> None:
    src = d / argv[-1]
    with rasterio.open(d / out) as cm:
        classes = cm.read(1)
    try:
        with rasterio.open(src) as ds:
            valid = ds.dataset_mask() != 0
            data = ds.read()
    except rasterio.errors.RasterioIOError:  # a TIFF only tifffile reads: no mask, all valid
        valid = np.ones(classes.shape, bool)
        data = np.zeros((1, 1), np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    if "--aoi" in argv:
        valid = valid & (classes != 255)  # outside the area is nodata by request
    np.testing.assert_array_equal(classes == 255, ~valid)


# -- the bottleneck store's scratch folder (in-process: the CLI keeps the store in RAM below
#    16 MB, which a test scene never reaches) -------------------------------------------------
def test_scratch_space_is_checked_before_any_work(template: Path, tmp_path: Path) -> None:
    import geoddu
    from geoddu.errors import GeodduError

    with ExitStack() as stack:
        scratch = tmp_path / mount(tmp_path, "scratch", "16k", stack)
        out = tmp_path / "map.tif"
        # Two passes keep the bottleneck mosaic between them (one pass keeps no store).
        with pytest.raises(GeodduError, match=r"--scratch .*needs \d+ MB, 0 MB free"):
            geoddu.segment(template / "big.tif", out, template / "model.pt",
                           store_max_ram_bytes=0, scratch=scratch, schedule="two-pass")
        assert not out.exists() and not temps(tmp_path)
        # With room, the same store on disk gives the same classes as in RAM.
        geoddu.segment(template / "scene.tif", out, template / "model.pt",
                       store_max_ram_bytes=0, scratch=tmp_path, schedule="two-pass")
        geoddu.segment(template / "scene.tif", tmp_path / "ram.tif", template / "model.pt")
        with rasterio.open(out) as a, rasterio.open(tmp_path / "ram.tif") as b:
            np.testing.assert_array_equal(a.read(), b.read())
        assert not list(scratch.iterdir()) and not list(tmp_path.glob("geoddu-maps-*"))
