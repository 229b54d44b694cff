"""The whole loop on real rasters, each step the real command line in its own process:
`geoddu train` a tiny model on GeoTIFFs, `geoddu segment` a scene it has not seen, `geoddu sample`
the map, label the points from a truth raster, `geoddu assess --into model.pt --json`; then the
figures are checked against geoddu.accuracy computed directly, the model card against the JSON,
`geoddu info -m` against both, and the weights against themselves before the assessment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

import geoddu
from geoddu.accuracy import estimate

CRS = "EPSG:32631"
PIXEL = 2.0
CLASSES = [{"name": "field", "color": [240, 220, 120]}, {"name": "water", "color": [0, 0, 255]}]
# One thread per process: the steps are tiny, and threads only contend on a shared machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


def geoddu_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "geoddu.cli", *args], capture_output=True,
                       text=True, env=ENV, cwd=cwd, timeout=300)
    assert r.returncode == 0, f"geoddu {args[0]}: {r.stderr[-3000:]}"
    return r


def scene(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2-band image of smooth blobs and its truth: water where band 2 is bright."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 8 + 2, w // 8 + 2))
    # Blocky blobs, blurred a little at their edges by averaging shifted copies.
    field = np.kron(coarse, np.ones((8, 8)))[: h + 2, : w + 2]
    smooth = sum(field[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    water = smooth > 0.5
    noise = rng.normal(0, 6, (2, h, w))
    band1 = np.where(water, 60, 150) + noise[0]
    band2 = np.where(water, 200, 70) + noise[1]
    image = np.clip(np.stack([band1, band2]), 0, 255).astype(np.uint8)
    return image, water.astype(np.uint8)


def write(path, array: np.ndarray, origin_x: float) -> None:
    count, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count,
                       dtype=array.dtype, crs=CRS,
                       transform=from_origin(origin_x, 5_770_000.0, PIXEL, PIXEL)) as dst:
        dst.write(array)


def weights(path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: (str(v.dtype), tuple(v.shape), v.numpy().tobytes()) for k, v in state.items()}


def flat(value) -> list[float]:
    """Every number of a JSON figure in order (None as NaN), for comparing two of them."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in flat(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in flat(v)]
    return [float("nan") if value is None else float(value)]


def test_train_segment_sample_assess_into_the_card(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for n in range(2):
        image, truth = scene(n, 64, 96)
        write(data / "images" / f"t{n}.tif", image, 600_000.0 + n * 1000)
        write(data / "labels" / f"t{n}.tif", truth[None], 600_000.0 + n * 1000)
    (data / "classes.json").write_text(json.dumps(CLASSES))
    image, truth = scene(7, 96, 128)
    write(tmp_path / "scene.tif", image, 610_000.0)
    write(tmp_path / "truth.tif", truth[None], 610_000.0)

    # 1. Train (folder data: 8 train, 1 val, 1 test patch of 32 px), 2 epochs of a tiny model.
    geoddu_cli("train", "--dataset", "folder", "--data", "data", "-o", "run", "--patch-size",
               "32", "--subimages", "2x2", "--depth", "2", "--base-channels", "4",
               "--comm-features", "8", "--epochs", "2", "--batch-size", "4", "--lr", "0.01",
               "-q", cwd=tmp_path)
    model = tmp_path / "model.pt"
    shutil.copyfile(tmp_path / "run" / "best.pt", model)
    trained_card = torch.load(model, weights_only=True)["card"]
    assert trained_card["test"]["evaluated"] is True  # the training data's test split

    # 2. Segment a scene the model has not seen; 3. sample the map.
    geoddu_cli("segment", "scene.tif", "-o", "map.tif", "-m", "model.pt", "-q", cwd=tmp_path)
    geoddu_cli("sample", "map.tif", "-o", "points.gpkg", "--n", "80", "--min-per-class", "20",
               "--seed", "3", "-q", cwd=tmp_path)

    # 4. Label each point from the truth raster, read at the point's coordinates.
    points = gpd.read_file(tmp_path / "points.gpkg")
    with rasterio.open(tmp_path / "truth.tif") as src:
        truth_at = [int(v[0]) for v in src.sample([(p.x, p.y) for p in points.geometry])]
    points["reference"] = [CLASSES[v]["name"] for v in truth_at]
    points.to_file(tmp_path / "points.gpkg", layer="points")

    # 5. Assess, into the model's card.
    before = weights(model)
    r = geoddu_cli("assess", "map.tif", "-r", "points.gpkg", "--class-column", "reference",
                   "--into", "model.pt", "--json", cwd=tmp_path)
    figures = json.loads(r.stdout)
    assert figures["into"] == "model.pt" and figures["used"] == len(points)

    # The figures are geoddu.accuracy's, computed here from the points and the map directly.
    with rasterio.open(tmp_path / "map.tif") as src:
        mapped_px = np.bincount(src.read(1).ravel(), minlength=256)[:2]
    ids = figures["class_ids"]
    assert figures["mapped_pixels"] == mapped_px[ids].tolist()
    counts = np.zeros((len(ids), len(ids)), int)
    for mapped, ref in zip(points["map_class"], truth_at, strict=True):
        counts[ids.index(int(mapped)), ids.index(ref)] += 1
    assert figures["sample_counts"] == counts.tolist()
    direct = estimate(counts, mapped_px[ids] * PIXEL * PIXEL / 10_000,
                      classes=[CLASSES[i]["name"] for i in ids])
    want = direct.to_dict()
    for key in ("overall_accuracy", "users_accuracy", "producers_accuracy", "area", "f1", "iou",
                "quantity_disagreement", "allocation_disagreement", "proportions"):
        np.testing.assert_allclose(flat(figures[key]), flat(want[key]), rtol=1e-12,
                                   err_msg=key)
    again = geoddu.assess(tmp_path / "map.tif", tmp_path / "points.gpkg",
                          class_column="reference").to_dict()
    assert {k: v for k, v in figures.items() if k not in ("into", "map", "reference")} == \
        {k: v for k, v in again.items() if k not in ("map", "reference")}

    # The card holds the same figures, in its accuracy section.
    card = torch.load(model, weights_only=True)["card"]
    acc = card["accuracy"]
    assert (acc["map"], acc["reference"], acc["design"]) == ("map.tif", "points.gpkg",
                                                             "stratified")
    assert acc["sample_size"] == figures["used"] and acc["skipped"] == 0
    assert acc["overall_accuracy"] == figures["overall_accuracy"]
    assert acc["quantity_disagreement"] == figures["quantity_disagreement"]
    assert acc["allocation_disagreement"] == figures["allocation_disagreement"]
    for i, c in enumerate(acc["classes"]):
        assert (c["id"], c["name"]) == (ids[i], figures["classes"][i])
        assert c["mapped_pixels"] == figures["mapped_pixels"][i]
        assert c["mapped_area_ha"] == figures["mapped_area"][i]
        for key, name in (("users_accuracy", "users_accuracy"),
                          ("producers_accuracy", "producers_accuracy"), ("area_ha", "area")):
            assert c[key] == {f: figures[name][f][i] for f in ("estimate", "se", "ci")}, key
        assert (c["f1"], c["iou"]) == (figures["f1"][i], figures["iou"][i])
    # Everything else in the card, and every weight, is as training wrote it.
    assert {k: v for k, v in card.items() if k != "accuracy"} == trained_card
    assert weights(model) == before

    # 6. `geoddu info -m` prints it.
    info = geoddu_cli("info", "-m", "model.pt", cwd=tmp_path).stdout
    oa = figures["overall_accuracy"]
    assert f"overall accuracy {oa['estimate']:.3f} ± {oa['ci']:.3f} (95%), " \
           f"{figures['used']} points, stratified design; map.tif against points.gpkg" in info
    assert "mIoU" in info and "test patches" in info
