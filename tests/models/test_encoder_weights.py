"""Pretrained ResNet encoder weights (--encoder-weights, --adapt-bands): exact mapping, errors, CLI.

The state dicts are full torchvision-layout ResNets (stem, layer1-4, fc) built here key by key
from torchvision's architecture; where timm is installed, the same layout is checked against
`timm.create_model` and geoddu's features against timm's own stage outputs. The features are
checked against an independent functional ResNet written below, so the test proves the key
mapping, not just the shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from helpers import write_geotiff

from geoddu.checkpoint import load_checkpoint
from geoddu.errors import GeodduError
from geoddu.models import create_model
from geoddu.models.encoder_weights import (
    adapt_first_conv,
    imagenet_normalization,
    load_encoder_weights,
)
from geoddu.predictor import load_model

GEODDU = [sys.executable, "-m", "geoddu.cli"]
ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}

pytestmark = pytest.mark.usefixtures("one_thread")


# -- torchvision's ResNet layout, and a forward pass over it that shares no code with geoddu ----
def _layout(arch: str, bands: int) -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's resnet18/resnet50 state dict with its shape."""
    block, counts = ARCHS[arch]
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, bands, 7, 7)}
    _bn_shapes(shapes, "bn1", 64)
    inplanes = 64
    for layer, (planes, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True), 1):
        out = planes * (1 if block == "basic" else 4)
        for b in range(n):
            p = f"layer{layer}.{b}."
            convs = ([(planes, inplanes, 3), (planes, planes, 3)] if block == "basic" else
                     [(planes, inplanes, 1), (planes, planes, 3), (out, planes, 1)])
            for i, (o, c, k) in enumerate(convs, 1):
                shapes[f"{p}conv{i}.weight"] = (o, c, k, k)
                _bn_shapes(shapes, f"{p}bn{i}", o)
            if b == 0 and (layer > 1 or inplanes != out):
                shapes[f"{p}downsample.0.weight"] = (out, inplanes, 1, 1)
                _bn_shapes(shapes, f"{p}downsample.1", out)
            inplanes = out
    shapes["fc.weight"], shapes["fc.bias"] = (1000, inplanes), (1000,)
    return shapes


def _bn_shapes(shapes: dict, prefix: str, n: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (n,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def _weights(arch: str, bands: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in that layout, with BatchNorm statistics far from the identity."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _layout(arch, bands).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif len(shape) == 4:  # He-scaled, so activations stay of order 1 through 3 stages
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith(".weight")):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def _bn(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                        s[f"{p}.bias"], False, 0.0, 1e-5)


def _reference(s: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's ResNet (v1.5: the stride on the 3x3 conv) to layer3: stem, layer1-3."""
    stem = F.relu(_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    y, outs = F.max_pool2d(stem, 3, 2, 1), [stem]
    for layer in (1, 2, 3):
        b = 0
        while f"layer{layer}.{b}.conv1.weight" in s:
            p, stride = f"layer{layer}.{b}.", 2 if layer > 1 and b == 0 else 1
            if f"{p}conv3.weight" in s:
                h = F.relu(_bn(F.conv2d(y, s[f"{p}conv1.weight"]), s, f"{p}bn1"))
                h = F.relu(_bn(F.conv2d(h, s[f"{p}conv2.weight"], stride=stride, padding=1), s,
                               f"{p}bn2"))
                h = _bn(F.conv2d(h, s[f"{p}conv3.weight"]), s, f"{p}bn3")
            else:
                h = F.relu(_bn(F.conv2d(y, s[f"{p}conv1.weight"], stride=stride, padding=1), s,
                               f"{p}bn1"))
                h = _bn(F.conv2d(h, s[f"{p}conv2.weight"], padding=1), s, f"{p}bn2")
            if f"{p}downsample.0.weight" in s:
                y = _bn(F.conv2d(y, s[f"{p}downsample.0.weight"], stride=stride), s,
                        f"{p}downsample.1")
            y = F.relu(h + y)
            b += 1
        outs.append(y)
    return outs


def _features(model, x: torch.Tensor) -> list[torch.Tensor]:
    """geoddu's stem, layer1 and layer2 skips and its layer3 output (before inter_conv)."""
    seen = []
    hook = model.encoder.layer3.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            skips, _ = model.eval().encoder(x)
    finally:
        hook.remove()
    return [*skips, seen[0]]


def _assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5
        assert float(b.abs().max()) > 0.1  # the features are not all vanishing


def _model(arch: str, bands: int):
    return create_model(arch, in_channels=bands, num_classes=3, comm_features=16)


# -- the mapping is exact ------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "bands"), [("resnet18", 4), ("resnet50", 13)])
def test_torchvision_layout_with_prefix_fc_and_lightning_wrapper_loads_exactly(tmp_path, arch,
                                                                               bands):
    state = _weights(arch, bands)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in state.items()},
                "epoch": 3}, path)
    model = _model(arch, bands)
    loaded = load_encoder_weights(model, path)
    assert (loaded.bands, loaded.adapted) == (bands, False)
    x = torch.randn(2, bands, 64, 96, generator=torch.Generator().manual_seed(1))
    _assert_same(_features(model, x), _reference(state, x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_timm_state_dict_gives_timms_stage_outputs(tmp_path, arch):
    timm = pytest.importorskip("timm")
    net = timm.create_model(arch, pretrained=False, in_chans=5).eval()
    with torch.no_grad():  # timm initialises BatchNorm to the identity: make it count
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    model = _model(arch, 5)
    load_encoder_weights(model, tmp_path / "timm.pth")
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        theirs = net.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
    _assert_same(_features(model, x), theirs)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_layout_here_is_timms(arch):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(arch, pretrained=False, in_chans=7).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == _layout(arch, 7)


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {f"module.{k}": v for k, v in s.items()},
    lambda s: {f"encoder.{k}": v for k, v in s.items()} | {"decoder.head.weight": torch.ones(2)},
    lambda s: {"model": {f"backbone.{k}": v for k, v in s.items()}},
])
def test_wrappers_and_prefixes(tmp_path, wrap):
    state = {k: v for k, v in _weights("resnet18", 3).items() if "num_batches" not in k}
    torch.save(wrap(state), tmp_path / "w.pth")  # (old torchvision files lack num_batches)
    model = _model("resnet18", 3)
    load_encoder_weights(model, tmp_path / "w.pth")
    for key in ("conv1.weight", "layer3.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        assert torch.equal(model.encoder.state_dict()[key], state[key]), key


# -- 3 bands spread over N ------------------------------------------------------------------------
@pytest.mark.parametrize("bands", [1, 6])
def test_adapted_rgb_weights_see_a_gray_image_as_the_rgb_model_does(tmp_path, bands):
    # An N-band image whose bands all hold the same gray image gives exactly the features the
    # RGB model gives for that gray image as (g, g, g): 1 band sums R, G and B; N = 6 repeats
    # them twice at half the weight.
    torch.save(_weights("resnet18", 3), tmp_path / "rgb.pth")
    rgb, multi = _model("resnet18", 3), _model("resnet18", bands)
    load_encoder_weights(rgb, tmp_path / "rgb.pth")
    loaded = load_encoder_weights(multi, tmp_path / "rgb.pth", adapt_bands=True)
    assert (loaded.bands, loaded.adapted) == (3, True)
    # In float64, so that only the summation order differs (float32 rounds it to ~1e-5).
    gray = torch.rand(1, 1, 64, 64, dtype=torch.float64) * 4 - 2
    _assert_same(_features(multi.double(), gray.expand(1, bands, 64, 64)),
                 _features(rgb.double(), gray.expand(1, 3, 64, 64)))


def test_adaptation_rule_for_a_band_count_not_a_multiple_of_three():
    w = torch.randn(64, 3, 7, 7)
    four = adapt_first_conv(w, 4)
    for b in range(4):
        assert torch.allclose(four[:, b], w[:, b % 3] * 3 / 4)
    assert imagenet_normalization(4)["mean"] == [123.675, 116.28, 103.53, 123.675]


def test_band_counts_that_differ_are_one_line_errors(tmp_path):
    torch.save(_weights("resnet18", 3), tmp_path / "rgb.pth")
    torch.save(_weights("resnet18", 13), tmp_path / "s2.pth")
    with pytest.raises(GeodduError, match="takes 3 bands, the model 4; pass --adapt-bands"):
        load_encoder_weights(_model("resnet18", 4), tmp_path / "rgb.pth")
    with pytest.raises(GeodduError, match="takes 13 bands, the model 4; choose the bands") as e:
        load_encoder_weights(_model("resnet18", 4), tmp_path / "s2.pth")
    assert "--adapt-bands" not in str(e.value)
    with pytest.raises(GeodduError, match="adapts 3-band .RGB. weights only; .* 13 bands"):
        load_encoder_weights(_model("resnet18", 4), tmp_path / "s2.pth", adapt_bands=True)


# -- everything else that does not fit is refused ------------------------------------------------
def _error(tmp_path, obj, arch: str = "resnet18", bands: int = 3) -> str:
    path = tmp_path / "w.pth"
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    with pytest.raises(GeodduError) as exc:
        load_encoder_weights(_model(arch, bands), path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_refused_files_name_what_is_wrong(tmp_path):
    good = _weights("resnet18", 3)
    extra = good | {"layer1.0.se.fc1.weight": torch.ones(4, 64, 1, 1)}
    assert "1 unknown key(s) ('layer1.0.se.fc1.weight')" in _error(tmp_path, extra)
    missing = {k: v for k, v in good.items() if not k.startswith("layer2.1.")}
    assert ("missing key(s) ('layer2.1.conv1.weight', 'layer2.1.bn1.weight', "
            "'layer2.1.bn1.bias', ... (10 in all))") in _error(tmp_path, missing)
    assert "the file looks like a resnet50" in _error(tmp_path, _weights("resnet50", 3))
    bent = good | {"layer2.0.conv2.weight": torch.ones(128, 128, 1, 1)}
    assert ("1 weight(s) shaped unlike resnet18's: layer2.0.conv2.weight (128, 128, 1, 1) != "
            "(128, 128, 3, 3)") in _error(tmp_path, bent)
    two = {f"backbone.{k}": v for k, v in good.items()} | {f"model.{k}": v for k, v in good.items()}
    assert "several ResNets in it" in _error(tmp_path, two)
    assert "no ResNet first convolution" in _error(tmp_path, {"stem.weight": torch.ones(1)})
    assert "weights_only=True" in _error(tmp_path, b"not a torch file")
    assert "weights_only=True" in _error(tmp_path, {"state_dict": good, "hp": _NotAllowed()})


class _NotAllowed:
    """An object that torch.load(weights_only=True) refuses to unpickle."""


def test_unet_and_geoddu_checkpoints_are_refused(tmp_path, checkpoint):
    torch.save(_weights("resnet18", 3), tmp_path / "w.pth")
    with pytest.raises(GeodduError, match="needs --encoder resnet18 or resnet50"):
        load_encoder_weights(create_model("unet"), tmp_path / "w.pth")
    with pytest.raises(GeodduError, match="a geoddu checkpoint, not encoder weights; .*--model"):
        load_encoder_weights(_model("resnet18", 3), checkpoint)


# -- through the command line --------------------------------------------------------------------
def _geoddu(*args) -> subprocess.CompletedProcess:
    # One thread: tiny models, and a busy machine's threads only thrash.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*GEODDU, *map(str, args)], capture_output=True, text=True, env=env)


def _folder(root, rng) -> None:
    """Two 4-band uint8 images (bright right half = class 1) with label rasters."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b"):
        image = rng.integers(0, 60, (4, 64, 64), dtype=np.uint8)
        image[:, :, 32:] += 150
        write_geotiff(root / "images" / f"{name}.tif", image, photometric="MINISBLACK")  # no alpha
        label = np.zeros((1, 64, 64), np.uint8)
        label[:, :, 32:] = 1
        write_geotiff(root / "labels" / f"{name}.tif", label)
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: dark, color: [0, 0, 0]}\n  - {name: bright, color: [255, 255, 0]}\n")


def test_init_train_segment_with_adapted_rgb_weights(tmp_path):
    data = tmp_path / "data"
    _folder(data, np.random.default_rng(0))
    rgb = _weights("resnet18", 3)
    torch.save({f"module.{k}": v for k, v in rgb.items()}, tmp_path / "rgb.pth")
    init = ["init", "--encoder", "resnet18", "--encoder-weights", tmp_path / "rgb.pth",
            "--bands", "1,2,3,4", "--classes", "2", "--comm-features", "16",
            "--subimage-size", "32", "-o", tmp_path / "init.pt"]
    r = _geoddu(*init, "--adapt-bands")
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(tmp_path / "init.pt")
    conv1 = ckpt["state_dict"]["encoder.conv1.weight"]
    assert torch.equal(conv1, adapt_first_conv(rgb["conv1.weight"], 4))
    assert ckpt["normalization"] == imagenet_normalization(4)

    run = tmp_path / "run"
    r = _geoddu("train", "--dataset", "folder", "--data", data, "-o", run, "-m",
                tmp_path / "init.pt", "--freeze-encoder", "--patch-size", "32", "--subimages",
                "1", "--epochs", "1", "--batch-size", "2", "-q")
    assert r.returncode == 0, r.stderr
    best = load_checkpoint(run / "best.pt")
    assert best["normalization"] == imagenet_normalization(4)  # kept from the init checkpoint
    for key in ("encoder.conv1.weight", "encoder.layer3.1.conv2.weight",
                "encoder.bn1.running_mean"):  # frozen: weights and BatchNorm statistics
        assert torch.equal(best["state_dict"][key], ckpt["state_dict"][key]), key
    assert not torch.equal(best["state_dict"]["encoder.inter_conv.0.weight"],
                           ckpt["state_dict"]["encoder.inter_conv.0.weight"])

    r = _geoddu("segment", data / "images" / "a.tif", "-o", tmp_path / "classes.tif", "-m",
                run / "best.pt", "-q")
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "classes.tif") as out, \
            rasterio.open(data / "images" / "a.tif") as image:
        assert out.shape == (64, 64)
        assert set(np.unique(out.read(1))) <= {0, 1}
        # the scene's own classes, as the checkpoint predicts them in memory
        np.testing.assert_array_equal(out.read(1), load_model(run / "best.pt").predict(
            image.read()))


def test_train_loads_adapts_and_records_encoder_weights(tmp_path):
    from click.testing import CliRunner
    from geoddu.cli.main import cli

    data = tmp_path / "data"
    _folder(data, np.random.default_rng(1))
    torch.save(_weights("resnet18", 3), tmp_path / "rgb.pth")
    args = ["train", "--dataset", "folder", "--data", str(data), "--encoder", "resnet18",
            "--comm-features", "16", "--encoder-weights", str(tmp_path / "rgb.pth"),
            "--patch-size", "32", "--subimages", "1", "--epochs", "1", "--batch-size", "2", "-q"]
    r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "refused")])
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1
    assert "takes 3 bands, the model 4; pass --adapt-bands to spread its RGB" in r.output
    r = CliRunner().invoke(cli, ["init", "--encoder", "resnet18", "--in-channels", "4",
                                 "--encoder-weights", str(tmp_path / "rgb.pth"), "-o",
                                 str(tmp_path / "init.pt")])
    assert r.exit_code == 1 and "pass --adapt-bands" in r.output
    r = CliRunner().invoke(cli, ["init", "--encoder", "resnet18", "--adapt-bands", "-o",
                                 str(tmp_path / "init.pt")])
    assert r.exit_code == 1 and "--adapt-bands adapts --encoder-weights" in r.output
    r = CliRunner().invoke(cli, [*args, "--adapt-bands", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["training"]["adapt_bands"] is True
    assert last["training"]["freeze_encoder"] is True  # the default with --encoder-weights
    assert last["normalization"] == imagenet_normalization(4)
