"""`geoddu convert`: a checkpoint of the paper's reference code computes the same logits here.

The reference model is geoddu/reference/model.py, a plain-torch copy of the reference's
layers and forward (its own module names, its own subimage loop), saved the way its training
script saves. Nothing in geoddu builds it: a wrong name mapping, a transposed grid or a
different normalisation shows up as differing logits.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli
from helpers import write_geotiff

import geoddu
from geoddu.reference.model import ReferenceDDUNet, copy_geoddu_weights, reference_for

GEODDU = [sys.executable, "-m", "geoddu.cli"]
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
SUB = 64  # subimage side; the scenes are 2 x 2 subimages


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics that are far from the identity."""
    g = torch.Generator().manual_seed(seed)
    comm = [model.communication_network] if model.comm else []
    with torch.no_grad():
        for m in (m for part in (model.encoders[0], model.decoders[0], *comm)
                  for m in part.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                # He initialisation (the paper's): torch's default shrinks the signal layer
                # by layer until every pixel gets the same class.
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                              generator=g)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    # Every clone holds clone 0's weights, as after each of the reference's training steps.
    for clones in (model.encoders, model.decoders):
        for clone in clones[1:]:
            clone.load_state_dict(clones[0].state_dict())
    return model.eval()


def reference_model(seed: int = 0, **kw) -> ReferenceDDUNet:
    torch.manual_seed(seed)
    args = dict(n_channels=3, n_classes=5, num_comm_fmaps=8, depth=3, subdom_dist=(2, 2),
                complexity=4, dropout_rate=0.1, kernel_size=5, padding=2)
    return randomise(ReferenceDDUNet(**{**args, **kw}), seed)


def scene_array(seed: int = 1, sub: int = SUB, rows: int = 2, cols: int = 2) -> np.ndarray:
    """A 3-band uint8 image of rows x cols subimages with some structure (not just noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : rows * sub, 0 : cols * sub]
    base = np.stack([(yy * 2) % 256, (xx * 3) % 256, ((xx + yy) * 5) % 256]).astype(float)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def reference_logits(ref: ReferenceDDUNet, image: np.ndarray) -> torch.Tensor:
    """The reference's transform (x / 255, ImageNet normalisation) and forward."""
    x = torch.from_numpy((image / 255.0 - MEAN[:, None, None]) / STD[:, None, None])
    with torch.no_grad():
        return ref.forward_image(x[None].float())[0]


def convert(*args) -> object:
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def max_diff(ours: np.ndarray | torch.Tensor, theirs: torch.Tensor) -> float:
    return float((torch.as_tensor(ours) - theirs).abs().max())


def float64_diff(model, ref: ReferenceDDUNet, image: np.ndarray) -> float:
    """Max |logit difference| of a loaded geoddu model and the reference, both in float64.

    geoddu's grid is (rows, columns); the reference's subdom_dist is (columns, rows)."""
    net = copy.deepcopy(model.net).double().to(memory_format=torch.contiguous_format)
    x = torch.from_numpy((image / 255.0 - MEAN[:, None, None]) / STD[:, None, None])[None]
    with torch.no_grad():
        theirs = copy.deepcopy(ref).double().forward_image(x)[0]
        return max_diff(net(x, (ref.ny, ref.nx))[0], theirs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, ReferenceDDUNet]:
    ref = reference_model()
    path = tmp_path_factory.mktemp("reference") / "unet.pth"
    ref.save_weights(path)
    return path, ref


def test_converted_logits_equal_the_reference(tmp_path, reference):
    path, ref = reference
    out = tmp_path / "model.pt"
    r = convert(path, "-o", out, "--communicate", "--class-names", "a,b,c,d,e",
                "--subimage-size", SUB)
    assert r.exit_code == 0, r.output
    assert "DDU-Net(3,8,Y), U-Net encoder, base 4, 3 bands, 5 classes" in r.stdout
    image = scene_array()
    theirs = reference_logits(ref, image)
    # The logits are not all alike: a wrong mapping could not pass by accident.
    assert float(theirs.std()) > 0.5 and len(torch.unique(theirs.argmax(0))) >= 3

    # In float64 the two compute the same function up to rounding far below float32's: the
    # mapping itself is exact (same weights in the same places, same grid, same order).
    exact = geoddu.load_model(out, fuse=False)
    assert exact.config["depth"] == 3 and exact.config["comm_features"] == 8
    assert [c["name"] for c in exact.classes] == list("abcde")
    diff64 = float64_diff(exact, ref, image)
    print(f"\nfloat64, geoddu model vs reference: max |logit diff| {diff64:.3g}")
    assert diff64 <= 1e-10

    # In float32 as users run it (predict: BatchNorm folded into the convs, channels-last,
    # the checkpoint's normalisation), only float32 rounding is left; it grows with the
    # logits' size, hence the tolerance relative to the largest logit.
    classes, logits = geoddu.load_model(out).predict(image, return_logits=True)
    diff = max_diff(logits, theirs)
    top = float(theirs.abs().max())
    differing = int((torch.from_numpy(classes) != theirs.argmax(0)).sum())
    print(f"float32 predict vs reference: max |logit diff| {diff:.3g} (largest |logit| "
          f"{top:.3g}, relative {diff / top:.2g}), {differing} differing pixels of "
          f"{classes.size}")
    assert diff <= 1e-5 * max(1.0, top) and differing == 0


def test_segment_of_a_converted_checkpoint_matches_the_reference(tmp_path, reference):
    """The user's path: `geoddu convert`, then `geoddu segment` on a GeoTIFF."""
    path, ref = reference
    image = scene_array()
    src = write_geotiff(tmp_path / "scene.tif", image)
    out, classes = tmp_path / "model.pt", tmp_path / "classes.tif"
    r = subprocess.run([*GEODDU, "convert", str(path), "-o", str(out), "--communicate",
                        "--subimage-size", str(SUB)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: DDU-Net(3,8,Y)")
    r = subprocess.run([*GEODDU, "segment", str(src), "-o", str(classes), "-m", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with rasterio.open(classes) as ds:
        ours = ds.read(1)
    theirs = reference_logits(ref, image).argmax(0).numpy()
    differing = int((ours != theirs).sum())
    print(f"\ngeoddu segment vs reference argmax: {differing} differing pixels of {ours.size}")
    assert differing == 0


def test_whole_state_dict_and_no_exchange_from_training_args(tmp_path):
    """A whole-model state dict behind DataParallel's `module.`, trained with C = N; the
    reference's training_args.json beside it says so, and gives the subimage size."""
    ref = reference_model(seed=3, comm_network_but_no_communication=True, depth=2,
                          complexity=8, n_classes=3)
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, folder / "unet.pth")
    (folder / "training_args.json").write_text(json.dumps(
        {"exchange_fmaps": False, "comm": True, "image_size": 2 * SUB, "subdomain_dist": [2, 2]}
    ))
    out = tmp_path / "model.pt"
    r = convert(folder / "unet.pth", "-o", out)
    assert r.exit_code == 0, r.output
    assert "DDU-Net(2,8,N)" in r.stdout and f"subimage size {SUB} from" in r.stdout
    model = geoddu.load_model(out, fuse=False)
    assert model.subimage_size == SUB and not model.config["communicate"]
    assert float64_diff(model, ref, scene_array(seed=4)) <= 1e-10


def test_resnet_variant(tmp_path):
    # One row of two subimages: the reference's (columns, rows) grid order matters here.
    ref = reference_model(seed=5, encoder="resnet18", num_comm_fmaps=16, n_classes=4,
                          subdom_dist=(2, 1))
    path = tmp_path / "unet.pth"
    ref.save_weights(path)
    out = tmp_path / "model.pt"
    r = convert(path, "-o", out, "--communicate")
    assert r.exit_code == 0, r.output
    assert "DDU-Net(4,16,Y), resnet18 encoder" in r.stdout
    model = geoddu.load_model(out, fuse=False)
    image = scene_array(seed=6, sub=32, rows=1)  # small: float64 convs are slow on the CPU
    assert float(reference_logits(ref, image).std()) > 0.5
    assert float64_diff(model, ref, image) <= 1e-10


# -- what cannot be converted: one line, nothing written ---------------------------------------


def saved_with(tmp_path: Path, edit) -> Path:
    state = reference_model().reference_state()
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda s: s["encoder_state_dict"][0].update({"inc.extra.weight": torch.zeros(2)}),
         ["unknown key(s) encoder inc.extra.weight"]),
        (lambda s: [s["decoder_state_dict"][0].pop(k) for k in list(s["decoder_state_dict"][0])
                    if k.startswith("expansion.1.conv.double_conv.1.")],
         ["missing key(s) decoder expansion.1.conv.double_conv.1.weight",
          "(and 2 more, 5 in all)"]),
        (lambda s: s["communication_network_state_dict"].update({"conv2.weight":
                                                                 torch.zeros(8, 8, 3, 3)}),
         ["communication_network conv2.weight has shape (8, 8, 3, 3), expected (8, 8, 5, 5)"]),
        (lambda s: s["encoder_state_dict"].append({}),
         ["encoder_state_dict holds clones with different weights"]),
    ],
    ids=["unknown", "missing", "shape", "clones"],
)
def test_bad_reference_files_are_one_line(tmp_path, edit, needles):
    path = saved_with(tmp_path, edit)
    out = tmp_path / "model.pt"
    one_error_line(convert(path, "-o", out, "--communicate"), str(path), *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_exchange_must_be_said_when_not_recorded(tmp_path, reference):
    path, _ = reference
    out = tmp_path / "model.pt"
    one_error_line(convert(path, "-o", out), "--communicate or --no-communicate")
    assert not out.exists()


def test_a_file_that_is_not_torch_weights(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not torch")
    out = tmp_path / "model.pt"
    line = one_error_line(convert(bad, "-o", out))
    assert line == f"Error: {bad}: cannot be read as torch weights"
    assert not out.exists()


def test_a_pickled_model_object_is_not_loaded(tmp_path):
    """torch.save(model) pickles classes: loading it would run code, so it is refused."""
    whole = tmp_path / "whole.pth"
    torch.save(ReferenceDDUNet(depth=1, complexity=2, num_comm_fmaps=2), whole)
    out = tmp_path / "model.pt"
    one_error_line(convert(whole, "-o", out), f"{whole}: holds pickled Python objects",
                   "save model.state_dict()")
    assert not out.exists()


def test_benchmarks_can_give_the_reference_a_geoddu_models_weights():
    """The inverse direction (geoddu/reference/model.py's copy_geoddu_weights)."""
    from geoddu.models import create_model

    torch.manual_seed(0)
    net = create_model("DDU-Net(2,4,N)", base_channels=4, num_classes=3).eval()
    ref = copy_geoddu_weights(net, reference_for(net, (3, 2))).eval()
    x = torch.randn(1, 3, 2 * 16, 3 * 16, dtype=torch.float64)
    with torch.no_grad():
        assert max_diff(net.double()(x, (2, 3)), ref.double().forward_image(x)) <= 1e-12
