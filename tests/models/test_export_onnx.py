"""`geoddu export`: one ONNX graph that onnxruntime (and so QGIS's Deepness) runs exactly as
`predict` does, with the metadata Deepness reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.checkpoint import save_checkpoint
from geoddu.checkpoint_metadata import build_metadata
from geoddu.models import create_model
from geoddu.predictor import load_model

ort = pytest.importorskip("onnxruntime")

CLASSES = [
    {"name": "water", "color": [0, 0, 255]},
    {"name": "forest", "color": [0, 128, 0]},
    {"name": "field", "color": [230, 200, 0]},
    {"name": "built", "color": [200, 0, 0]},
]
# Not the 8-bit default: the graph must apply the checkpoint's own normalisation.
NORM = {"mean": [90.0, 110.0, 70.0], "std": [40.0, 55.0, 35.0]}


def _checkpoint(path: Path, name: str = "DDU-Net(2,8,Y)", **kw) -> Path:
    torch.manual_seed(1)
    model = create_model(name, in_channels=3, num_classes=4, base_channels=4, **kw)
    for m in model.modules():
        # BatchNorm statistics that are not the identity, so the folded graph is exercised.
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    data = {"pixel_size": [0.5, 0.5], "units": "metre", "dtype": "uint8",
            "value_range": None, "value_range_from": "dtype"}
    meta = build_metadata(model.config, classes=CLASSES, normalization=NORM,
                          subimage_size=32 if model.stride <= 32 else model.stride, data=data)
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("export") / "model.pt")


def _export(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["export", *map(str, args)])
    return r.exit_code, r.output


def _images(h: int, w: int, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (batch, 3, h, w), dtype=np.uint8)
    # Real-valued, past the 8-bit range too: the float graph takes raw values of any scale.
    f32 = rng.uniform(-20, 300, (batch, 3, h, w)).astype(np.float32)
    return u8, f32


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _compare(model, images: np.ndarray, probs: np.ndarray) -> float:
    """Classes must equal `predict`'s exactly; returns the max |probability difference|."""
    worst = 0.0
    for image, p in zip(images, probs, strict=True):
        classes, logits = model.predict(image, return_logits=True)
        ref = torch.softmax(torch.from_numpy(logits), 0).numpy()
        assert int((p.argmax(0) != classes).sum()) == 0
        worst = max(worst, float(np.abs(p - ref).max()))
    return worst


def test_export_equals_predict_float_and_uint8(ckpt: Path, tmp_path: Path) -> None:
    model = load_model(ckpt)
    # 2 x 3 subimages of 32 (the checkpoint's size, so `predict` cuts the same grid); not
    # square, so rows and columns cannot be swapped unnoticed.
    f_onnx, u_onnx = tmp_path / "f.onnx", tmp_path / "u.onnx"
    code, out = _export("-m", ckpt, "-o", f_onnx, "--size", 64, 96, "--subimages", "2x3")
    assert code == 0, out
    assert "Deepness plugin only cuts square tiles" in out
    assert "wrote" in out and "max |prob diff|" in out
    code, out = _export("-m", ckpt, "-o", u_onnx, "--size", 64, 96, "--input", "uint8")
    assert code == 0, out
    u8, f32 = _images(64, 96)
    # A batch of two images: each its own mosaic, as two separate `predict` calls.
    diffs = {
        "uint8": _compare(model, u8, _run(u_onnx, u8)),
        "float32 (8-bit values)": _compare(model, u8, _run(f_onnx, u8.astype(np.float32))),
        "float32": _compare(model, f32, _run(f_onnx, f32)),
    }
    print("max |prob diff| vs predict:", diffs)
    assert max(diffs.values()) <= 1e-4
    with pytest.raises(Exception, match="(?i)type"):
        _run(u_onnx, f32)  # the uint8 graph takes only uint8


def test_deepness_reads_and_runs_it(ckpt: Path, tmp_path: Path) -> None:
    """The model as PUTvision/qgis-plugin-deepness (model_base.py, f450c63) loads and feeds it:
    metadata parsed with json.loads, NHWC tiles / 255, standardised from the metadata, NCHW."""
    path = tmp_path / "m.onnx"
    code, out = _export("-m", ckpt, "-o", path, "--size", 64, 64, "--subimages", 2, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["subimages"] == [2, 2] and report["ir_version"] <= 8 and report["opset"] == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert str(json.loads(meta["model_type"])).capitalize() == "Segmentor"
    names = sorted(json.loads(meta["class_names"]).items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in names] == [0, 1, 2, 3]
    assert [v for _, v in names] == [c["name"] for c in CLASSES]
    colors = json.loads(meta["class_colors"])
    assert [colors[str(k)] for k in range(4)] == [c["color"] for c in CLASSES]
    assert float(json.loads(meta["resolution"])) == 50.0  # 0.5 m pixels in the checkpoint
    assert int(json.loads(meta["tile_size"])) == 64
    assert int(json.loads(meta["tiles_overlap"])) == 15
    assert float(json.loads(meta["seg_thresh"])) == 0.0
    assert int(json.loads(meta["seg_small_segment"])) == 0
    assert json.loads(meta["geoddu"])["normalization"] == NORM
    (inp,) = sess.get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]  # dynamic batch
    assert inp.type == "tensor(float)"
    (outp,) = sess.get_outputs()
    assert outp.shape[1:] == [4, 64, 64]

    u8, _ = _images(64, 64, batch=3)
    tiles = u8.transpose(0, 2, 3, 1)  # what Deepness reads: (N, H, W, C)
    mean = np.array(json.loads(meta["standardization_mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["standardization_std"]), dtype=np.float32)
    x = (np.float32(tiles * 1.0 / 255.0) - mean) / std
    probs = sess.run(None, {inp.name: np.transpose(x, (0, 3, 1, 2))})[0]
    assert np.allclose(probs.sum(1), 1, atol=1e-5)  # softmax, what Deepness argmaxes
    diff = _compare(load_model(ckpt), u8, probs)
    print("Deepness path max |prob diff| vs predict:", diff)
    assert diff <= 1e-4


@pytest.mark.parametrize(
    "name, kw",
    [("DDU-Net(2,8,N)", {}), ("resnet18", {"comm_features": 32, "depth": 4})],
    ids=["no-communication", "resnet18"],
)
def test_other_architectures(name: str, kw: dict, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", name, **kw)
    path = tmp_path / "m.onnx"
    code, out = _export("-m", ckpt, "-o", path, "--size", 64, 64, "--subimages", 2)
    assert code == 0, out
    u8, _ = _images(64, 64, batch=1)
    diff = _compare(load_model(ckpt), u8, _run(path, u8.astype(np.float32)))
    print(name, "max |prob diff| vs predict:", diff)
    assert diff <= 1e-4


def test_one_line_errors(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.onnx"
    for args, needle in [
        (("--size", 100, 64, "--subimages", 2),
         "height 100 is not a multiple of 2 subimage rows x model stride 4 = 8; "
         "use e.g. 96 or 104"),
        (("--size", 64, 40, "--subimages", "1x3"),
         "width 40 is not a multiple of 3 subimage columns x model stride 4 = 12; "
         "use e.g. 36 or 48"),
        (("--size", 64, 48), "size 64 x 48 is not a multiple of the checkpoint's subimage size 32"),
        (("--size", 64, 64, "--subimages", "2x"), "use P (P x P) or NxM"),
        (("--size", 64, 64, "--input", "int16"), "'int16' is not one of 'float32', 'uint8'"),
        (("--size", 64, 64, "--opset", 9), "9 is not in the range 10<=x<=20"),
    ]:
        code, text = _export("-m", ckpt, "-o", out, *args)
        lines = text.strip().splitlines()
        assert code != 0 and len(lines) == 1, text
        assert lines[0].startswith("Error:") and needle in lines[0], text
    assert list(tmp_path.iterdir()) == []


def test_real_subprocess(ckpt: Path, tmp_path: Path) -> None:
    geoddu = [sys.executable, "-m", "geoddu.cli", "export", "-m", str(ckpt), "--size", "32", "32"]
    out = tmp_path / "m.onnx"

    def run(*args, env=None) -> subprocess.CompletedProcess:
        return subprocess.run([*geoddu, *map(str, args)], capture_output=True, text=True,
                              env=env)

    r = run("-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "" and out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left
    code, text = _export("-m", ckpt, "-o", out, "--size", 32, 32)
    assert code == 1 and text.strip() == f"Error: {out} exists; pass --overwrite to replace it"

    # Without onnxruntime (shadowed here by a module that fails to import, as a missing one
    # does), the error names the extra that installs it.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "onnxruntime.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    r = run("-o", tmp_path / "b.onnx", env={**os.environ, "PYTHONPATH": str(shadow)})
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "Error: ONNX export needs the onnxruntime package: pip install 'geoddu[onnx]'"
    )
    assert not (tmp_path / "b.onnx").exists()


def test_the_light_cli_constants_are_the_modules() -> None:
    """cli/export.py keeps torch out of `--help` with its own copies: they must not drift."""
    from geoddu.cli import export

    from geoddu import export_onnx

    assert export.INPUT_DTYPES == export_onnx.INPUT_DTYPES
    assert export.OPSETS == export_onnx.OPSETS
    defaults = {p.name: p.default for p in export.export.params}
    assert defaults["opset"] == export_onnx.DEFAULT_OPSET
    assert defaults["tiles_overlap"] == export_onnx.DEFAULT_TILES_OVERLAP
