"""The communication network: a small fully-convolutional net over the bottleneck mosaic."""

from __future__ import annotations

from torch import nn


class CommunicationNetwork(nn.Sequential):
    """`layers` x (KxK conv with bias -> BatchNorm -> ReLU -> Dropout2d), F -> F channels.

    'Same' padding keeps the mosaic's size, so the output can be split back along the same
    subimage borders. Being fully convolutional, it accepts a mosaic of any number of subimages.
    """

    def __init__(
        self,
        features: int,
        layers: int = 3,
        kernel_size: int = 5,
        dilation: int = 1,
        dropout: float = 0.1,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError("the communication kernel size must be odd to keep 'same' padding")
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [
                nn.Conv2d(
                    features,
                    features,
                    kernel_size,
                    padding=dilation * (kernel_size - 1) // 2,
                    dilation=dilation,
                    bias=True,
                ),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
        super().__init__(*mods)
        self.features = features
        self.layers = layers
        self.kernel_size = kernel_size
        self.dilation = dilation

    @property
    def halo(self) -> int:
        """Bottleneck cells on each side that influence one output cell (the exact-tiling halo)."""
        return self.layers * self.dilation * (self.kernel_size - 1) // 2
