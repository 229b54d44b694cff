"""GPU smoke tests: segment on 1 and 2 GPUs in fp32, bf16 and fp16 against the CPU, and one
AMP training epoch against the CPU. Skipped on hosts without CUDA (CI, the project machine).

    pytest -q tests/gpu
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from helpers import make_checkpoint, write_geotiff

import geoddu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPUS = [1, 2]


def _need(gpus: int) -> None:
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} CUDA devices, this host has {torch.cuda.device_count()}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A structured 3-band scene (not pure noise: fewer near-ties between classes), a small
    checkpoint, and the CPU fp32 reference (classes and probabilities)."""
    tmp = tmp_path_factory.mktemp("gpu")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (3, 16, 16)).astype(np.float32)
    yy, xx = np.mgrid[0:150, 0:205]
    data = base[:, (yy // 13) % 16, (xx // 11) % 16] + rng.normal(0, 8, (3, 150, 205))
    scene = write_geotiff(tmp / "scene.tif", np.clip(data, 0, 255).astype(np.uint8),
                          tiled=True, blockxsize=64, blockysize=64)
    ckpt = make_checkpoint(tmp / "model.pt", seed=2)
    geoddu.segment(scene, tmp / "cpu.tif", ckpt, device="cpu", probabilities=tmp / "cpu_p.tif")
    return scene, ckpt, _read(tmp / "cpu.tif"), _read(tmp / "cpu_p.tif"), tmp


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture
def strict_fp32():
    """No TF32 in cuDNN convolutions and matmuls, so that fp32 means float32 on the GPU too."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("gpus", GPUS)
def test_fp32_on_gpus_matches_the_cpu(setup, gpus, strict_fp32):
    _need(gpus)
    scene, ckpt, classes, probs, tmp = setup
    out, p = tmp / f"fp32_{gpus}.tif", tmp / f"fp32_{gpus}_p.tif"
    result = geoddu.segment(scene, out, ckpt, gpus=gpus, probabilities=p, overwrite=True)
    assert result.devices == [f"cuda:{i}" for i in range(gpus)]
    got, got_p = _read(out), _read(p)
    np.testing.assert_allclose(got_p, probs, atol=1e-4)
    # Same classes wherever the CPU's two best classes are not a float tie.
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-3
    assert np.array_equal(got[0][clear], classes[0][clear])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("gpus", GPUS)
def test_reduced_precision_on_gpus_agrees_with_the_cpu(setup, gpus, precision):
    _need(gpus)
    scene, ckpt, classes, _, tmp = setup
    out = tmp / f"{precision}_{gpus}.tif"
    geoddu.segment(scene, out, ckpt, gpus=gpus, precision=precision, overwrite=True)
    got = _read(out)
    assert np.array_equal(got == 255, classes == 255)  # the same nodata
    agreement = float((got == classes).mean())
    assert agreement >= 0.99, f"{precision} on {gpus} GPU(s): {agreement:.4f} of pixels agree"


def test_amp_training_epoch_matches_the_cpu(tmp_path):
    """One epoch of the tiny synthetic training (tests/train/test_train.py) on the CPU and on CUDA
    with AMP (fp16 autocast, gradient scaling): the same first-batch loss, finite losses."""
    from geoddu.data.synthetic import write
    from geoddu.train import Callbacks, preset, start_training

    data = write(tmp_path / "k2", 2, train=8, val=4, test=4, seed=0)
    runs = {}
    for device, amp in (("cpu", False), ("cuda", True)):
        losses: list[float] = []
        config = preset("synthetic", epochs=1, batch_size=4, augment=False, dropout=0.0,
                        device=device, amp=amp)
        result = start_training(
            "synthetic", data, tmp_path / device, config, arch="DDU-Net(2,8,Y)",
            model_options={"base_channels": 4},
            callbacks=Callbacks(on_batch=lambda e, b, n, loss, lr, out=losses: out.append(loss)),
        )
        runs[device] = (losses, result)
    (cpu, cpu_result), (gpu, gpu_result) = runs["cpu"], runs["cuda"]
    assert len(cpu) == len(gpu) == 2
    assert all(np.isfinite(cpu + gpu))
    # Same weights and data: the first loss differs only by fp16 rounding; later ones also by
    # the Adam steps taken from slightly different gradients.
    assert gpu[0] == pytest.approx(cpu[0], abs=1e-2)
    assert gpu[1] == pytest.approx(cpu[1], abs=5e-2)
    assert np.isfinite(gpu_result.history[-1]["val_loss"])
    assert gpu_result.history[-1]["val_loss"] == pytest.approx(
        cpu_result.history[-1]["val_loss"], abs=5e-2)
