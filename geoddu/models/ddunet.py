"""DDU-Net(D, F, C): weight-shared encoder-decoder clones joined by a communication network."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import GeodduError
from ..model_config import DEFAULT_CONFIG, ENCODERS
from ..partition import Partition
from .communication import CommunicationNetwork
from .encoder_weights import load_encoder_weights
from .execution import Stacked, SubimageExecution, as_grid, flatten_grid
from .resnet import RESNET_DECODER, RESNET_ENCODERS, RESNET_FINAL_UP, ResNetEncoder
from .unet import UNetDecoder, UNetEncoder


class DDUNet(nn.Module):
    """Encoder-decoder clones on N x M subimages with the last F bottleneck maps communicated.

    With `comm_features=0` on a 1x1 partition this is exactly the plain U-Net. With
    `communicate=False` and F > 0 the F maps go through the communication network one subimage
    at a time (the paper's C=N: extra bottleneck convolutions, no exchange).

    A plain module: its forward runs the composition (`run`) with equal-size subimages
    stacked, as inference wants. How else the stages run is a wrapper's business, never a
    change here: training's streams and spatial ranks (`geoddu.train.SubimageTraining`,
    which also keeps BatchNorm's statistics pooled over subimages of any sizes), the
    streaming engine (`geoddu.engine`), the ONNX export (`geoddu.export_onnx`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        encoder: str = "unet",
        depth: int = 4,
        base_channels: int = 16,
        comm_features: int = 64,
        communicate: bool = True,
        comm_layers: int = 3,
        comm_kernel: int = 5,
        comm_dilation: int = 1,
        up_bias: bool = True,
        dropout: float = 0.1,
        encoder_weights: str | None = None,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if encoder == "unet":
            self.encoder: nn.Module = UNetEncoder(in_channels, base_channels, depth, dropout)
            self.decoder = UNetDecoder(
                self.encoder.out_channels, self.encoder.skip_channels, num_classes, up_bias, dropout
            )
        elif encoder in RESNET_ENCODERS:
            if depth != 4:
                raise GeodduError("ResNet encoders are cut at 1/16: depth must be 4")
            self.encoder = ResNetEncoder(encoder, in_channels, dropout=dropout)
            self.decoder = UNetDecoder(
                self.encoder.out_channels,
                self.encoder.skip_channels,
                num_classes,
                up_bias,
                dropout,
                decoder_channels=list(RESNET_DECODER),
                final_up=RESNET_FINAL_UP,
            )
        else:
            raise GeodduError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        bottleneck = self.encoder.out_channels
        if not 0 <= comm_features <= bottleneck:
            raise GeodduError(
                f"comm_features must be between 0 and the {bottleneck} bottleneck channels"
            )
        self.comm = (
            CommunicationNetwork(comm_features, comm_layers, comm_kernel, comm_dilation, dropout)
            if comm_features
            else None
        )
        self.config = {
            "encoder": encoder,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "depth": depth,
            "base_channels": base_channels,
            "comm_features": comm_features,
            "communicate": bool(communicate and comm_features),
            "comm_layers": comm_layers,
            "comm_kernel": comm_kernel,
            "comm_dilation": comm_dilation,
            "up_bias": up_bias,
            "dropout": dropout,
        }
        _he_init(self)
        if encoder_weights:
            if encoder == "unet":
                raise GeodduError("--encoder-weights needs a ResNet encoder")
            load_encoder_weights(self.encoder, encoder_weights)
        if freeze_encoder:
            if encoder == "unet":
                raise GeodduError("freezing the encoder needs a pretrained ResNet encoder")
            self.encoder.freeze()

    # -- properties ---------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Subimage sizes must be multiples of this (2^D for the U-Net, 16 for ResNets)."""
        return self.encoder.stride

    @property
    def comm_features(self) -> int:
        return self.config["comm_features"]

    @property
    def communicates(self) -> bool:
        return self.config["communicate"]

    @property
    def comm_halo(self) -> int:
        """Bottleneck cells a communicated cell depends on, on each side (0 without exchange)."""
        return self.comm.halo if (self.comm is not None and self.communicates) else 0

    # -- the stages: what every execution runs (the composition is `run`) ----------------------
    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One subimage batch -> its skips (fine to coarse) and its bottleneck."""
        return self.encoder(x)

    def comm_input(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """The last F bottleneck maps: what a subimage contributes to the mosaic."""
        return bottleneck[:, self._kept :]

    def communicate(self, mosaic: torch.Tensor) -> torch.Tensor:
        """The communication network over a mosaic of F maps (or one subimage's, for C=N)."""
        assert self.comm is not None
        return self.comm(mosaic)

    def replace_maps(self, bottleneck: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The bottleneck with its last F maps replaced by the communicated ones."""
        return torch.cat([bottleneck[:, : self._kept], maps.to(bottleneck.dtype)], dim=1)

    def decode(
        self, skips: list[torch.Tensor], bottleneck: torch.Tensor, maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One subimage's logits: its last F bottleneck maps replaced by the communicated `maps`
        (None without communication: C=N runs the network on the subimage's own maps), then
        the decoder."""
        if self.comm is not None:
            if maps is None:
                if self.communicates:
                    raise GeodduError("a communicating DDU-Net decodes with communicated maps")
                maps = self.communicate(self.comm_input(bottleneck))
            bottleneck = self.replace_maps(bottleneck, maps)
        return self.decoder(bottleneck, skips)

    @property
    def _kept(self) -> int:
        """Bottleneck channels that are not communicated."""
        return self.encoder.out_channels - self.comm_features

    # -- the composition, written once -------------------------------------------------------
    def run(
        self,
        parts: Sequence[torch.Tensor],
        execution: SubimageExecution,
        live: Sequence[bool] | None = None,
    ) -> list[torch.Tensor | None]:
        """Encode every subimage, communicate the mosaic of their last F bottleneck maps,
        decode: the logits of each of `parts` (a batch of one subimage each), as `execution`
        runs the stages (`geoddu.models.execution`).

        `live` (one per part): a subimage marked False (no valid pixel) adds zeros to the
        mosaic and is not decoded (its entry is None), the rule the streaming engine applies to
        all-nodata subimages.
        """
        for t in parts:
            if t.shape[-2] % self.stride or t.shape[-1] % self.stride:
                raise GeodduError(
                    f"subimage of {t.shape[-2]} x {t.shape[-1]} is not a multiple of the "
                    f"model stride {self.stride}"
                )
        every = range(len(parts))
        encoded = execution.map(self.encode, [(p,) for p in parts], every)
        maps: list[torch.Tensor | None] = [None] * len(parts)
        if self.communicates:
            own = [self.comm_input(bottleneck) for _, bottleneck in encoded]
            if live is not None:
                own = [m if ok else torch.zeros_like(m) for m, ok in zip(own, live, strict=True)]
            maps = list(execution.mosaic(self.communicate, own))
        todo = [k for k in every if live is None or live[k]]
        decoded = execution.map(self.decode, [(*encoded[k], maps[k]) for k in todo], todo)
        logits: list[torch.Tensor | None] = [None] * len(parts)
        for k, out in zip(todo, decoded, strict=True):
            logits[k] = out
        return logits

    def forward(
        self, x: torch.Tensor, partition: Partition | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Logits for images x (B, C, H, W) cut into `partition` (a Partition or (N, M))."""
        partition = self.partition_for(x, partition)
        return Partition.stitch(self.forward_subimages(partition.split(x)))

    def forward_subimages(
        self, parts: Sequence[Sequence[torch.Tensor]], live: Sequence[bool] | None = None
    ) -> list[list[torch.Tensor | None]]:
        """Logits per subimage for a [row][col] grid of subimage batches (`run`, stacked)."""
        flat, grid = flatten_grid(parts)
        return as_grid(self.run(flat, Stacked(grid), live), grid)

    def partition_for(
        self, x: torch.Tensor, partition: Partition | tuple[int, int] | None
    ) -> Partition:
        """`partition` as a Partition of x's extent (None: one subimage), checked."""
        h, w = x.shape[-2:]
        if partition is None:
            partition = (1, 1)
        if not isinstance(partition, Partition):
            partition = Partition.uniform(h, w, *partition, multiple=self.stride)
        return partition.validate(h, w, self.stride)


def _he_init(model: nn.Module) -> None:
    """He (Kaiming) initialisation, as in the paper (Sec. III-C)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_NAME = re.compile(
    r"^\s*(?P<kind>ddu-?net|u-?net)\s*\(\s*(?P<d>\d+)\s*(?:,\s*(?P<f>\d+)\s*,\s*(?P<c>[YN])\s*)?\)\s*$",
    re.IGNORECASE,
)


def parse_model_name(name: str) -> dict[str, Any]:
    """The paper's notation -> constructor keywords: 'DDU-Net(3,32,Y)', 'U-Net(4)'."""
    m = _NAME.match(name)
    if m is None:
        raise GeodduError(f"cannot parse model name {name!r}; use e.g. DDU-Net(3,32,Y) or U-Net(3)")
    cfg: dict[str, Any] = {"encoder": "unet", "depth": int(m["d"])}
    if m["kind"].lower().startswith("ddu"):
        if m["f"] is None:
            raise GeodduError(f"{name!r}: DDU-Net needs (D, F, C)")
        cfg.update(comm_features=int(m["f"]), communicate=m["c"].upper() == "Y")
    else:
        if m["f"] is not None:
            raise GeodduError(f"{name!r}: U-Net takes only its depth, e.g. U-Net(3)")
        cfg.update(comm_features=0, communicate=False)
    return cfg


def create_model(name: str | None = None, **kwargs: Any) -> DDUNet:
    """Build any configuration: by the paper's name ('DDU-Net(3,32,Y)', 'U-Net(3)'), by encoder
    name ('unet', 'resnet18', 'resnet50') or from keywords alone. Keywords override the name."""
    cfg = dict(DEFAULT_CONFIG)
    if name is not None:
        if name.lower() in ENCODERS:
            cfg["encoder"] = name.lower()
        else:
            cfg.update(parse_model_name(name))
    unknown = set(kwargs) - set(DEFAULT_CONFIG) - {"encoder_weights", "freeze_encoder"}
    if unknown:
        raise GeodduError(f"unknown model option(s): {', '.join(sorted(unknown))}")
    cfg.update({k: v for k, v in kwargs.items() if v is not None})
    return DDUNet(**cfg)
