"""ResNet-18/50 encoders cut at 1/16 (Fig. 12, Table IX), in torchvision's layer layout.

torchvision is not a dependency (its wheels are tied to one torch build); the layers below use
torchvision's module names and shapes, so torchvision, timm and torchgeo ResNet state dicts load
unchanged (encoder_weights.py). Weights only ever come from a local file: nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import GeodduError
from .blocks import DoubleConv


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
    )


_SPECS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6]),
}
RESNET_ENCODERS = tuple(_SPECS)
# The inter-conv's width (the bottleneck the communication network reads), and the decoder the
# paper's Table IX count implies: up blocks to 128, 64, 64 channels, then one more up block to
# 32 without a skip (the finest skip sits at 1/2). geoddu.analysis plans memory with these too.
RESNET_BOTTLENECK = 256
RESNET_DECODER = (128, 64, 64)
RESNET_FINAL_UP = 32


def resnet_skip_channels(name: str) -> list[int]:
    """The skips' widths at 1/2, 1/4 and 1/8 (stem, layer1, layer2), known before building."""
    block, _ = _SPECS[name]
    return [64, 64 * block.expansion, 128 * block.expansion]


class ResNetEncoder(nn.Module):
    """Stem + layer1..layer3 (to 1/16) + an 'inter-conv' double conv block to 256 channels.

    Returns the skips at 1/2 (stem), 1/4 (layer1), 1/8 (layer2) and the 1/16 bottleneck that the
    communication network reads.
    """

    stride = 16
    depth = 4

    def __init__(
        self,
        name: str = "resnet18",
        in_channels: int = 3,
        bottleneck_channels: int = RESNET_BOTTLENECK,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if name not in _SPECS:
            raise GeodduError(f"unknown encoder {name!r}; choose from unet, {', '.join(_SPECS)}")
        block, counts = _SPECS[name]
        self.name = name
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256), counts, strict=True)):
            layers = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(block(inplanes, planes, stride))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.inter_conv = DoubleConv(inplanes, bottleneck_channels, dropout)
        self.skip_channels = resnet_skip_channels(name)
        self.out_channels = bottleneck_channels
        self.frozen = False

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        s1 = self.relu(self.bn1(self.conv1(x)))
        s2 = self.layer1(self.maxpool(s1))
        s3 = self.layer2(s2)
        s4 = self.layer3(s3)
        return [s1, s2, s3], self.inter_conv(s4)

    def backbone_modules(self) -> list[nn.Module]:
        """The torchvision part (what pretrained weights fill and `freeze` fixes)."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]

    def freeze(self) -> None:
        """Fix the pretrained backbone (Sec. V-B): no gradients, BatchNorm statistics kept."""
        self.frozen = True
        for module in self.backbone_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNetEncoder:
        super().train(mode)
        if self.frozen:
            for module in self.backbone_modules():
                module.eval()
        return self

