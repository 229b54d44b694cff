"""Users' own data: GeoTIFF images with label rasters or vector labels rasterised per window."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from geoddu.data import open_dataset
from geoddu.data.base import IGNORE, load_classes_file
from geoddu.errors import GeodduError
from geoddu.io.vector import rasterize_labels

UTM = CRS.from_epsg(32631)
TRANSFORM = Affine(2.0, 0, 600000.0, 0, -2.0, 5770000.0)
CLASSES = [{"name": "background", "color": [0, 0, 0]},
           {"name": "building", "color": [220, 20, 60]},
           {"name": "water", "color": [0, 0, 255]}]


def _tif(path, array, dtype, nodata=None, crs=UTM, transform=TRANSFORM):
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(array.astype(dtype))


def _folder(tmp_path, dtype="uint8"):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for name, (h, w) in {"a": (80, 100), "b": (64, 64)}.items():
        _tif(root / "images" / f"{name}.tif", rng.integers(0, 200, (2, h, w)), dtype)
        labels = rng.integers(0, 3, (h, w))
        labels[0, 0] = 9  # label nodata
        _tif(root / "labels" / f"{name}.tif", labels, "uint8", nodata=9)
        truth[name] = labels
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root, truth


def test_raster_labels_patches_and_padding(tmp_path):
    root, truth = _folder(tmp_path)
    datasets = {s: open_dataset("folder", root, s, patch_size=32, seed=1) for s in
                ("train", "val", "test")}
    ds = datasets["train"]
    assert ds.bands == [1, 2] and ds.normalization == {"mean": [0.0, 0.0], "std": [255.0, 255.0]}
    assert [c["name"] for c in ds.classes] == ["background", "building", "water"]
    assert ds.ignore_index == IGNORE
    # a: 80 x 100 -> 3 x 4 patches (edges padded), b: 64 x 64 -> 2 x 2.
    everything = sorted(sum((d.items for d in datasets.values()), []))
    assert everything == sorted(ds.patches) and len(everything) == 16
    for k, (n, r, c) in enumerate(ds.items):
        image, labels = ds[k]
        name = ds.image_paths[n].stem
        want = np.full((32, 32), IGNORE)
        part = truth[name][r : r + 32, c : c + 32]
        want[: part.shape[0], : part.shape[1]] = np.where(part == 9, IGNORE, part)
        assert image.shape == (2, 32, 32)
        assert np.array_equal(labels, want)
        if part.shape != (32, 32):
            assert (image[:, part.shape[0]:, :] == 0).all()  # padding = the band mean (0)


def test_non_8bit_images_are_standardised(tmp_path):
    root, _ = _folder(tmp_path, dtype="uint16")
    ds = open_dataset("folder", root, "train", patch_size=32)
    assert all(90 < m < 110 for m in ds.normalization["mean"])
    assert all(50 < s < 65 for s in ds.normalization["std"])
    # The estimate depends only on the training patches: every split gets the same numbers.
    assert open_dataset("folder", root, "val", patch_size=32).normalization == ds.normalization


def test_value_mapping_from_a_yaml_file(tmp_path):
    root, truth = _folder(tmp_path)
    (root / "classes.json").unlink()
    (root / "classes.yaml").write_text(
        "classes:\n"
        "  - {name: background, color: [0, 0, 0], value: 2}\n"
        "  - {name: other, color: [9, 9, 9], value: 0}\n"
    )
    ds = open_dataset("folder", root, "train", patch_size=64)
    n, r, c = ds.items[0]
    _, labels = ds[0]
    part = truth[ds.image_paths[n].stem][r : r + 64, c : c + 64]
    h, w = part.shape
    want = np.select([part == 2, part == 0], [0, 1], IGNORE)
    assert np.array_equal(labels[:h, :w], want)


def test_rasterize_labels_reprojects_and_windows(tmp_path):
    # One building polygon covering pixels rows 10-19, cols 20-39 of the raster, stored in
    # EPSG:4326 so the function must reproject it to the raster's UTM.
    x0, y0 = TRANSFORM * (20, 10)
    x1, y1 = TRANSFORM * (40, 20)
    frame = gpd.GeoDataFrame({"kind": ["building", "lake"]},
                             geometry=[box(x0, y1, x1, y0), box(x0, y1 - 400, x1, y0 - 400)],
                             crs=UTM).to_crs(4326)
    path = tmp_path / "labels.gpkg"
    frame.to_file(path)
    ids = {"building": 1, "lake": 2}
    window = TRANSFORM * Affine.translation(16, 8)  # the window starting at row 8, col 16
    out = rasterize_labels(path, "kind", window, (16, 32), UTM, ids, fill=0)
    want = np.zeros((16, 32), np.uint8)
    want[2:12, 4:24] = 1
    # Reprojection moves the corners by far less than a pixel: allow only the edge pixels.
    assert (out != want).sum() <= 4
    far = TRANSFORM * Affine.translation(1000, 1000)
    assert (rasterize_labels(path, "kind", far, (8, 8), UTM, ids) == 255).all()


def test_vector_labels_folder(tmp_path):
    root = tmp_path / "vec"
    (root / "images").mkdir(parents=True)
    _tif(root / "images" / "scene.tif", np.full((3, 64, 96), 100), "uint8")
    x0, y0 = TRANSFORM * (0, 0)
    x1, y1 = TRANSFORM * (48, 32)
    gpd.GeoDataFrame({"landuse": [7]}, geometry=[box(x0, y1, x1, y0)], crs=UTM).to_file(
        root / "labels.geojson")
    (root / "classes.json").write_text(json.dumps(
        {"classes": [{"name": "background", "color": [0, 0, 0]},
                     {"name": "field", "color": [0, 200, 0], "value": 7}],
         "column": "landuse", "fill": "background"}))
    ds = open_dataset("folder", root, "train", patch_size=32, val_fraction=0.2,
                      test_fraction=0.2)
    seen = {}
    for k, (_, r, c) in enumerate(ds.items):
        seen[(r, c)] = ds[k][1]
    for (r, c), labels in seen.items():
        inside = (r == 0) and c < 48
        if c == 32 and r == 0:
            assert (labels[:, :16] == 1).all() and (labels[:, 16:] == 0).all()
        elif inside:
            assert (labels == 1).all()
        else:
            assert (labels == 0).all()
    (root / "classes.json").write_text(json.dumps([{"name": "background", "color": [0, 0, 0]}]))
    with pytest.raises(GeodduError, match="--class-column"):
        open_dataset("folder", root, "train", patch_size=32)
    with pytest.raises(GeodduError, match="values 7 match no class"):
        open_dataset("folder", root, "train", patch_size=32, class_column="landuse")


def test_folder_errors_name_what_is_missing(tmp_path):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    with pytest.raises(GeodduError, match=r"no images \(\*\.tif\)"):
        open_dataset("folder", root, "train")
    _tif(root / "images" / "x.tif", np.zeros((1, 8, 8)), "uint8")
    with pytest.raises(GeodduError, match="no classes file"):
        open_dataset("folder", root, "train")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    with pytest.raises(GeodduError, match="no labels"):
        open_dataset("folder", root, "train")
    (root / "labels").mkdir()
    with pytest.raises(GeodduError, match="no label raster"):
        open_dataset("folder", root, "train")
    _tif(root / "labels" / "x.tif", np.zeros((1, 9, 8)), "uint8")
    with pytest.raises(GeodduError, match="8 x 9 px, but its image is 8 x 8"):
        open_dataset("folder", root, "train")


def test_classes_file_checks(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps([{"name": "a", "color": [1, 2]}]))
    with pytest.raises(GeodduError, match="colour"):
        load_classes_file(bad)
    bad.write_text("{nope")
    with pytest.raises(GeodduError, match="not valid JSON"):
        load_classes_file(bad)
    good = tmp_path / "c.yml"
    good.write_text("- water\n- {name: land, color: [1, 2, 3]}\n")
    classes = load_classes_file(good)["classes"]
    assert [c["name"] for c in classes] == ["water", "land"] and classes[1]["color"] == [1, 2, 3]
