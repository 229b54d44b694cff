"""The U-Net encoder and decoder of Fig. 1/3 (depth D, base channels doubling per level)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv, Down, Up


class UNetEncoder(nn.Module):
    """Input block plus D down blocks. Returns the skips (fine to coarse) and the bottleneck."""

    def __init__(
        self, in_channels: int, base_channels: int = 16, depth: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.stride = 2**depth
        self.channels = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, base_channels, dropout)
        self.downs = nn.ModuleList(
            Down(self.channels[i], self.channels[i + 1], dropout) for i in range(depth)
        )

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def skip_channels(self) -> list[int]:
        return self.channels[:-1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        return skips[:-1], skips[-1]


class UNetDecoder(nn.Module):
    """D up blocks mirroring the encoder, then a 1x1 conv to the class logits."""

    def __init__(
        self,
        bottleneck_channels: int,
        skip_channels: list[int],
        num_classes: int,
        up_bias: bool = True,
        dropout: float = 0.1,
        decoder_channels: list[int] | None = None,
        final_up: int | None = None,
    ) -> None:
        """`decoder_channels[i]` is the output width of the i-th up block (coarse to fine).

        By default it mirrors the skips (the plain U-Net). `final_up` adds one more up block
        without a skip (the ResNet variant, whose finest skip sits at 1/2 resolution).
        """
        super().__init__()
        skips = list(reversed(skip_channels))
        outs = decoder_channels or skips
        self.ups = nn.ModuleList()
        cin = bottleneck_channels
        for skip, cout in zip(skips, outs, strict=True):
            self.ups.append(Up(cin, cin // 2, skip, cout, up_bias, dropout))
            cin = cout
        self.final = None
        if final_up is not None:
            self.final = Up(cin, final_up, 0, final_up, up_bias, dropout)
            cin = final_up
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = bottleneck
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        if self.final is not None:
            x = self.final(x)
        return self.head(x)


class UNet(nn.Module):
    """The plain U-Net of Fig. 1: one encoder-decoder over the whole image, no subimages."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        depth: int = 4,
        base_channels: int = 16,
        up_bias: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, base_channels, depth, dropout)
        self.decoder = UNetDecoder(
            self.encoder.out_channels, self.encoder.skip_channels, num_classes, up_bias, dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, bottleneck = self.encoder(x)
        return self.decoder(bottleneck, skips)
