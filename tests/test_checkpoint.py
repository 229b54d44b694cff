import pytest
import torch

import geoddu
from geoddu.checkpoint import build_metadata, load_checkpoint, save_checkpoint
from geoddu.errors import GeodduError
from geoddu.models import create_model


def test_round_trip_is_self_describing_and_weights_only(tmp_path):
    model = create_model("DDU-Net(2,4,Y)", in_channels=2, num_classes=3, base_channels=4)
    classes = [
        {"name": n, "color": c}
        for n, c in (("water", (0, 0, 255)), ("forest", (0, 255, 0)), ("urban", (255, 0, 0)))
    ]
    meta = build_metadata(
        model.config,
        classes=classes,
        bands=[3, 1],
        normalization={"mean": [10, 20], "std": [2, 4]},
        subimage_size=64,
    )
    path = save_checkpoint(tmp_path / "m.pt", model, meta, training={"epochs": 3})
    # The file itself must load with weights_only=True: nothing but plain data inside.
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == model.config and raw["geoddu_version"] == geoddu.__version__
    loaded = geoddu.load_model(path, fuse=False)
    assert not loaded.training
    assert loaded.bands == [3, 1] and loaded.subimage_size == 64
    assert loaded.classes[2] == {"name": "urban", "color": [255, 0, 0]}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v)
    assert not list(tmp_path.glob(".*geoddu-tmp*"))


def test_bad_metadata_and_files(tmp_path):
    model = create_model("DDU-Net(2,4,Y)", in_channels=1, base_channels=4)
    with pytest.raises(GeodduError, match="class names"):
        build_metadata(model.config, classes=[{"name": "a", "color": [0, 0, 0]}])
    with pytest.raises(GeodduError, match="stride"):
        build_metadata(model.config, subimage_size=30)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(GeodduError, match="not a geoddu checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
