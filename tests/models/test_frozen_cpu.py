"""The traced, frozen CPU modules are shared between loads of the same weights.

torch keeps native memory for every trace and freeze (about 2.6 MB per load of a small
checkpoint): a process that loaded the same model for every run grew without bound (the
fuzzer's workers passed 2 GB after ~2,500 cases; the QGIS plugin's in-process runs load once
per run).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_checkpoint

from geoddu.models import frozen_cpu
from geoddu.predictor import load_model


@pytest.fixture(autouse=True)
def empty_cache():
    frozen_cpu._cache.clear()
    yield
    frozen_cpu._cache.clear()


def test_the_same_weights_share_one_trace_and_predict_the_same(tmp_path, one_thread):
    a = make_checkpoint(tmp_path / "a.pt", seed=0)
    copy = make_checkpoint(tmp_path / "copy.pt", seed=0)  # the same weights in another file
    first, second, third = load_model(a), load_model(a), load_model(copy)
    assert frozen_cpu.frozen_models_cached() == 1
    assert first.net.encoder.traced is second.net.encoder.traced is third.net.encoder.traced
    assert first.net.decoder.traced is third.net.decoder.traced
    image = np.random.default_rng(1).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    np.testing.assert_array_equal(first.predict(image), third.predict(image))
    eager = load_model(a, fuse=False)
    assert not hasattr(eager.net.encoder, "traced")


def test_other_weights_get_their_own_trace_and_the_cache_keeps_two(tmp_path, one_thread):
    paths = [make_checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(3)]
    models = [load_model(p) for p in paths]
    image = np.random.default_rng(2).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    assert frozen_cpu.frozen_models_cached() == frozen_cpu.CACHE_SIZE == 2
    assert models[0].net.encoder.traced is not models[1].net.encoder.traced
    got = [m.predict(image) for m in models]
    assert not all(np.array_equal(got[0], g) for g in got[1:])
    for path, classes in zip(paths, got, strict=True):
        # Each model computes its own weights' classes: a fresh trace of each agrees.
        frozen_cpu._cache.clear()
        np.testing.assert_array_equal(classes, load_model(path).predict(image))


def test_a_different_subimage_size_is_traced_again(tmp_path, one_thread):
    small = load_model(make_checkpoint(tmp_path / "s.pt", subimage_size=32))
    large = load_model(make_checkpoint(tmp_path / "l.pt", subimage_size=64))
    assert small.net.encoder.traced is not large.net.encoder.traced
    assert frozen_cpu.frozen_models_cached() == 2
