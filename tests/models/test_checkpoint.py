import errno
import math
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch
from helpers import make_checkpoint

import geoddu
from geoddu.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from geoddu.checkpoint_metadata import build_metadata
from geoddu.errors import GeodduError
from geoddu.models import create_model
from geoddu.predictor import load_model


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
    with pytest.raises(GeodduError, match="classes: 1 listed"):
        build_metadata(model.config, classes=[{"name": "a", "color": [0, 0, 0]}])
    with pytest.raises(GeodduError, match="stride"):
        build_metadata(model.config, subimage_size=30)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(GeodduError, match="not a geoddu checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


# -- every field is checked when a checkpoint is read --------------------------------------------
DAMAGED = "not a geoddu checkpoint, or the file is damaged"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid checkpoint: DDU-Net(2,4,Y), 3 bands, 4 classes, bottleneck 16, stride 4."""
    return make_checkpoint(tmp_path_factory.mktemp("good") / "good.pt")


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    for needle in needles:
        assert needle in text, (needle, text)
    assert "weights_only" not in text and "Traceback" not in text
    return text


def _set(path, value):
    def change(ckpt):
        *keys, last = path
        for k in keys:
            ckpt = ckpt[k]
        ckpt[last] = value
    return change


def _drop(*path):
    def change(ckpt):
        *keys, last = path
        for k in keys:
            ckpt = ckpt[k]
        del ckpt[last]
    return change


def _scale_weight(value):
    def change(ckpt):
        key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
        ckpt["state_dict"][key] = ckpt["state_dict"][key] * value
    return change


def _reshape_weight(ckpt):
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key] = torch.zeros(2, 2)


BAD_FIELDS = {
    "config-not-dict": (_set(["config"], [1, 2]), "config: must be a dict"),
    "config-unknown-key": (_set(["config", "colour_depth"], 8), "config: unknown option(s) "
                                                                 "'colour_depth'"),
    "encoder": (_set(["config", "encoder"], "vgg16"), "config.encoder: 'vgg16' is not one of"),
    "depth-too-deep": (_set(["config", "depth"], 12), "config.depth: must be an integer from 1 "
                                                      "to 8, not 12"),
    "depth-zero": (_set(["config", "depth"], 0), "config.depth"),
    "depth-string": (_set(["config", "depth"], "2"), "config.depth"),
    "resnet-depth": (_set(["config", "encoder"], "resnet18"), "config.depth: ResNet encoders"),
    "in-channels": (_set(["config", "in_channels"], 0), "config.in_channels"),
    "num-classes-256": (_set(["config", "num_classes"], 256), "config.num_classes: must be an "
                                                              "integer from 1 to 255"),
    "num-classes-zero": (_set(["config", "num_classes"], 0), "config.num_classes"),
    "num-classes-bool": (_set(["config", "num_classes"], True), "config.num_classes"),
    "base-channels": (_set(["config", "base_channels"], -4), "config.base_channels"),
    "comm-features-over": (_set(["config", "comm_features"], 17),
                           "config.comm_features: 17 is more than the 16 bottleneck channels"),
    "comm-features-negative": (_set(["config", "comm_features"], -1), "config.comm_features"),
    "comm-kernel-even": (_set(["config", "comm_kernel"], 4), "config.comm_kernel: must be odd"),
    "comm-layers": (_set(["config", "comm_layers"], 0), "config.comm_layers"),
    "communicate-int": (_set(["config", "communicate"], 1), "config.communicate: must be true "
                                                            "or false"),
    "up-bias-string": (_set(["config", "up_bias"], "yes"), "config.up_bias"),
    "dropout": (_set(["config", "dropout"], 1.5), "config.dropout"),
    "classes-not-list": (_set(["classes"], "water"), "classes: must be a list"),
    "classes-short": (_set(["classes"], [{"name": "a", "color": [0, 0, 0]}]),
                      "classes: 1 listed for a model with 4"),
    "class-not-dict": (_set(["classes", 2], "urban"), "classes[2]: must be"),
    "class-name-empty": (_set(["classes", 1, "name"], ""), "classes[1].name: must be a non-empty"),
    "class-name-missing": (_drop("classes", 1, "name"), "classes[1].name"),
    "class-colour-256": (_set(["classes", 0, "color"], [0, 0, 256]), "classes[0].color"),
    "class-colour-two": (_set(["classes", 3, "color"], [0, 0]), "classes[3].color"),
    "class-colour-float": (_set(["classes", 3, "color"], [0, 0.5, 0]), "classes[3].color"),
    "bands-short": (_set(["bands"], [1, 2]), "bands: 2 listed for a model with 3 input channels"),
    "bands-zero": (_set(["bands"], [0, 1, 2]), "bands[0]: must be an integer of at least 1"),
    "bands-not-list": (_set(["bands"], 3), "bands: must be a list"),
    "normalization-not-dict": (_set(["normalization"], [0, 255]), "normalization: must be"),
    "mean-short": (_set(["normalization", "mean"], [0.0]), "normalization.mean: must list one"),
    "mean-nan": (_set(["normalization", "mean"], [math.nan, 0.0, 0.0]), "normalization.mean[0]"),
    "std-zero": (_set(["normalization", "std"], [255.0, 0.0, 255.0]),
                 "normalization.std[1]: must be above 0"),
    "std-negative": (_set(["normalization", "std"], [255.0, 255.0, -1.0]),
                     "normalization.std[2]"),
    "std-inf": (_set(["normalization", "std"], [math.inf, 255.0, 255.0]), "normalization.std[0]"),
    "std-missing": (_drop("normalization", "std"), "normalization.std"),
    "subimage-size-stride": (_set(["subimage_size"], 30),
                             "subimage_size: 30 is not a multiple of the model stride 4"),
    "subimage-size-zero": (_set(["subimage_size"], 0), "subimage_size"),
    "subimage-size-string": (_set(["subimage_size"], "32"), "subimage_size"),
    "bands-missing": (_drop("bands"), "bands: missing"),
    "state-dict-not-dict": (_set(["state_dict"], [torch.zeros(1)]), "state_dict: must be a dict"),
    "state-dict-missing-weight": (_drop("state_dict", "comm.0.weight"),
                                  "state_dict: weights do not fit the architecture in config: "
                                  "missing comm.0.weight"),
    "state-dict-extra-weight": (_set(["state_dict", "head.extra"], torch.zeros(1)),
                                "unexpected head.extra"),
    "state-dict-not-tensor": (_set(["state_dict", "comm.0.bias"], [0.0]),
                              "state_dict['comm.0.bias']: must be a dense tensor"),
    "state-dict-shape": (_reshape_weight, "has shape (2, 2), expected"),
    "state-dict-nan": (_scale_weight(math.nan), "holds NaN or infinite values"),
    "resume-not-dict": (_set(["resume"], "epoch 3"), "resume: must be a dict"),
    "training-not-dict": (_set(["training"], 3), "training: must be a dict"),
    "format": (_set(["format"], "other-tool"), "not a geoddu checkpoint (format 'other-tool'"),
    "format-version-newer": (_set(["format_version"], 99), "written by a newer geoddu"),
    "format-version-string": (_set(["format_version"], "1"), "format_version"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_each_bad_field_is_one_line_naming_file_and_field(good, tmp_path, case):
    change, needle = BAD_FIELDS[case]
    ckpt = torch.load(good, weights_only=True)
    change(ckpt)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(bad)
    _one_line(exc, f"{bad}: ", needle)


@pytest.mark.parametrize("case", ["std-zero", "state-dict-shape", "comm-features-over"])
def test_segment_loader_refuses_the_same(good, tmp_path, case):
    change, needle = BAD_FIELDS[case]
    ckpt = torch.load(good, weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(GeodduError) as exc:
        load_model(tmp_path / "bad.pt")
    _one_line(exc, "bad.pt: ", needle)


def test_metadata_is_checked_by_the_same_rules_when_built():
    config = create_model("DDU-Net(2,4,Y)", in_channels=2, base_channels=4).config
    with pytest.raises(GeodduError) as exc:
        build_metadata(config, normalization={"mean": [0, 0], "std": [1, 0]}, subimage_size=32)
    assert str(exc.value) == "normalization.std[1]: must be above 0 (it divides), not 0"
    with pytest.raises(GeodduError, match=r"^classes\[0\]\.color"):
        build_metadata(config, classes=[{"name": "a", "color": [0, 0, 300]}] * 3)
    with pytest.raises(GeodduError, match=r"^classes: 0 listed"):
        build_metadata(config, classes=[])
    # Integers and numbers of any kind (numpy from datasets) are fine and stored as plain ones.
    meta = build_metadata(config, bands=(np.int64(2), 1), classes=[
        {"name": n, "color": (np.uint8(1), 2, 3)} for n in "abc"
    ], normalization={"mean": [np.float32(0), 0], "std": [2, np.float64(2)]}, subimage_size=32)
    assert meta["bands"] == [2, 1] and type(meta["bands"][0]) is int
    assert meta["classes"][0]["color"] == [1, 2, 3] and meta["normalization"]["std"] == [2.0, 2.0]


def _damaged(path):
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(path)
    return _one_line(exc, f"{path}: {DAMAGED}")


def test_unreadable_files_are_one_line(good, tmp_path):
    rng = random.Random(0)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    _damaged(noise)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty" in _damaged(empty)
    half = tmp_path / "half.pt"
    data = good.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    _damaged(half)
    foreign_zip = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign_zip, "w") as z:
        z.writestr("readme.txt", "not a model")
    _damaged(foreign_zip)
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(tmp_path)
    _one_line(exc, f"{tmp_path}: is a directory")


class _Payload:
    """Unpickling this opens (creates) `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_never_runs(tmp_path):
    # The payload is real: plain unpickling does run it.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw-pickle.pt"
    raw.write_bytes(pickle.dumps({"format": "geoddu-checkpoint", "x": _Payload(marker)}))
    in_zip = tmp_path / "torch-pickle.pt"
    torch.save({"format": "geoddu-checkpoint", "x": _Payload(marker)}, in_zip)
    assert not marker.exists()
    for path in (raw, in_zip):
        _damaged(path)
        with pytest.raises(GeodduError) as exc:
            load_model(path)
        _one_line(exc, DAMAGED)
    assert not marker.exists()


def test_foreign_dicts_say_what_they_are(good, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(good, weights_only=True)["state_dict"], bare)
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(bare)
    _one_line(exc, f"{bare}: not a geoddu checkpoint (a bare state dict?", "geoddu init")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(listed)
    _one_line(exc, "not a geoddu checkpoint (it holds a list")
    lightning = tmp_path / "lightning.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, lightning)
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(lightning)
    _one_line(exc, 'not a geoddu checkpoint (no "format"')


def test_weights_of_another_architecture(good, tmp_path):
    other = make_checkpoint(tmp_path / "other.pt", name="DDU-Net(3,8,Y)")
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"] = torch.load(other, weights_only=True)["state_dict"]
    torch.save(ckpt, tmp_path / "mixed.pt")
    with pytest.raises(GeodduError) as exc:
        load_checkpoint(tmp_path / "mixed.pt")
    _one_line(exc, "mixed.pt: state_dict: weights do not fit the architecture in config")
    # A dict that skipped load_checkpoint still fails in one line when the model is built.
    with pytest.raises(GeodduError) as exc:
        model_from_checkpoint(ckpt, "mixed.pt")
    _one_line(exc, "mixed.pt: state_dict: weights do not fit")


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
])
def test_failed_save_keeps_the_old_file_and_no_temp(good, tmp_path, monkeypatch, failure):
    path = tmp_path / "m.pt"
    path.write_bytes(good.read_bytes())
    model = create_model("DDU-Net(2,4,Y)", in_channels=3, num_classes=4, base_channels=4)
    meta = build_metadata(model.config, subimage_size=32)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04partial")  # checkpoints are written through a file object
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GeodduError) as exc:
        save_checkpoint(path, model, meta)
    reason = "No space left on device" if isinstance(failure, OSError) else "PytorchStreamWriter"
    _one_line(exc, f"{path}: cannot write checkpoint: {reason}")
    assert path.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]

