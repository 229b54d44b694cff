"""Three trained checkpoints and a scene with its truth for each, for the precision studies
(precision_agreement.py, int8_study.py): the demo's DDU-Net(3,32,Y), a synthetic k=2 model and
a model trained on a folder of real rasters with vector labels. Built in a work folder once and
reused from it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

# Trained in minutes on a shared 2-core machine; the figures in docs/precision.md used these.
SYNTH_K2 = dict(train=600, val=150, test=150, epochs=25)
# Batches of 2 patches: the folder holds about 30 training patches of 128 px, and the recipe's
# 12 would give 3 steps an epoch.
FOLDER = dict(patch=128, subimages=2, batch=2, epochs=40)
# Held-out band of the real raster: three 64 px subimage rows, never seen in training.
HOLDOUT_ROWS = (360, 552)
# Land-cover classes of the real raster (a Landsat RGB scene of coast and sea); the vector
# labels come from a spectral rule, sieved, so that regions are polygons rather than pixels.
REAL_CLASSES = [("deep water", (0, 0, 120)), ("shallow water", (0, 200, 200)),
                ("land", (30, 140, 30)), ("cloud", (255, 255, 255))]
# Rasterio's repository ships a real Landsat 7 scene (tests/data/RGB.byte.tif, 791 x 718 px,
# 300 m, UTM 18N, nodata 0); with no real raster given, a synthetic one stands in.
REAL_RASTER_HINT = "rasterio's tests/data/RGB.byte.tif"


@dataclass
class Case:
    """A trained checkpoint, the scene it segments, and the truth where known."""

    name: str
    checkpoint: Path
    scene: Path
    truth: np.ndarray  # (H, W) class ids, 255 where unknown or nodata
    valid: np.ndarray  # (H, W) bool: the scene's valid pixels
    # What one fixed-size ONNX graph runs on, as (row, col) offsets of (H, W) windows: every
    # synthetic image on its own, as in training (in the scene the communication network also
    # reaches the image one nodata row away), or the whole held-out band (padded with nodata
    # to whole subimages).
    windows: list[tuple[int, int]]
    size: tuple[int, int]
    grid: tuple[int, int]  # subimage grid of one window
    calibration: np.ndarray  # (n, bands, H, W) raw training data of one window's size


def geoddu_cli(*args: object, threads: int = 1) -> None:
    """One `geoddu` command in its own process, with `threads` CPU threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "geoddu.cli", *map(str, args)]
    print("$", "geoddu", *map(str, args), flush=True)
    subprocess.run(cmd, check=True, env=env)


def demo_case(work: Path, rows: int = 16, seed: int = 0) -> Case:
    """(a) the demo's DDU-Net(3,32,Y) asset on the demo's own scene (`geoddu demo`)."""
    from importlib import resources

    from geoddu.cli.demo import ASSET_COMM

    ckpt = Path(str(resources.files("geoddu") / "assets" / ASSET_COMM))
    return _synthetic_case("demo k=3", ckpt, work / "demo", k=3, rows=rows, seed=seed)


def synthetic_k2_case(work: Path, rows: int = 64, seed: int = 1) -> Case:
    """(b) DDU-Net(3,32,Y) trained with `geoddu train` on a small k=2 synthetic set."""
    run = work / "k2-run"
    if not (run / "best.pt").is_file():
        s = SYNTH_K2
        geoddu_cli("synth", "-o", work / "k2-data", "--k", 2, "--train", s["train"], "--val",
                   s["val"], "--test", s["test"], "--seed", 0, "--overwrite", "-q")
        geoddu_cli("train", "--dataset", "synthetic", "--data", work / "k2-data", "-o", run,
                   "--arch", "DDU-Net(3,32,Y)", "--epochs", s["epochs"], "--seed", 0, "-q")
    return _synthetic_case("synthetic k=2", run / "best.pt", work / "k2", k=2, rows=rows,
                           seed=seed)


def _synthetic_case(name: str, ckpt: Path, folder: Path, k: int, rows: int, seed: int) -> Case:
    from geoddu.data.scene import make_scene, write_scene
    from geoddu.data.synthetic import SUBIMAGE, generate

    folder.mkdir(parents=True, exist_ok=True)
    scene = make_scene(k=k, rows=rows, seed=seed)
    path = folder / "scene.tif"
    write_scene(scene, path, folder / "truth.tif")
    # Calibration: fresh training-like images, drawn from a stream the scene never uses.
    images, _ = generate(k, 32, np.random.default_rng([seed, k, 7]))
    windows = [(r * 2 * SUBIMAGE, 0) for r in range(rows)]
    return Case(name, ckpt, path, scene.labels, scene.valid, windows, (SUBIMAGE, SUBIMAGE * k),
                (1, k), images[:, None].astype(np.float32))


def folder_case(work: Path, real: Path | None) -> Case:
    """(c) the folder recipe (`--dataset folder`, DDU-Net(4,64,Y) base 16) on GeoTIFFs cut
    from a real raster, with GeoPackage polygon labels; one band of it held out."""
    data, run = work / "folder-data", work / "folder-run"
    image, labels, profile = _real_image(work, real)
    h0, h1 = HOLDOUT_ROWS
    scene = work / "folder-holdout.tif"
    if not (data / "labels.gpkg").is_file():
        _write_folder(data, image, labels, profile)
        _write_tiff(scene, image[:, h0:h1], profile, h0)
    if not (run / "best.pt").is_file():
        f = FOLDER
        geoddu_cli("train", "--dataset", "folder", "--data", data, "-o", run, "--arch",
                   "DDU-Net(4,64,Y)", "--base-channels", 16, "--patch-size", f["patch"],
                   "--subimages", f["subimages"], "--batch-size", f["batch"], "--epochs",
                   f["epochs"], "--seed", 0, "-q")
    valid = (image[:, h0:h1] != 0).any(0)
    truth = np.where(valid, labels[h0:h1], 255).astype(np.uint8)
    sub = FOLDER["patch"] // FOLDER["subimages"]
    h, w = h1 - h0, -(-image.shape[2] // sub) * sub
    # Calibration: windows of the held-out band's size from the training rows only.
    starts = [0, HOLDOUT_ROWS[0] - h, image.shape[1] - h]
    calib = np.zeros((len(starts), image.shape[0], h, w), np.float32)
    for i, r in enumerate(starts):
        calib[i, :, :, : image.shape[2]] = image[:, r : r + h]
    return Case("real raster (folder)", run / "best.pt", scene, truth, valid, [(0, 0)], (h, w),
                (h // sub, w // sub), calib)


def _real_image(work: Path, real: Path | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The real raster (bands, H, W) uint8, its class ids (255 = unlabelled) and profile."""
    from rasterio.features import sieve

    if real is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from _common import make_scene

        print(f"no --real-raster given ({REAL_RASTER_HINT}): a synthetic scene stands in")
        real = make_scene(work / "stand-in.tif", 768)
    with rasterio.open(real) as src:
        image = src.read()
        profile = dict(driver="GTiff", count=src.count, dtype="uint8", crs=src.crs,
                       transform=src.transform, nodata=0)
    r, g, b = image[:3].astype(np.int32)
    valid = (image != 0).any(0)
    cloud = valid & (image[:3].min(0) >= 110)
    land = valid & ~cloud & (r * 10 >= b * 11)
    shallow = valid & ~cloud & ~land & (g >= 55) & (b >= g)
    ids = np.zeros(r.shape, np.uint8)  # 0: unlabelled; classes are 1..4 here
    ids[valid & ~cloud & ~land & ~shallow] = 1
    ids[shallow], ids[land], ids[cloud] = 2, 3, 4
    ids = sieve(ids, size=30, connectivity=8)
    return image, np.where(ids > 0, ids - 1, 255).astype(np.uint8), profile


def _write_folder(data: Path, image: np.ndarray, labels: np.ndarray, profile: dict) -> None:
    """images/*.tif (the rows outside the held-out band) + labels.gpkg + classes.yaml."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    (data / "images").mkdir(parents=True, exist_ok=True)
    h0, h1 = HOLDOUT_ROWS
    _write_tiff(data / "images" / "north.tif", image[:, :h0], profile, 0)
    _write_tiff(data / "images" / "south.tif", image[:, h1:], profile, h1)
    names = [n for n, _ in REAL_CLASSES]
    # Polygons over the whole raster: training reads only the parts its images cover.
    geoms = [(shape(g), names[int(v)]) for g, v in
             shapes(labels, mask=labels != 255, transform=profile["transform"])]
    gdf = gpd.GeoDataFrame({"landcover": [n for _, n in geoms]},
                           geometry=[g for g, _ in geoms], crs=profile["crs"])
    gdf.to_file(data / "labels.gpkg", driver="GPKG")
    lines = ["classes:"] + [f"  - {{name: {n}, color: [{c[0]}, {c[1]}, {c[2]}]}}"
                            for n, c in REAL_CLASSES]
    (data / "classes.yaml").write_text("\n".join(lines + ["column: landcover", ""]))


def _write_tiff(path: Path, image: np.ndarray, profile: dict, row0: int) -> None:
    transform = profile["transform"] * Affine.translation(0, row0)
    with rasterio.open(path, "w", **{**profile, "transform": transform}, width=image.shape[2],
                       height=image.shape[1],
                       tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate") as dst:
        dst.write(image, window=Window(0, 0, image.shape[2], image.shape[1]))


def cases(work: Path, real: Path | None, demo_rows: int = 16, k2_rows: int = 64) -> list[Case]:
    work.mkdir(parents=True, exist_ok=True)
    return [demo_case(work, demo_rows), synthetic_k2_case(work, k2_rows),
            folder_case(work, real)]
