"""The standing fault table's rows: bad inputs and faults for the real CLI, and the small world
of files every row starts from (test_faults.py runs them; docs/reliability.md lists the same
table for users)."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import make_checkpoint, write_geotiff

GEODDU = [sys.executable, "-m", "geoddu.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TEMP = "geoddu-tmp"
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MAP = "out/map.tif"
BACKGROUND: dict[Path, object] = {}  # a row's helper run, joined before its outcome is read


def temps(d: Path) -> list[str]:
    """The temporary files (and folders) a run left anywhere below ``d``."""
    return sorted(str(p.relative_to(d)) for p in d.rglob(f"*{TEMP}*"))


# -- the world every row starts from ----------------------------------------------------------
def world(d: Path) -> None:
    rng = np.random.default_rng(0)
    (d / "out").mkdir()
    tiles = dict(tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    write_geotiff(d / "scene.tif", rng.integers(0, 255, (3, 64, 96), dtype=np.uint8), **tiles)
    # Large enough to overflow the small file systems of the disk-full rows.
    write_geotiff(d / "mid.tif", rng.integers(0, 255, (3, 512, 512), dtype=np.uint8), **tiles)
    # Long enough to be signalled mid-run.
    write_geotiff(
        d / "big.tif", rng.integers(0, 255, (3, 2048, 2048), dtype=np.uint8), tiled=True
    )
    make_checkpoint(d / "model.pt", in_channels=3, num_classes=4, subimage_size=32)


def seg(*extra: str, src: str = "scene.tif", out: str = MAP, model: str = "model.pt") -> list[str]:
    return ["segment", "-q", "-o", out, "-m", model, *extra, "--", src]


def _ckpt(d: Path, name: str, edit: Callable[[dict], object]) -> str:
    ckpt = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    torch.save(edit(ckpt), d / name)
    return name


def _set(path: str, value: object) -> Callable[[dict], dict]:
    def edit(ckpt: dict) -> dict:
        node = ckpt
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return ckpt

    return edit


def _bytes(d: Path, name: str, data: bytes) -> str:
    (d / name).write_bytes(data)
    return name


class _Payload:
    """Pickled, it would create a marker file when unpickled: loading must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_payload(d: Path) -> str:
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"format": "geoddu-checkpoint", "x": _Payload(d / "PWNED")}, f)
    return "evil.pt"


def mount(d: Path, name: str, size: str, stack: ExitStack, ro: bool = False) -> str:
    """A small tmpfs (a full disk in miniature), or a read-only one; root only."""
    path = d / name
    path.mkdir()
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    stack.callback(subprocess.run, ["umount", "-l", str(path)], capture_output=True)
    return name


def _scene(d: Path, name: str, data: np.ndarray, **kw) -> str:
    write_geotiff(d / name, data, **kw)
    return name


def _truncated(d: Path) -> str:
    data = (d / "scene.tif").read_bytes()
    return _bytes(d, "cut.tif", data[: len(data) // 2])


def _corrupt(d: Path) -> str:
    data = bytearray((d / "scene.tif").read_bytes())
    # The header and tile index stay; the compressed tiles in the middle turn to noise.
    first = len(data) // 3
    data[first : first + 2000] = np.random.default_rng(1).integers(0, 255, 2000, np.uint8).tobytes()
    return _bytes(d, "corrupt.tif", bytes(data))


@dataclass
class Case:
    id: str
    argv: Callable[[Path, ExitStack], list[str]]
    rc: int = 1
    says: str | None = None
    outputs: tuple[str, ...] = (MAP,)
    rerun: Callable[[Path], list[str]] | None = None
    kill: int | None = None  # a signal sent once the run has created its temporary files
    ok: bool = False  # a row that must succeed
    unchanged: tuple[str, ...] = ()  # files that must be byte-identical afterwards
    absent: tuple[str, ...] = ()  # files that must not exist afterwards (e.g. a payload marker)
    check: Callable[[Path], None] | None = None  # more to assert right after the faulty run
    wrote: tuple[str, ...] = ()  # what the rerun writes, when not the row's outputs


def _c(id: str, argv, **kw) -> Case:  # noqa: A002 - the table reads better with `id`
    return Case(id, argv, **kw)


def _bad_model(edit_name: str, edit: Callable[[dict], object], says: str) -> Case:
    return _c(f"checkpoint-{edit_name}", lambda d, s: seg(model=_ckpt(d, "bad.pt", edit)),
              says=says)


def _synth_and_train(d: Path, run: str) -> list[str]:
    subprocess.run([*GEODDU, "synth", "-q", "-o", str(d / "synth"), "--k", "2", "--train", "4",
                    "--val", "2", "--test", "0"], check=True, env=ENV, cwd=d)
    return ["train", "-q", "--dataset", "synthetic", "--data", "synth", "-o", run,
            "--epochs", "1", "--batch-size", "2", "--arch", "DDU-Net(2,4,Y)", "--in-channels",
            "1", "--classes", "3", "--base-channels", "4", "--overwrite"]


def _aoi(d: Path, name: str, far: bool = False) -> str:
    import geopandas as gpd
    import shapely
    from helpers import CRS

    x0 = 700000 if far else 500100
    gdf = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(x0, 3999500, x0 + 400, 3999900)],
                           crs=CRS)
    gdf.to_file(d / "aoi-plain.gpkg")
    os.replace(d / "aoi-plain.gpkg", d / name)  # GDAL itself takes odd names only this way
    return name


def _race(d: Path, stack: ExitStack) -> list[str]:
    """Two runs on one output: the row's run (a large scene) and, started once the first has
    created its temporary files, a quick one on the small scene that finishes first.

    The quick one's result must stay; the slow one must fail with "exists" at its rename and
    remove its temporary files, never replace the first result.
    """
    import threading

    def quick() -> None:
        deadline = time.monotonic() + 120
        while not temps(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run([*GEODDU, *seg()], cwd=d, env=ENV, capture_output=True)

    thread = threading.Thread(target=quick)
    thread.start()
    BACKGROUND[d] = thread
    return seg(src="big.tif")


def _quick_result_kept(d: Path) -> None:
    with rasterio.open(d / MAP) as ds:
        assert (ds.width, ds.height) == (96, 64), "the slow run replaced the first result"


def _map_then_vectorize(d: Path, dst: str = "out/v.gpkg") -> list[str]:
    if not (d / "out/cm.tif").exists():
        subprocess.run([*GEODDU, *seg(out="out/cm.tif")], check=True, env=ENV, cwd=d)
    return ["vectorize", "-q", "-o", dst, "out/cm.tif"]


RGBA = np.concatenate(
    [np.random.default_rng(2).integers(1, 255, (3, 64, 96), dtype=np.uint8),
     np.where(np.arange(96) < 40, 0, 255).astype(np.uint8)[None, None, :].repeat(64, 1)]
)
RGB_NODATA = np.random.default_rng(3).integers(0, 4, (3, 64, 96), dtype=np.uint8) * 85


def _nan_scene() -> np.ndarray:
    data = np.random.default_rng(4).random((3, 64, 96), dtype=np.float32) * 255
    data[1, 10:20, 30:50] = np.nan
    return data


# -- bombs (issue 26): small files that claim huge sizes --------------------------------------
def _tiff_claiming(d: Path, name: str, **tags: int) -> str:
    """A tiny tifffile TIFF whose tags are then rewritten to claim more than it holds."""
    import tifffile

    tifffile.imwrite(d / name, np.zeros((4, 16, 16), np.uint8), tile=(16, 16),
                     compression="zlib", photometric="minisblack", planarconfig="separate")
    with tifffile.TiffFile(d / name, mode="r+b") as tif:
        for tag, value in tags.items():
            tif.pages[0].tags[tag].overwrite(value)
    return name


def _tile_bomb(d: Path) -> str:
    """1 MB on disk: one DEFLATE tile of 2^30 zero pixels (32768 x 32768)."""
    import zlib

    import tifffile

    name = "bomb.tif"
    tifffile.imwrite(d / name, np.zeros((16, 16), np.uint8), tile=(16, 16), compression="zlib")
    stream = zlib.compress(bytes(2**30), 9)
    offset = (d / name).stat().st_size
    with open(d / name, "ab") as f:
        f.write(stream)
    with tifffile.TiffFile(d / name, mode="r+b") as tif:
        page = tif.pages[0]
        for tag, value in (("ImageWidth", 32768), ("ImageLength", 32768),
                           ("TileWidth", 32768), ("TileLength", 32768), ("TileOffsets", offset),
                           ("TileByteCounts", len(stream))):
            page.tags[tag].overwrite(value)
    return name


def _strip_claiming(d: Path) -> str:
    """A 5 KB uncompressed RGB TIFF whose one strip claims 40 x 67,108,904 px (7.5 GiB)."""
    import tifffile

    tifffile.imwrite(d / "wide.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(d / "wide.tif", mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(67108904)
    return "wide.tif"


def _aoi_vertices(d: Path, n: int) -> str:
    """A circle of n vertices inside the scene, as GeoJSON written by hand (fast for 10^6)."""
    import rasterio

    with rasterio.open(d / "scene.tif") as ds:
        b, crs = ds.bounds, ds.crs.to_string()
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cx, cy, r = (b.left + b.right) / 2, (b.bottom + b.top) / 2, (b.top - b.bottom) / 2.5
    ring = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    coords = ",".join(f"[{x:.6f},{y:.6f}]" for x, y in np.vstack([ring, ring[:1]]))
    head = ('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"' + crs
            + '"}},"features":[{"type":"Feature","properties":{},"geometry":{"type":"Polygon",'
            '"coordinates":[[')
    (d / "many.geojson").write_text(head + coords + "]]}}]}")
    return "many.geojson"


def _bad_tag_types(d: Path) -> str:
    """A plain TIFF whose Compression tag has a data type that does not exist: tifffile logs a
    record per read attempt (found by fuzzing; they reached stderr before the Error line)."""
    import tifffile

    tifffile.imwrite(d / "tags.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with tifffile.TiffFile(d / "tags.tif") as tif:
        entry = tif.pages[0].tags["Compression"].offset
    data = bytearray((d / "tags.tif").read_bytes())
    data[entry + 2 : entry + 4] = (46063).to_bytes(2, "little")
    return _bytes(d, "tags.tif", bytes(data))


def _request(d: Path, data: bytes) -> list[str]:
    return ["segment", "-q", "--request", _bytes(d, "request.json", data)]


def _tiny_folder(d: Path) -> str:
    """A training folder of three 16 px images: depth 4 leaves a 1 x 1 bottleneck."""
    for sub in ("images", "labels"):
        (d / "tiny" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in "abc":
        write_geotiff(d / "tiny" / "images" / f"{name}.tif",
                      rng.integers(0, 255, (3, 32, 32), np.uint8))
        write_geotiff(d / "tiny" / "labels" / f"{name}.tif",
                      rng.integers(0, 2, (1, 32, 32), np.uint8))
    (d / "tiny" / "classes.json").write_text('["a", "b"]')
    return "tiny"


CASES: list[Case] = [
    # -- the input raster ---------------------------------------------------------------------
    _c("input-not-a-raster", lambda d, s: seg(src=_bytes(d, "text.tif", b"hello\n" * 50)),
       says="not a raster"),
    _c("input-0-byte", lambda d, s: seg(src=_bytes(d, "empty.tif", b"")), says="empty.tif"),
    _c("input-truncated", lambda d, s: seg(src=_truncated(d)), says="cut.tif"),
    _c("input-corrupt", lambda d, s: seg(src=_corrupt(d)), says="corrupt.tif"),
    _c("input-directory", lambda d, s: seg(src="out"), says="directory"),
    _c("input-missing", lambda d, s: seg(src="nothing.tif"), says="no such file"),
    _c("bands-more-than-model",
       lambda d, s: seg(src=_scene(d, "four.tif", np.ones((4, 64, 96), np.uint8),
                                    photometric="minisblack")),
       says="--bands"),
    _c("bands-fewer-than-model",
       lambda d, s: seg(src=_scene(d, "two.tif", np.ones((2, 64, 96), np.uint8))),
       says="band"),
    _c("bands-missing-band", lambda d, s: seg("--bands", "1,2,9"), says="band 9"),
    _c("bands-not-numbers", lambda d, s: seg("--bands", "a,b"), rc=2, says="--bands"),
    _c("bands-zero", lambda d, s: seg("--bands", "0,1,2"), rc=2, says="start at 1"),
    _c("subimage-size-not-multiple", lambda d, s: seg("--subimage-size", "30"),
       says="multiple"),
    _c("subimage-size-zero", lambda d, s: seg("--subimage-size", "0"), rc=2),
    # -- the checkpoint -----------------------------------------------------------------------
    _c("checkpoint-missing", lambda d, s: seg(model="none.pt"), says="not found"),
    _c("checkpoint-directory", lambda d, s: seg(model="out"), rc=2, says="directory"),
    _c("checkpoint-random-bytes",
       lambda d, s: seg(model=_bytes(d, "rnd.pt", os.urandom(5000))), says="not a geoddu"),
    _c("checkpoint-0-byte", lambda d, s: seg(model=_bytes(d, "zero.pt", b"")),
       says="not a geoddu"),
    _c("checkpoint-truncated",
       lambda d, s: seg(model=_bytes(d, "half.pt", (d / "model.pt").read_bytes()[:20000])),
       says="not a geoddu"),
    _c("checkpoint-pickle-payload", lambda d, s: seg(model=_pickle_payload(d)),
       says="not a geoddu", absent=("PWNED",)),
    _bad_model("bare-state-dict", lambda c: c["state_dict"], "not a geoddu"),
    _bad_model("wrong-architecture", _set("config.depth", 3), "weights"),
    _bad_model("depth-0", _set("config.depth", 0), "depth"),
    _bad_model("classes-300", _set("config.num_classes", 300), "num_classes"),
    _bad_model("comm-features-too-many", _set("config.comm_features", 10_000), "comm_features"),
    _bad_model("unknown-encoder", _set("config.encoder", "vgg"), "encoder"),
    _bad_model("class-list-short", lambda c: {**c, "classes": c["classes"][:2]}, "classes"),
    _bad_model("bands-length", _set("bands", [1, 2]), "bands"),
    _bad_model("std-zero", _set("normalization.std", [255.0, 0.0, 255.0]), "std"),
    _bad_model("subimage-size", _set("subimage_size", 30), "subimage"),
    # -- devices ------------------------------------------------------------------------------
    _c("gpus-without-cuda", lambda d, s: seg("--gpus", "1"), says="cuda"),
    _c("device-cuda-without-cuda", lambda d, s: seg("--device", "cuda"), says="cuda"),
    _c("device-unknown", lambda d, s: seg("--device", "tpu9"), says="tpu9"),
    # -- outputs ------------------------------------------------------------------------------
    _c("output-dir-missing", lambda d, s: seg(out="nowhere/map.tif"), says="does not exist",
       outputs=("nowhere/map.tif",)),
    _c("output-is-directory", lambda d, s: seg(out="out"), rc=2, says="directory", outputs=()),
    _c("output-dir-read-only",
       lambda d, s: seg(out=f"{mount(d, 'ro', '1m', s, ro=True)}/map.tif"),
       says="not writable", outputs=("ro/map.tif",), rerun=lambda d: seg()),
    _c("output-disk-full",
       lambda d, s: seg(src="mid.tif", out=f"{mount(d, 'full', '64k', s)}/map.tif"),
       says="no space left on device", outputs=("full/map.tif",), rerun=lambda d: seg()),
    _c("probabilities-disk-full",
       lambda d, s: seg("--probabilities", f"{mount(d, 'full', '300k', s)}/p.tif",
                        src="mid.tif", out="full/map.tif"),
       says="no space left on device", outputs=("full/map.tif", "full/p.tif"),
       rerun=lambda d: seg("--probabilities", "out/p.tif")),
    _c("cog-disk-full",
       lambda d, s: seg("--cog", src="big.tif", out=f"{mount(d, 'full', '2m', s)}/map.tif"),
       says="no space left on device", outputs=("full/map.tif",),
       rerun=lambda d: seg("--cog")),
    _c("vector-disk-full",
       lambda d, s: seg("--vector", f"{mount(d, 'full', '32k', s)}/v.gpkg", src="mid.tif"),
       says="no space left on device", outputs=(MAP, "full/v.gpkg"),
       rerun=lambda d: seg("--vector", "out/v.gpkg")),
    _c("output-exists", lambda d, s: _bytes(d, MAP, b"keep") and seg(), says="exists",
       outputs=(), unchanged=(MAP,), rerun=lambda d: seg("--overwrite")),
    _c("output-is-input", lambda d, s: seg(out="scene.tif"), says="input", outputs=(),
       unchanged=("scene.tif",)),
    _c("two-outputs-one-path", lambda d, s: seg("--probabilities", MAP), says="same file"),
    _c("vector-is-output", lambda d, s: seg("--vector", MAP), says="same file"),
    _c("scratch-missing", lambda d, s: seg("--scratch", "noscratch"), says="noscratch"),
    # -- interruptions ------------------------------------------------------------------------
    _c("sigint-mid-run", lambda d, s: seg("--probabilities", "out/p.tif", src="big.tif"),
       rc=130, kill=signal.SIGINT, says="interrupted", outputs=(MAP, "out/p.tif")),
    _c("sigterm-mid-run", lambda d, s: seg("--probabilities", "out/p.tif", src="big.tif"),
       rc=143, kill=signal.SIGTERM, says="sigterm", outputs=(MAP, "out/p.tif")),
    _c("sighup-mid-run", lambda d, s: seg("--probabilities", "out/p.tif", src="big.tif"),
       rc=129, kill=signal.SIGHUP, says="sighup", outputs=(MAP, "out/p.tif")),
    _c("sigkill-mid-run", lambda d, s: seg(src="big.tif"), rc=-9, kill=signal.SIGKILL),
    _c("two-runs-one-output", _race, says="exists", outputs=(), check=_quick_result_kept,
       rerun=lambda d: seg("--overwrite")),
    # -- areas of interest --------------------------------------------------------------------
    _c("aoi-missing", lambda d, s: seg("--aoi", "none.gpkg"), says="not found"),
    _c("aoi-not-a-vector", lambda d, s: seg("--aoi", _bytes(d, "aoi.gpkg", b"nope")),
       says="aoi.gpkg"),
    _c("aoi-outside-raster", lambda d, s: seg("--aoi", _aoi(d, "far.gpkg", far=True)),
       says="does not overlap"),
    _c("aoi-bad-where", lambda d, s: seg("--aoi", _aoi(d, "a.gpkg"), "--aoi-where", "nope ="),
       says="a.gpkg"),
    _c("aoi-no-crs-raster",
       lambda d, s: seg("--aoi", _aoi(d, "a.gpkg"),
                        src=_scene(d, "nocrs.tif", np.ones((3, 64, 96), np.uint8), crs=None)),
       says="no crs"),
    # -- other commands -----------------------------------------------------------------------
    _c("vectorize-not-a-raster",
       lambda d, s: ["vectorize", "-o", "out/v.gpkg", _bytes(d, "t.tif", b"text")],
       says="t.tif", outputs=("out/v.gpkg",), rerun=lambda d: _map_then_vectorize(d),
       wrote=("out/v.gpkg",)),
    _c("vectorize-disk-full",
       lambda d, s: _map_then_vectorize(d, f"{mount(d, 'full', '16k', s)}/v.gpkg"),
       says="no space left on device", outputs=("full/v.gpkg",),
       rerun=lambda d: _map_then_vectorize(d), wrote=("out/v.gpkg",)),
    _c("init-empty-classes",
       lambda d, s: ["init", "-o", "out/m.pt", "--classes-file",
                     _bytes(d, "c.json", b'{"classes": []}')],
       says="class", outputs=("out/m.pt",),
       rerun=lambda d: ["init", "-o", "out/m.pt", "--classes", "3"]),
    _c("init-classes-mismatch",
       lambda d, s: ["init", "-o", "out/m.pt", "--classes", "5", "--classes-file",
                     _bytes(d, "c.json",
                            b'{"classes": [{"name": "a", "color": [1, 2, 3]},'
                            b' {"name": "b", "color": [4, 5, 6]}]}')],
       says="class", outputs=("out/m.pt",),
       rerun=lambda d: ["init", "-o", "out/m.pt", "--classes", "3"]),
    _c("train-empty-folder",
       lambda d, s: (d / "empty" / "images").mkdir(parents=True) or
       ["train", "-q", "--dataset", "folder", "--data", "empty", "-o", "out/run",
        "--epochs", "1"],
       outputs=("out/run/last.pt", "out/run/best.pt"),
       rerun=lambda d: _synth_and_train(d, "out/run")),
    _c("train-resume-corrupt-last",
       lambda d, s: (d / "out" / "run").mkdir() or
       _bytes(d, "out/run/last.pt", os.urandom(3000)) and
       ["train", "-q", "-o", "out/run", "--resume"],
       says="last.pt", outputs=("out/run/best.pt",),
       rerun=lambda d: _synth_and_train(d, "out/run")),
    # -- bombs and what the fuzzer found (issue 26; docs/reliability.md) -----------------------
    _c("bomb-tiff-2e31-pixels",
       lambda d, s: seg(src=_tiff_claiming(d, "huge.tif", ImageWidth=2**31 - 1,
                                           ImageLength=2**31 - 1)), says="damaged TIFF"),
    _c("bomb-tiff-65535-bands",
       lambda d, s: seg("--bands", "1,2,3", src=_tiff_claiming(d, "bands.tif",
                                                              SamplesPerPixel=65535)),
       says="damaged TIFF"),
    _c("bomb-tiff-2e30-px-tile", lambda d, s: seg(src=_tile_bomb(d)),
       says="blocks are 32768x32768"),
    # Found by the fuzzer: GDAL opened it (one-row blocks) and the run planned 4 million
    # subimages, 35 s at 2.9 GB, before the read failed.
    _c("bomb-strip-claims-7.5-GiB", lambda d, s: seg(src=_strip_claiming(d)),
       says="claims 67108904 x 40 px"),
    _c("ok-aoi-1e6-vertices", lambda d, s: seg("--aoi", _aoi_vertices(d, 10**6)), ok=True),
    _bad_model("million-channels", _set("config.base_channels", 10**6), says="base_channels"),
    _bad_model("million-comm-layers", _set("config.comm_layers", 10**6), says="comm_layers"),
    # It reads (libtiff and tifffile cope); the test of an ok row checks stderr is empty.
    _c("ok-tiff-bad-tag-types", lambda d, s: seg(src=_bad_tag_types(d)), ok=True),
    _c("request-not-utf8", lambda d, s: _request(d, b'{"src": "scene.tif\xa1"}'),
       says="not UTF-8", rerun=lambda d: seg()),
    _c("request-nested-deeply", lambda d, s: _request(d, b"[" * 100_000 + b"]" * 100_000),
       says="nested too deeply", rerun=lambda d: seg()),
    _c("request-wrong-types",
       lambda d, s: _request(d, b'{"src": [["scene.tif"]], "output": "landcover.tif", '
                                b'"model": "model.pt"}'), says="must be",
       rerun=lambda d: seg()),
    _c("train-one-pixel-bottleneck",
       lambda d, s: ["train", "-q", "--dataset", "folder", "--data", _tiny_folder(d),
                     "--patch-size", "16", "--depth", "4", "--base-channels", "4",
                     "--comm-features", "4", "--batch-size", "1", "--subimages", "1",
                     "-o", "out/run",
                     "--epochs", "1"],
       says="bottleneck", outputs=("out/run/last.pt", "out/run/best.pt"),
       rerun=lambda d: _synth_and_train(d, "out/run")),
    # -- inputs GDAL accepts: these must succeed ----------------------------------------------
    _c("ok-alpha-band", lambda d, s: seg(src=_scene(d, "rgba.tif", RGBA, photometric="RGB",
                                                     alpha="YES")), ok=True),
    _c("ok-rgb-nodata-0", lambda d, s: seg(src=_scene(d, "nd.tif", RGB_NODATA, nodata=0)),
       ok=True),
    _c("ok-16-bit", lambda d, s: seg(src=_scene(
        d, "u16.tif", np.random.default_rng(5).integers(0, 4000, (3, 64, 96), np.uint16))),
       ok=True),
    _c("ok-float-nan", lambda d, s: seg(src=_scene(d, "nan.tif", _nan_scene())), ok=True),
    _c("ok-no-crs", lambda d, s: seg(src=_scene(d, "plain.tif", np.ones((3, 64, 96), np.uint8),
                                               crs=None)), ok=True),
    _c("ok-odd-names",
       lambda d, s: shutil.copy(d / "scene.tif", d / "-my scene;$x 'q'.tif") and
       seg("--probabilities", "out/p $;'1'.tif", src="-my scene;$x 'q'.tif",
           out="out/-map;$ 'q'.tif"),
       ok=True, outputs=("out/-map;$ 'q'.tif", "out/p $;'1'.tif")),
    _c("ok-odd-vector-and-aoi-names",
       lambda d, s: seg("--aoi", _aoi(d, "aoi;x #1.gpkg"), "--vector", "out/v;u $'.gpkg"),
       ok=True, outputs=(MAP, "out/v;u $'.gpkg")),
]
