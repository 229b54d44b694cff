"""Fuzzing every file geoddu reads, through the real CLI (issue 26).

Valid seed files (GeoTIFFs written by rasterio and by tifffile, a checkpoint, classes files,
vector areas of interest, segment and train requests) are mutated by Hypothesis: bytes flipped,
truncated, spliced and overwritten, TIFF tags rewritten, checkpoint fields and tensors replaced,
JSON values swapped, YAML alias bombs, deep nesting, broken geometries. Each case is one
command line; worker processes call the CLI's entry point in-process, one case after another,
so thousands fit in minutes. The parent watches them: a case passes when it

* exits 0 and every output it names reads back in full, or
* exits 1 or 2 with one ``Error:`` line on stderr (after any ``Warning:`` lines) and nothing
  left in its output folder;

it fails on a traceback, any other stderr line, another exit status, a hang longer than the
timeout, a peak RSS above the limit, or files left behind.

Used by ``tests/cli/test_fuzz.py`` (a fixed seed, in CI) and ``benchmarks/fuzz.py``, which run
the cases drawn here with ``fuzz_runner``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from fuzz_runner import TARGETS, Case


# -- the seed corpus ----------------------------------------------------------------------------
def build_corpus(d: Path) -> dict[str, Path]:
    """Valid inputs, one of each kind geoddu reads."""
    import geopandas as gpd
    import rasterio
    import shapely
    import tifffile
    from helpers import make_checkpoint, write_geotiff

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    c: dict[str, Path] = {}
    c["model"] = make_checkpoint(d / "model.pt", in_channels=3, num_classes=4, subimage_size=32)
    c["scene"] = write_geotiff(d / "scene.tif", rng.integers(0, 255, (3, 40, 56), np.uint8),
                               tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    c["strips"] = write_geotiff(d / "strips.tif",
                                rng.integers(0, 4000, (3, 33, 47)).astype(np.uint16),
                                nodata=0, compress="lzw", predictor=2)
    masked = d / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_geotiff(masked, rng.normal(0, 1, (3, 32, 32)).astype(np.float32))
        with rasterio.open(masked, "r+") as ds:
            m = np.full((32, 32), 255, np.uint8)
            m[:8] = 0
            ds.write_mask(m)
    c["masked"] = masked
    c["plain"] = d / "plain.tif"
    tifffile.imwrite(c["plain"], rng.integers(0, 255, (40, 40, 3), np.uint8), photometric="rgb")
    c["plain_tiled"] = d / "plain_tiled.tif"
    tifffile.imwrite(c["plain_tiled"], rng.integers(0, 255, (3, 48, 48), np.uint8),
                     tile=(16, 16), compression="zlib", photometric="minisblack",
                     planarconfig="separate")
    c["classes.yaml"] = d / "classes.yaml"
    c["classes.yaml"].write_text("classes:\n  - water\n  - {name: forest, color: [0, 128, 0]}\n"
                                 "  - urban\n  - crops\ncolumn: landuse\n")
    c["classes.json"] = d / "classes.json"
    c["classes.json"].write_text(json.dumps(
        [{"name": "water", "color": [0, 0, 255]}, {"name": "forest"}, "urban", "crops"]))
    with rasterio.open(c["scene"]) as ds:
        b = ds.bounds
        crs = ds.crs
    poly = shapely.box(b.left + 3, b.bottom + 3, b.right - 5, b.top - 4)
    frame = gpd.GeoDataFrame({"name": ["farm"]}, geometry=[poly], crs=crs)
    for ext, driver in ((".gpkg", "GPKG"), (".geojson", "GeoJSON"), (".shp", "ESRI Shapefile")):
        frame.to_file(d / f"aoi{ext}", driver=driver)
        c[f"aoi{ext}"] = d / f"aoi{ext}"
    c["segment.json"] = d / "segment.json"
    c["segment.json"].write_text(json.dumps({"src": "SCENE", "output": "OUT/map.tif",
                                             "model": "MODEL", "subimage_size": 32}))
    data = d / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for name in "abc":
        write_geotiff(data / "images" / f"{name}.tif",
                      rng.integers(0, 255, (3, 32, 32), np.uint8))
        write_geotiff(data / "labels" / f"{name}.tif", rng.integers(0, 4, (1, 32, 32), np.uint8))
    (data / "classes.json").write_text('["water", "forest", "urban", "crops"]')
    c["data"] = data
    c["train.json"] = d / "train.json"
    c["train.json"].write_text(json.dumps({
        "dataset": "folder", "data": "DATA", "run_dir": "OUT/run", "epochs": 1, "patch_size": 16,
        "depth": 2, "base_channels": 4, "comm_features": 4, "subimages": [1, 1], "batch_size": 1,
        "num_classes": 4,
    }))
    return c


# -- mutations ----------------------------------------------------------------------------------
# Tags whose values steer a TIFF reader: sizes, samples, types, compression, the offsets and
# byte counts of strips and tiles, GDAL's nodata and metadata, georeferencing.
TIFF_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338,
             339, 33550, 33922, 34735, 42112, 42113)


def tiff_tag_slots(path: Path) -> list[tuple[int, int, int]]:
    """(file offset of the tag's value, its size in bytes, tag code) for the steering tags."""
    import tifffile

    slots = []
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                for tag in page.tags.values():
                    if tag.code in TIFF_TAGS:
                        size = max(1, min(tag.valuebytecount, 64))
                        slots.append((tag.valueoffset, size, tag.code))
                        slots.append((tag.offset + 2, 2, tag.code))  # the tag's data type
    except Exception:  # noqa: BLE001 - a seed tifffile cannot parse has no slots
        pass
    return slots


def mutate_bytes(data: bytes, draw: Callable, st, slots=()) -> tuple[bytes, str]:
    """One byte-level mutation of `data`, drawn by Hypothesis."""
    n = len(data)
    kinds = ["flip", "truncate", "splice", "overwrite", "zero-run"] + (["tag"] if slots else [])
    kind = draw(st.sampled_from(kinds))
    buf = bytearray(data)
    if kind == "flip":
        k = draw(st.integers(1, 16))
        # Headers and directories are where parsers decide; bias to the first kilobyte.
        head = draw(st.booleans())
        hi = min(n, 1024) if head else n
        for _ in range(k):
            i = draw(st.integers(0, hi - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf), f"flip {k} bits ({'head' if head else 'anywhere'})"
    if kind == "truncate":
        at = draw(st.integers(0, n - 1))
        return bytes(buf[:at]), f"truncate at {at}/{n}"
    if kind == "splice":
        a, b = sorted((draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))))
        at = draw(st.integers(0, n - 1))
        chunk = buf[a : b + 1]
        out = buf[:at] + chunk + buf[at + len(chunk):]
        return bytes(out[: max(n, len(out))]), f"splice {len(chunk)} bytes to {at}"
    if kind == "overwrite":
        at = draw(st.integers(0, n - 1))
        value = draw(st.binary(min_size=1, max_size=8))
        buf[at : at + len(value)] = value
        return bytes(buf), f"overwrite {len(value)} bytes at {at}"
    if kind == "zero-run":
        at = draw(st.integers(0, n - 1))
        k = draw(st.integers(1, 4096))
        buf[at : at + k] = bytes(min(k, n - at))
        return bytes(buf), f"zero {k} bytes at {at}"
    offset, size, code = draw(st.sampled_from(list(slots)))
    value = draw(st.sampled_from([
        b"\x00" * size, b"\xff" * size,
        struct.pack("<I", draw(st.integers(0, 2**32 - 1)))[:size].ljust(size, b"\x00"),
        struct.pack("<H", draw(st.integers(0, 2**16 - 1)))[:size].ljust(size, b"\x00"),
    ]))
    buf[offset : offset + size] = value
    return bytes(buf), f"tag {code}: {value[:8].hex()}"


JSON_VALUES = None  # built lazily: a Hypothesis strategy of any JSON value


def json_values(st):
    global JSON_VALUES
    if JSON_VALUES is None:
        scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64)
                   | st.floats(allow_nan=False) | st.text(max_size=20)
                   | st.sampled_from([0, -1, 1e308, 2**31, "", "..", "/", "cuda", "nan"]))
        JSON_VALUES = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                                   | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                                   max_leaves=8)
    return JSON_VALUES


def mutate_json(doc, draw, st) -> tuple[object, str]:
    """Replace, delete or add one field; or nest the document deeply."""
    kind = draw(st.sampled_from(["replace", "delete", "add", "nest", "type"]))
    if kind == "nest":
        depth = draw(st.sampled_from([100, 10_000, 100_000]))
        return "[" * depth + "]" * depth, f"nested {depth} deep"
    if not isinstance(doc, dict) or not doc:
        return draw(json_values(st)), "whole document replaced"
    doc = dict(doc)
    key = draw(st.sampled_from(sorted(doc)))
    if kind == "replace":
        doc[key] = draw(json_values(st))
        return doc, f"{key} = {json.dumps(doc[key])[:40]}"
    if kind == "delete":
        del doc[key]
        return doc, f"without {key}"
    if kind == "type":
        doc[key] = [doc[key]] if not isinstance(doc[key], list) else {"x": doc[key]}
        return doc, f"{key} wrapped"
    new = draw(st.text(min_size=1, max_size=12))
    doc[new] = draw(json_values(st))
    return doc, f"extra field {new!r}"


YAML_BOMB = ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\n"
             "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nclasses: [*g, *g, *g, *g, *g, *g]\n")


# -- cases ------------------------------------------------------------------------------------
def draw_case(i: int, draw, st, corpus: dict[str, Path], root: Path,
              targets: tuple[str, ...] = TARGETS) -> tuple[Case, dict]:
    """Case `i`: a target, a seed file, a mutation, a command line, and the files to write
    (path -> bytes, or a function that writes the path)."""
    target = draw(st.sampled_from(targets))
    folder = root / f"case{i:05d}"
    out = folder / "out"
    files = {}
    model, scene = str(corpus["model"]), str(corpus["scene"])
    seg = ["segment", "-q", "-o", str(out / "map.tif")]
    if target in ("geotiff", "tiff"):
        names = (["scene", "strips", "masked"] if target == "geotiff"
                 else ["plain", "plain_tiled"])
        seed = corpus[draw(st.sampled_from(names))]
        data, how = mutate_bytes(seed.read_bytes(), draw, st, tiff_tag_slots(seed))
        src = folder / "in.tif"
        files[src] = data
        bands = ["--bands", "1,2,3"] if draw(st.booleans()) else []
        return Case(i, target, f"{seed.name}: {how}",
                    [*seg, "-m", model, *bands, "--", str(src)], str(folder), ["out/map.tif"]
                    ), files
    if target == "checkpoint":
        path = folder / "model.pt"
        if draw(st.booleans()):
            data, how = mutate_bytes(corpus["model"].read_bytes(), draw, st)
            files[path] = data
        else:
            how, files[path] = mutate_checkpoint(corpus["model"], draw, st)
        if draw(st.booleans()):
            return Case(i, target, how, ["info", "-m", str(path), "--json"], str(folder),
                        []), files
        return Case(i, target, how, [*seg, "-m", str(path), "--", scene], str(folder),
                    ["out/map.tif"]), files
    if target == "classes":
        ext = draw(st.sampled_from([".yaml", ".json"]))
        path = folder / f"classes{ext}"
        choice = draw(st.sampled_from(["bytes", "json", "bomb"]))
        if choice == "bytes":
            data, how = mutate_bytes(corpus[f"classes{ext}"].read_bytes(), draw, st)
            files[path] = data
        elif choice == "bomb":
            files[path] = YAML_BOMB.encode()
            how = "YAML alias bomb"
        else:
            doc, how = mutate_json(json.loads(corpus["classes.json"].read_text())
                                   if ext == ".json" else {"classes": ["water", "forest"],
                                                           "column": "landuse"}, draw, st)
            files[path] = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        return Case(i, target, how,
                    ["init", "-o", str(out / "m.pt"), "--classes-file", str(path), "--depth", "2",
                     "--base-channels", "4", "--comm-features", "4"], str(folder), ["out/m.pt"]
                    ), files
    if target == "aoi":
        ext = draw(st.sampled_from([".gpkg", ".geojson", ".shp"]))
        path = folder / f"aoi{ext}"
        if draw(st.booleans()):
            how, files[path] = odd_aoi(corpus[f"aoi{ext}"], draw, st)
        else:
            for part in sorted(corpus[f"aoi{ext}"].parent.glob("aoi.*")):
                if ext == ".shp" or part.suffix == ext:
                    files[folder / part.name] = part.read_bytes()
            victim = path if ext != ".shp" else folder / draw(
                st.sampled_from(["aoi.shp", "aoi.shx", "aoi.dbf", "aoi.prj"]))
            data, how = mutate_bytes(files[victim], draw, st)
            files[victim] = data
            how = f"{victim.name}: {how}"
        return Case(i, target, how, [*seg, "-m", model, "--aoi", str(path), "--", scene],
                    str(folder), ["out/map.tif"]), files
    name = "segment.json" if target == "segment-request" else "train.json"
    # Paths relative to the case's folder (the worker runs each case there): the document,
    # and so every offset drawn in it, is the same whatever folder the run uses, so a seed
    # draws the same cases on every machine.
    up = os.path.relpath(corpus["model"].parent, folder)
    text = (corpus[name].read_text().replace("SCENE", f"{up}/scene.tif")
            .replace("MODEL", f"{up}/model.pt").replace("DATA", f"{up}/data")
            .replace("OUT", "out"))
    path = folder / name
    if draw(st.booleans()):
        data, how = mutate_bytes(text.encode(), draw, st)
        files[path] = data
    else:
        doc, how = mutate_json(json.loads(text), draw, st)
        files[path] = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
    # A mutation may have moved the output elsewhere: then what it wrote is not checked.
    # A mutation may have renamed or moved the output: whatever a successful run wrote into
    # out/ must read back ("*").
    if target == "segment-request":
        return Case(i, target, how, ["segment", "-q", "--request", str(path)], str(folder),
                    ["*"]), files
    return Case(i, target, how, ["train", "-q", "--request", str(path)], str(folder),
                ["*"]), files


def mutate_checkpoint(src: Path, draw, st) -> tuple[str, Callable[[Path], None]]:
    """A field of the checkpoint replaced: a config value, a tensor, the classes, the card."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    part = draw(st.sampled_from(["config", "tensor", "dtype", "classes", "card", "key"]))
    if part == "config":
        key = draw(st.sampled_from(sorted(ckpt["config"])))
        ckpt["config"][key] = draw(json_values(st) | st.sampled_from([10**6, 0, -3, 2**40]))
        how = f"config {key} = {str(ckpt['config'][key])[:40]}"
    elif part in ("tensor", "dtype"):
        state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt["model"]
        key = draw(st.sampled_from(sorted(state)))
        t = state[key]
        if part == "tensor":
            shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=4))
            state[key] = torch.zeros(shape)
            how = f"{key}: shape {shape}"
        else:
            dt = draw(st.sampled_from([torch.float16, torch.int64, torch.bool, torch.float64]))
            state[key] = t.to(dt)
            how = f"{key}: {dt}"
    elif part == "key":
        key = draw(st.sampled_from(sorted(ckpt)))
        ckpt[key] = draw(json_values(st))
        how = f"{key} = {str(ckpt[key])[:40]}"
    else:
        ckpt[part] = draw(json_values(st))
        how = f"{part} = {str(ckpt[part])[:40]}"
    return how, lambda dst: torch.save(ckpt, dst)


def odd_aoi(src: Path, draw, st) -> tuple[str, Callable[[Path], None]]:
    """An area of interest that is valid to OGR but odd: bad geometry, empty, huge, other CRS."""
    import geopandas as gpd
    import shapely

    base = gpd.read_file(src)
    kind = draw(st.sampled_from(["empty", "bowtie", "huge", "crs", "none", "points", "far"]))
    g = base.geometry.iloc[0]
    x0, y0, x1, y1 = g.bounds
    crs = base.crs
    if kind == "empty":
        frame = base.iloc[:0]
    elif kind == "bowtie":
        frame = base.set_geometry([shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])])
    elif kind == "huge":
        frame = base.set_geometry([shapely.box(-1e300, -1e300, 1e300, 1e300)])
    elif kind == "crs":
        crs = draw(st.sampled_from(["EPSG:4326", "EPSG:3857", "EPSG:32633"]))
        frame = base.set_crs(crs, allow_override=True)
    elif kind == "none":
        frame = base.set_geometry([None])
    elif kind == "points":
        frame = base.set_geometry([shapely.Point(x0, y0)])
    else:
        frame = base.set_geometry([shapely.box(x0 + 1e6, y0, x1 + 1e6, y1)])
    return f"{kind} area", lambda path: frame.to_file(path)


def draw_cases(n: int, seed: int, root: Path, corpus: dict[str, Path],
               targets: Iterable[str] = TARGETS) -> list[Case]:
    """`n` cases, the same for the same seed (Hypothesis, generation only, no database)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    targets = tuple(targets)
    recipes: list[tuple[Case, dict]] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data) -> None:
        draw = data.draw
        recipes.append(draw_case(len(recipes), draw, st, corpus, root, targets))

    one()
    # The files are written once Hypothesis is done: its generation must not depend on them.
    cases = []
    for case, files in recipes:
        (Path(case.folder) / "out").mkdir(parents=True)
        try:
            for path, content in files.items():
                if callable(content):
                    content(path)
                else:
                    path.write_bytes(content)
        except Exception:  # noqa: BLE001 - a mutation the writer itself refused: no case
            shutil.rmtree(case.folder, ignore_errors=True)
            continue
        cases.append(case)
    return cases
