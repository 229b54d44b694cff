"""Weights saved by the paper's reference code (github.com/corne00/HiRes-Seg-CNN) <-> DDUNet.

The reference builds the same layers as geoddu under other module names: its `Encoder`
(`inc`, `contraction.K.maxpool_conv.1`), `Decoder` (`expansion.K`, `outc`) and
`CNNCommunicator` (`conv1/bn1 .. conv3/bn3`), or for the ResNet variant `block1..block4` +
`conv` and `up1..up4`. Its `save_weights` writes

    {"encoder_state_dict": [clone 0], "decoder_state_dict": [clone 0],
     "communication_network_state_dict": {...}}      # the last only with communication

(older versions listed every clone). Whole-model state dicts (`encoders.K.`, `decoders.K.`,
`communication_network.`, possibly behind DataParallel's `module.`) are read too. Every name
is mapped one to one, so the converted model computes the reference's function exactly.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import GeodduError
from ..model_config import DEFAULT_CONFIG

SECTIONS = ("encoder", "decoder", "communication_network")
# The reference's communication network always has three conv -> BN -> ReLU -> dropout layers.
REFERENCE_COMM_LAYERS = 3
# What the reference's dataset applies: x / 255, then torchvision's ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

State = dict[str, torch.Tensor]
Rule = tuple[str, str, Callable[[re.Match[str]], str]]


def _comm_name(m: re.Match[str]) -> str:
    # geoddu's communication net is one Sequential of (conv, BN, ReLU, dropout) x layers.
    index = int(m[1])
    layer, kind = divmod(index, 4)
    return f"{'conv' if kind == 0 else 'bn'}{layer + 1}.{m[2]}"


# (geoddu key pattern, reference section, reference key) per encoder family.
_COMMON: list[Rule] = [
    (r"comm\.(\d+)\.(.+)", "communication_network", _comm_name),
]
_UNET: list[Rule] = [
    (r"encoder\.inc\.(\d+)\.(.+)", "encoder", lambda m: f"inc.double_conv.{m[1]}.{m[2]}"),
    (r"encoder\.downs\.(\d+)\.1\.(\d+)\.(.+)", "encoder",
     lambda m: f"contraction.{m[1]}.maxpool_conv.1.double_conv.{m[2]}.{m[3]}"),
    (r"decoder\.ups\.(\d+)\.up\.(.+)", "decoder", lambda m: f"expansion.{m[1]}.up.{m[2]}"),
    (r"decoder\.ups\.(\d+)\.conv\.(\d+)\.(.+)", "decoder",
     lambda m: f"expansion.{m[1]}.conv.double_conv.{m[2]}.{m[3]}"),
    (r"decoder\.head\.(.+)", "decoder", lambda m: f"outc.conv.{m[1]}"),
]
_RESNET: list[Rule] = [
    (r"encoder\.conv1\.(.+)", "encoder", lambda m: f"block1.0.{m[1]}"),
    (r"encoder\.bn1\.(.+)", "encoder", lambda m: f"block1.1.{m[1]}"),
    (r"encoder\.layer1\.(.+)", "encoder", lambda m: f"block2.1.{m[1]}"),
    (r"encoder\.layer2\.(.+)", "encoder", lambda m: f"block3.{m[1]}"),
    (r"encoder\.layer3\.(.+)", "encoder", lambda m: f"block4.{m[1]}"),
    (r"encoder\.inter_conv\.(.+)", "encoder", lambda m: f"conv.double_conv.{m[1]}"),
    (r"decoder\.ups\.(\d+)\.up\.(.+)", "decoder", lambda m: f"up{int(m[1]) + 1}.up.{m[2]}"),
    (r"decoder\.ups\.(\d+)\.conv\.(.+)", "decoder",
     lambda m: f"up{int(m[1]) + 1}.conv.double_conv.{m[2]}"),
    (r"decoder\.final\.up\.(.+)", "decoder", lambda m: f"up4.up.{m[1]}"),
    (r"decoder\.final\.conv\.(.+)", "decoder", lambda m: f"up4.conv.double_conv.{m[1]}"),
    (r"decoder\.head\.(.+)", "decoder", lambda m: f"up4.outc.conv.{m[1]}"),
]


def reference_key(key: str, encoder: str = "unet") -> tuple[str, str]:
    """The (section, name) a geoddu DDUNet state-dict key has in the reference's files."""
    for pattern, section, name in (_UNET if encoder == "unet" else _RESNET) + _COMMON:
        m = re.fullmatch(pattern, key)
        if m:
            return section, name(m)
    raise GeodduError(f"{key}: no counterpart in the reference code")


def to_reference(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, Any]:
    """A geoddu state dict in the reference's `save_weights` format."""
    sections: dict[str, State] = {s: {} for s in SECTIONS}
    for key, value in state.items():
        section, name = reference_key(key, config["encoder"])
        sections[section][name] = value.detach().clone()
    out: dict[str, Any] = {
        "encoder_state_dict": [sections["encoder"]],
        "decoder_state_dict": [sections["decoder"]],
    }
    if sections["communication_network"]:
        out["communication_network_state_dict"] = sections["communication_network"]
    return out


# -- reading the reference's files -----------------------------------------------------------


def read_reference(path: str | os.PathLike) -> dict[str, State]:
    """The encoder, decoder and (possibly empty) communication weights of a reference file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise GeodduError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise GeodduError(f"{path}: is a directory, not a weights file") from exc
    except Exception as exc:  # noqa: BLE001 - foreign or damaged files are one user error
        # Never suggest weights_only=False (running the file's code), as torch's message does.
        if "Unsupported global" in str(exc):
            raise GeodduError(
                f"{path}: holds pickled Python objects, not only weights (a whole model saved "
                f"with torch.save(model)?); save model.state_dict() or use the reference's "
                f"save_weights"
            ) from exc
        raise GeodduError(f"{path}: cannot be read as torch weights") from exc
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise GeodduError(f"{path}: holds {type(obj).__name__}, not a dict of weights")
    if "encoder_state_dict" in obj:
        return _from_saved_weights(obj, path)
    return _from_model_state(obj, path)


def _from_saved_weights(obj: Mapping[str, Any], path: str | os.PathLike) -> dict[str, State]:
    """The reference's `save_weights` dict; other top-level entries (epoch, optimiser) are not
    model weights and are left alone."""
    if "decoder_state_dict" not in obj:
        raise GeodduError(f"{path}: has encoder_state_dict but no decoder_state_dict")
    sections = {
        "encoder": _one_clone(obj["encoder_state_dict"], "encoder_state_dict", path),
        "decoder": _one_clone(obj["decoder_state_dict"], "decoder_state_dict", path),
        "communication_network": {},
    }
    comm = obj.get("communication_network_state_dict")
    if comm is not None:
        sections["communication_network"] = _tensors(comm, "communication_network_state_dict",
                                                     path)
    return sections


def _one_clone(value: Any, field: str, path: str | os.PathLike) -> State:
    """Clone 0's weights; every clone listed must hold the same ones (they share weights)."""
    clones = list(value) if isinstance(value, list | tuple) else [value]
    if not clones:
        raise GeodduError(f"{path}: {field} is an empty list")
    states = [_tensors(c, field, path) for c in clones]
    for k, other in enumerate(states[1:], start=1):
        if other.keys() != states[0].keys() or any(
            not torch.equal(other[n], states[0][n]) for n in other
        ):
            raise GeodduError(
                f"{path}: {field} holds clones with different weights (clone {k} differs from "
                f"clone 0); geoddu's subimages share one set of weights"
            )
    return states[0]


def _tensors(value: Any, field: str, path: str | os.PathLike) -> State:
    if not isinstance(value, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in value.values()
    ):
        raise GeodduError(f"{path}: {field} is not a state dict (a dict of tensors)")
    return {_strip_module(k): v for k, v in value.items()}


def _strip_module(key: str) -> str:
    # DataParallel / DistributedDataParallel prefix every name with "module.".
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


_CLONE_KEY = re.compile(r"(encoders|decoders)\.(\d+)\.(.+)")


def _from_model_state(obj: Mapping[str, Any], path: str | os.PathLike) -> dict[str, State]:
    """A whole MultiGPU_*UNet_with_comm state dict: clone-numbered names."""
    state = _tensors(obj, "the state dict", path)
    clones: dict[str, dict[int, State]] = {"encoder": {}, "decoder": {}}
    comm: State = {}
    unknown = []
    for key, value in state.items():
        m = _CLONE_KEY.fullmatch(key)
        if m:
            clones[m[1][:-1]].setdefault(int(m[2]), {})[m[3]] = value
        elif key.startswith("communication_network."):
            comm[key[len("communication_network.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise GeodduError(f"{path}: unknown key(s) {_few(unknown)}; expected the reference's "
                          f"encoders.K., decoders.K. and communication_network. weights")
    for section in ("encoder", "decoder"):
        if not clones[section]:
            raise GeodduError(f"{path}: no {section} weights ({section}s.0.*): not a state dict "
                              f"saved by the reference code")
    return {
        "encoder": _one_clone([c for _, c in sorted(clones["encoder"].items())],
                              "encoders", path),
        "decoder": _one_clone([c for _, c in sorted(clones["decoder"].items())],
                              "decoders", path),
        "communication_network": comm,
    }


# -- the architecture, from the tensors ------------------------------------------------------


def infer_config(sections: Mapping[str, State], where: str | os.PathLike) -> dict[str, Any]:
    """geoddu's config for reference weights: everything the tensors say.

    Not in the tensors: whether the subimages exchanged their maps (the reference's
    `comm_network_but_no_communication`); `communicate` is left True for the caller to set.
    """
    enc, dec, comm = (sections[s] for s in SECTIONS)
    cfg = dict(DEFAULT_CONFIG)
    if "inc.double_conv.0.weight" in enc:
        first = enc["inc.double_conv.0.weight"]
        downs = {int(m[1]) for k in enc if (m := re.match(r"contraction\.(\d+)\.", k))}
        if not downs:
            raise GeodduError(f"{where}: encoder has no contraction.K weights (depth 0?)")
        head = _need(dec, "outc.conv.weight", "decoder", where)
        cfg.update(encoder="unet", in_channels=first.shape[1], base_channels=first.shape[0],
                   depth=max(downs) + 1, num_classes=head.shape[0])
    elif "block1.0.weight" in enc:
        blocks = tuple(
            len({int(m[1]) for k in enc if (m := re.match(prefix + r"(\d+)\.", k))})
            for prefix in (r"block2\.1\.", r"block3\.", r"block4\.")
        )
        if blocks != (2, 2, 2):
            kind = "ResNet-34" if blocks == (3, 4, 6) else f"ResNet with {blocks} blocks"
            raise GeodduError(f"{where}: a {kind} encoder; geoddu's ResNet encoders are "
                              f"resnet18 and resnet50 (the reference offers resnet18/34)")
        head = _need(dec, "up4.outc.conv.weight", "decoder", where)
        cfg.update(encoder="resnet18", in_channels=enc["block1.0.weight"].shape[1], depth=4,
                   num_classes=head.shape[0])
    else:
        raise GeodduError(f"{where}: encoder weights are neither the reference's U-Net "
                          f"(inc.double_conv.0.weight) nor its ResNet (block1.0.weight)")
    if comm:
        conv1 = _need(comm, "conv1.weight", "communication_network", where)
        extra = sorted(k for k in comm if re.match(r"(conv|bn)([4-9]|\d\d+)\.", k))
        if extra:
            raise GeodduError(f"{where}: unknown key(s) communication_network {_few(extra)}")
        cfg.update(comm_features=conv1.shape[0], comm_kernel=conv1.shape[-1],
                   comm_layers=REFERENCE_COMM_LAYERS, communicate=True)
    else:
        cfg.update(comm_features=0, communicate=False)
    # The reference's transposed convs always carry a bias.
    cfg["up_bias"] = True
    return cfg


def _need(state: State, key: str, section: str, where: str | os.PathLike) -> torch.Tensor:
    if key not in state:
        raise GeodduError(f"{where}: missing key(s) {section} {key}")
    return state[key]


def from_reference(
    sections: Mapping[str, State], own: Mapping[str, torch.Tensor], encoder: str,
    where: str | os.PathLike,
) -> State:
    """The reference's weights under geoddu's names, checked against `own` (a DDUNet's state
    dict): unknown names, missing names and shape mismatches are one line each."""
    wanted = {key: reference_key(key, encoder) for key in own}
    have = {(s, k) for s in SECTIONS for k in sections[s]}
    unknown = sorted(have - set(wanted.values()))
    if unknown:
        raise GeodduError(f"{where}: unknown key(s) {_few([f'{s} {k}' for s, k in unknown])}")
    missing = [f"{s} {k}" for s, k in wanted.values() if (s, k) not in have]
    if missing:
        raise GeodduError(f"{where}: missing key(s) {_few(missing)}")
    state: State = {}
    for key, (section, name) in wanted.items():
        value = sections[section][name]
        if value.shape != own[key].shape:
            raise GeodduError(
                f"{where}: {section} {name} has shape {tuple(value.shape)}, expected "
                f"{tuple(own[key].shape)} for the architecture the other weights describe"
            )
        if value.dtype.is_floating_point != own[key].dtype.is_floating_point:
            raise GeodduError(f"{where}: {section} {name} holds {value.dtype}, "
                              f"expected {own[key].dtype}")
        # Weights saved in half precision become float32 like geoddu's own.
        state[key] = value.to(own[key].dtype)
    return state


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more, {len(keys)} in all)" if len(keys) > n else "")
