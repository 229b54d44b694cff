"""Receptive field, parameter and memory accounting (the paper's Tables IV, V, VIII and IX)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .models.ddunet import DEFAULT_CONFIG, DDUNet
from .models.resnet import (
    RESNET_BOTTLENECK,
    RESNET_DECODER,
    RESNET_FINAL_UP,
    resnet_skip_channels,
)

# -- receptive field ---------------------------------------------------------------------------
# A layer on the path from the input to one output pixel: ("conv", kernel, stride, dilation)
# covers pooling too; ("up", kernel, stride) is a transposed convolution.
Op = tuple[Any, ...]


def _conv(k: int, s: int = 1, d: int = 1) -> Op:
    return ("conv", k, s, d)


def _encoder_path(cfg: dict[str, Any]) -> list[Op]:
    enc = cfg["encoder"]
    if enc == "unet":
        path = [_conv(3), _conv(3)]
        for _ in range(cfg["depth"]):
            path += [_conv(2, 2), _conv(3), _conv(3)]
        return path
    # ResNets: stem, max-pool, then the residual branch (the longer path) of every block.
    path = [_conv(7, 2), _conv(3, 2)]
    blocks = {"resnet18": [2, 2, 2], "resnet50": [3, 4, 6]}[enc]
    for stage, n in enumerate(blocks):
        for b in range(n):
            s = 2 if (stage > 0 and b == 0) else 1
            path += (
                [_conv(3, s), _conv(3)] if enc == "resnet18" else [_conv(1), _conv(3, s), _conv(1)]
            )
    return path + [_conv(3), _conv(3)]  # inter-conv


def _decoder_path(cfg: dict[str, Any]) -> list[Op]:
    ups = cfg["depth"] if cfg["encoder"] == "unet" else 4
    return [op for _ in range(ups) for op in (("up", 2, 2), _conv(3), _conv(3))] + [_conv(1)]


def receptive_field(config: dict[str, Any] | None = None, communicate: bool | None = None) -> int:
    """Theoretical receptive field (pixels along one side) of one output pixel.

    Computed backwards from one output pixel, layer by layer: a conv grows the region to
    s*(r-1) + d*(k-1) + 1; a 2x2 stride-2 transposed conv maps r fine cells onto ceil(r/2)
    coarse ones (the pixel aligned with the up-sampling grid). This reproduces Table IV:
    U-Net 44 / 92 / 188 and DDU-Net 92 / 188 / 380 for D = 2 / 3 / 4 (for DDU-Net, one
    infinitely large subimage, as in the paper). It equals the smallest footprint of
    d(output pixel)/d(input) over pixel positions; see tests/models/test_receptive_field.py.
    """
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    with_comm = cfg["comm_features"] > 0 if communicate is None else communicate
    comm = [_conv(cfg["comm_kernel"], 1, cfg["comm_dilation"])] * cfg["comm_layers"]
    path = _encoder_path(cfg) + (comm if with_comm else []) + _decoder_path(cfg)
    r = 1
    for op in reversed(path):
        if op[0] == "conv":
            _, k, s, d = op
            r = s * (r - 1) + d * (k - 1) + 1
        else:
            _, k, s = op
            r = max(1, math.ceil((r - k) / s) + 1)
    return r


def receptive_fields(config: dict[str, Any] | None = None) -> dict[str, int]:
    return {
        "without_communication": receptive_field(config, communicate=False),
        "with_communication": receptive_field(config, communicate=True),
    }


# -- parameters --------------------------------------------------------------------------------
def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model: DDUNet) -> dict[str, Any]:
    """Totals per part plus a block-by-block breakdown in the order of Tables V and IX."""
    enc, dec = model.encoder, model.decoder
    blocks: list[tuple[str, nn.Module | None]] = []
    if model.config["encoder"] == "unet":
        blocks.append(("input block", enc.inc))
        blocks += [(f"encoder block {i + 1}", d) for i, d in enumerate(enc.downs)]
    else:
        blocks += [
            ("block1 (conv1+bn1)", nn.ModuleList([enc.conv1, enc.bn1])),
            ("block2 (layer1)", enc.layer1),
            ("block3 (layer2)", enc.layer2),
            ("block4 (layer3)", enc.layer3),
            ("inter-conv", enc.inter_conv),
        ]
    blocks += [(f"decoder block {i + 1}", u) for i, u in enumerate(dec.ups)]
    if dec.final is not None:
        blocks.append((f"decoder block {len(dec.ups) + 1}", dec.final))
    blocks.append(("output block", dec.head))
    ed = count_parameters(enc) + count_parameters(dec)
    comm = count_parameters(model.comm)
    return {
        "encoder_decoder": ed,
        "communication": comm,
        "total": ed + comm,
        "blocks": {name: count_parameters(m) for name, m in blocks},
    }


# -- memory ------------------------------------------------------------------------------------
@dataclass
class MemoryRow:
    name: str
    size: int
    in_channels: int
    out_channels: int
    values: int
    megabytes: float
    weights: int


def memory_table(
    model: DDUNet, height: int = 1024, width: int | None = None, subimages: int = 1
) -> list[dict[str, Any]]:
    """Feature-map memory stored for training, per block, in the manner of Table V.

    Rules (float32 maps, 4 bytes): a double conv block keeps 4 maps of its output width (two
    conv outputs, two BatchNorm outputs; ReLU and dropout act in place); a down block adds the
    pooled input and the max-pool indices (int64); an up block adds the concatenated input; the
    communication network keeps its input mosaic and 3 x 2 maps. With these rules the U-Net rows
    of Table V come out (67M, 42M/176 MB, 21M/88 MB, ..., 101M/384 MB); the paper's
    communication row is 7.6M where these rules give 7.3M (its derivation is not given).
    `height` x `width` is the whole image; `subimages` only scales the communication row, which
    sees the mosaic of all subimages of one subimage size (height x width).
    """
    if model.config["encoder"] != "unet":
        raise ValueError("the memory table is defined for the U-Net encoder-decoder")
    width = width or height
    cfg = model.config
    ch = [c for c, _ in encoder_levels(cfg)]
    counts = parameter_counts(model)["blocks"]
    rows: list[MemoryRow] = []

    def add(
        name: str,
        scale: int,
        cin: int,
        cout: int,
        values: int,
        extra_bytes: int,
        w: int,
        size: int | None = None,
    ) -> None:
        hw = (height // scale) * (width // scale)
        vals = values * hw
        mb = (vals * 4 + extra_bytes * hw) / 2**20
        rows.append(MemoryRow(name, size or height // scale, cin, cout, vals, round(mb, 2), w))

    add("input", 1, cfg["in_channels"], cfg["in_channels"], cfg["in_channels"], 0, 0)
    add("input block", 1, cfg["in_channels"], ch[0], 4 * ch[0], 0, counts["input block"])
    for i in range(cfg["depth"]):
        s = 2 ** (i + 1)
        # pooled input (float32) + its indices (int64, 8 bytes) + 4 maps of the output width
        add(
            f"encoder block {i + 1}",
            s,
            ch[i],
            ch[i + 1],
            2 * ch[i] + 4 * ch[i + 1],
            8 * ch[i] - 4 * ch[i],
            counts[f"encoder block {i + 1}"],
        )
    f = cfg["comm_features"]
    if f:
        s = model.stride
        hw = (height // s) * (width // s) * subimages
        vals = (1 + 2 * cfg["comm_layers"]) * f * hw
        rows.append(
            MemoryRow(
                "communication network",
                height // s,
                f,
                f,
                vals,
                round(vals * 4 / 2**20, 2),
                count_parameters(model.comm),
            )
        )
    for i in range(cfg["depth"]):
        level = cfg["depth"] - 1 - i
        s = 2**level
        # concatenated input (skip + up-sampled) + 4 maps of the output width
        # Table V lists a decoder block under the size of its (coarser) input.
        add(
            f"decoder block {i + 1}",
            s,
            ch[level + 1],
            ch[level],
            6 * ch[level],
            0,
            counts[f"decoder block {i + 1}"],
            size=height // (2 * s),
        )
    add("output block", 1, ch[0], cfg["num_classes"], cfg["num_classes"], 0, counts["output block"])
    return [asdict(r) for r in rows]


# -- inference: what one subimage holds, from the configuration alone --------------------------
def encoder_levels(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(channels, downscale) of what the encoder hands the decoder: the skips, fine to coarse,
    then the bottleneck. The U-Net: base x 2^i channels at 1/2^i, i = 0..D. The ResNets: the
    stem's 64 at 1/2, layer1 and layer2 at 1/4 and 1/8, the inter-conv's 256 at 1/16."""
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["encoder"] == "unet":
        return [(cfg["base_channels"] * 2**i, 2**i) for i in range(cfg["depth"] + 1)]
    skips = list(zip(resnet_skip_channels(cfg["encoder"]), (2, 4, 8), strict=True))
    return [*skips, (RESNET_BOTTLENECK, 16)]


def encoder_maps(config: dict[str, Any], size: int) -> list[tuple[int, int, int]]:
    """(channels, height, width) of one `size` px subimage's skips and bottleneck."""
    return [(c, size // s, size // s) for c, s in encoder_levels(config)]


def decoder_levels(config: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """(up-sampled, skip, output channels, downscale) of each up block, coarse to fine: an up
    block halves its input's channels, concatenates the skip and convolves to its output
    width (the skip's, for the U-Net)."""
    cfg = {**DEFAULT_CONFIG, **config}
    *skips, (width, _) = encoder_levels(cfg)
    unet = cfg["encoder"] == "unet"
    outs = [c for c, _ in reversed(skips)] if unet else list(RESNET_DECODER)
    rows = []
    for (skip, scale), out in zip(reversed(skips), outs, strict=True):
        rows.append((width // 2, skip, out, scale))
        width = out
    if not unet:  # one more up block, without a skip, to full resolution
        rows.append((RESNET_FINAL_UP, 0, RESNET_FINAL_UP, 1))
    return rows


def skip_values(config: dict[str, Any], size: int) -> int:
    """Values of one subimage's skips and bottleneck: what a one-pass strip keeps per cell
    until the cell is decoded."""
    return sum(c * h * w for c, h, w in encoder_maps(config, size))


def forward_values(config: dict[str, Any], size: int) -> int:
    """Values alive at once, beyond the skips and the bottleneck, at the busiest step of one
    subimage's forward in inference (BatchNorm folded, ReLU in place, no dropout): the
    normalised input, plus the largest up block (its up-sampled input, the concatenation with
    the skip and its two conv outputs), plus the logits."""
    cfg = {**DEFAULT_CONFIG, **config}
    busiest = max(
        (up + (skip + up if skip else 0) + 2 * out) * (size // scale) ** 2
        for up, skip, out, scale in decoder_levels(cfg)
    )
    return (cfg["in_channels"] + cfg["num_classes"]) * size * size + busiest


# -- compute -----------------------------------------------------------------------------------
def conv_flops(model: nn.Module, height: int, width: int, in_channels: int | None = None) -> int:
    """Multiply-adds x 2 of every conv / transposed conv in one forward pass of an H x W input.

    Counted from the layers' shapes with forward hooks on a meta-device copy (nothing is
    computed); BatchNorm, ReLU and pooling are left out, as usual for a roofline.
    """
    import copy

    import torch

    total = 0

    def hook(mod: nn.Module, inputs: tuple, out: Any) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.Conv2d):
            total += 2 * mod.in_channels // mod.groups * k * out.numel()
        else:  # transposed conv: every input value scatters a k x k x out_channels patch
            total += 2 * inputs[0].numel() * mod.out_channels * k

    meta = copy.deepcopy(model).eval().to_empty(device="meta")
    for m in meta.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            m.register_forward_hook(hook)
    cin = in_channels or getattr(model, "config", {}).get("in_channels", 3)
    with torch.no_grad():
        meta(torch.empty(1, cin, height, width, device="meta"))
    return total
