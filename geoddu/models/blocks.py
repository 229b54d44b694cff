"""The building blocks shared by every encoder-decoder (Fig. 3 of the paper)."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU -> Dropout2d) twice.

    The convs carry no bias because the BatchNorm right after them has its own shift; this is
    what makes the block counts of Table V come out (e.g. 2,800 for 3 -> 16).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers += [
                nn.Conv2d(cin, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pool, then a double conv block."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout))


class Up(nn.Module):
    """2x2 transposed conv (stride 2), concatenation with the skip, double conv.

    `up_bias` exists because the paper's two tables disagree: Table VIII counts a bias on the
    transposed conv, Table V does not.
    """

    def __init__(
        self,
        in_channels: int,
        up_channels: int,
        skip_channels: int,
        out_channels: int,
        up_bias: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, up_channels, 2, stride=2, bias=up_bias)
        self.conv = DoubleConv(skip_channels + up_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            # Skip first, up-sampled second, as in the paper's figures.
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)
