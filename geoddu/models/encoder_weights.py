"""Pretrained ResNet-18/50 weights for the encoder, from a local torchvision, timm or torchgeo file.

All three name a ResNet's layers alike (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`): torchgeo's
ResNets are timm models and timm kept torchvision's names, so one mapping serves them all.
The file is read with `torch.load(weights_only=True)` and nothing is ever downloaded.

What is tolerated, because published files come that way: a `{"state_dict": ...}` wrapper
(Lightning, timm's training scripts), prefixes such as `module.` (DataParallel) or
`model.backbone.`, the classifier `fc.*` and `layer4.*` (the encoder stops at 1/16). Anything
else that does not fit is an error: a silently half-loaded encoder trains to a worse model
without any sign of why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import GeodduError
from .resnet import ResNetEncoder

ADAPT_OPTION = "--adapt-bands"
# Top-level keys under which checkpoints keep the weights themselves.
_WRAPPERS = ("state_dict", "model_state_dict", "model")
# Prefixes that wrapping modules add to every key; any sequence of them is stripped.
_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
# Parts of a full ResNet that the encoder does not have.
_UNUSED = ("fc.", "layer4.")
_STEM = "conv1.weight"
# ImageNet statistics in 8-bit units: what torchvision's and timm's ImageNet ResNets expect.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_SHOWN = 3


@dataclass(frozen=True)
class LoadedWeights:
    """What was loaded: the file's band count and whether its 3 bands were spread over more."""

    path: str
    bands: int
    adapted: bool


def load_encoder_weights(
    model: nn.Module, path: str | os.PathLike, *, adapt_bands: bool = False
) -> LoadedWeights:
    """Fill the ResNet encoder of `model` (a DDUNet or a ResNetEncoder) from a local file.

    The file's first convolution must take the model's band count, or 3 bands with
    `adapt_bands` (see `adapt_first_conv`). Any missing, unknown or misshapen encoder key is a
    one-line GeodduError naming the first few.
    """
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, ResNetEncoder):
        raise GeodduError("--encoder-weights needs --encoder resnet18 or resnet50")
    state = encoder_state_dict(path)
    own = {k: v for k, v in encoder.state_dict().items() if not k.startswith("inter_conv.")}
    _check_keys(path, encoder.name, state, own)
    stem = state[_STEM]
    bands, wanted = (stem.shape[1] if stem.ndim == 4 else -1), own[_STEM].shape[1]
    adapted = False
    if bands != wanted and stem.ndim == 4 and stem.shape[0] == own[_STEM].shape[0]:
        if not adapt_bands:
            hint = (f"pass {ADAPT_OPTION} to spread its RGB weights over the {wanted} bands, or "
                    if bands == 3 else "")
            raise GeodduError(f"{path}: its first convolution takes {bands} bands, the model "
                              f"{wanted}; {hint}choose the bands with --bands")
        if bands != 3:
            raise GeodduError(f"{path}: {ADAPT_OPTION} adapts 3-band (RGB) weights only; this "
                              f"file's first convolution takes {bands} bands")
        state[_STEM] = adapt_first_conv(stem, wanted)
        adapted = True
    _check_shapes(path, encoder.name, state, own)
    encoder.load_state_dict(
        {k: v.to(own[k].dtype) for k, v in state.items()}, strict=False
    )
    return LoadedWeights(str(path), bands, adapted)


def adapt_first_conv(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """RGB first-convolution weights for `bands` input bands, as timm's `adapt_input_conv`.

    1 band: the sum over R, G, B, so a gray image gives the RGB model's response to the same
    image as (g, g, g). Otherwise R, G, B repeat over the bands and are scaled by 3 / bands,
    which keeps the layer's response to an image whose bands are all equal when `bands` is a
    multiple of 3, and its scale roughly otherwise.
    """
    if bands == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-bands // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :bands] * (weight.shape[1] / bands)


def imagenet_normalization(bands: int) -> dict[str, list[float]]:
    """ImageNet mean/std in 8-bit units, repeated over the bands as `adapt_first_conv` does."""
    return {"mean": [IMAGENET_MEAN[b % 3] for b in range(bands)],
            "std": [IMAGENET_STD[b % 3] for b in range(bands)]}


def encoder_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ResNet part of a local state dict: wrapper and prefixes removed, fc/layer4 dropped."""
    state = _unwrap(path, _read(path))
    prefix = _prefix(path, state)
    # With a prefix, keys outside it belong to the rest of a larger model (a decoder, a head).
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in picked.items() if not k.startswith(_UNUSED)}


def _read(path: str | os.PathLike) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise GeodduError(f"{path}: encoder weights file not found") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user error
        raise GeodduError(
            f"{path}: not readable as a torch state dict with weights_only=True "
            f"({exc.__class__.__name__}); save the bare weights with "
            f"torch.save(model.state_dict(), FILE)"
        ) from exc


def _unwrap(path: str | os.PathLike, obj: Any) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if obj.get("format") == "geoddu-checkpoint":  # checkpoint.FORMAT: checkpoint imports models
            raise GeodduError(f"{path}: a geoddu checkpoint, not encoder weights; start from "
                              f"it with -m/--model")
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    what = f"a dict with keys {_few(list(obj))}" if isinstance(obj, dict) else type(obj).__name__
    raise GeodduError(f"{path}: no state dict of tensors in it ({what})")


def _prefix(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> str:
    found = [k[: -len(_STEM)] for k in state if k.endswith(_STEM) and _is_prefix(k[: -len(_STEM)])]
    if len(found) == 1:
        return found[0]
    if not found:
        raise GeodduError(f"{path}: no ResNet first convolution ({_STEM}) in it; its keys "
                          f"begin {_few(list(state))}")
    raise GeodduError(f"{path}: several ResNets in it (prefixes {_few(found)}); save the one "
                      f"to use on its own")


def _is_prefix(text: str) -> bool:
    while text:
        token = next((p for p in _PREFIXES if text.startswith(p)), None)
        if token is None:
            return False
        text = text[len(token):]
    return True


def _check_keys(path: str | os.PathLike, name: str, state: dict[str, torch.Tensor],
                own: dict[str, torch.Tensor]) -> None:
    unknown = [k for k in state if k not in own]
    # Files saved before BatchNorm counted its batches have no num_batches_tracked.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if not (unknown or missing):
        return
    parts = [f"{len(v)} {what} key(s) ({_few(v)})"
             for what, v in (("missing", missing), ("unknown", unknown)) if v]
    guess = _guess_arch(state)
    hint = f"; the file looks like a {guess}" if guess and guess != name else ""
    raise GeodduError(f"{path}: not {name} encoder weights: {' and '.join(parts)}{hint}")


def _check_shapes(path: str | os.PathLike, name: str, state: dict[str, torch.Tensor],
                  own: dict[str, torch.Tensor]) -> None:
    bad = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
           if v.shape != own[k].shape]
    if bad:
        raise GeodduError(f"{path}: {len(bad)} weight(s) shaped unlike {name}'s: "
                          f"{_few(bad, quote=False)}")


def _guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Which torchvision ResNet a (layer4-less) key set belongs to, for the error message."""
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    return {("basic", 2): "resnet18", ("basic", 6): "resnet34", ("bottleneck", 6): "resnet50",
            ("bottleneck", 23): "resnet101", ("bottleneck", 36): "resnet152"}.get((block, depth))


def _few(items: list[Any], quote: bool = True) -> str:
    shown = [repr(i) if quote else str(i) for i in items[:_SHOWN]]
    more = f", ... ({len(items)} in all)" if len(items) > _SHOWN else ""
    return ", ".join(shown) + more
