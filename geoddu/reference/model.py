"""The paper's reference DDU-Net, re-created in plain torch, for comparisons with geoddu.

The reference code (github.com/corne00/HiRes-Seg-CNN, `models_multiple_GPUs/`) puts one
encoder-decoder clone per subimage on its own GPU. This file rebuilds the same modules from
that published structure -- the same module and parameter names, so the state dicts its
training scripts save load here unchanged -- and runs them on the CPU in one process, the
subimages one at a time in a loop as the reference's forward does. It imports nothing from the
reference repository (nor torchvision: the ResNet stages are spelled out with torchvision's
module names).

    ref = ReferenceDDUNet(n_channels=3, n_classes=7, num_comm_fmaps=64, depth=4,
                          complexity=16, subdom_dist=(2, 2)).eval()
    copy_geoddu_weights(geoddu_model, ref)           # give both the same weights
    logits = ref.forward_image(x)                     # x: (B, C, H, W), split as the reference
    ref.save_weights("unet.pth")                      # the reference's checkpoint format

Where the reference's code is unusual it is kept, not fixed: the subimage list is column-major
(index i * ny + j for column i, row j), and the split assumes square subimages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# model2d_components.py
# ---------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 dropout_rate: float = 0.1) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout_rate),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout_rate),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, dropout_rate=dropout_rate)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


def _pad_cat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # The reference pads the up-sampled map to the skip's size (a no-op for sizes that are
    # multiples of 2^depth, the only ones both codes accept), then puts the skip first.
    dy = skip.size(2) - up.size(2)
    dx = skip.size(3) - up.size(3)
    up = F.pad(up, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
    return torch.cat([skip, up], dim=1)


class Up(nn.Module):
    """The reference's non-bilinear Up (its Decoder always passes bilinear=False)."""

    def __init__(self, in_channels: int, out_channels: int, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, dropout_rate=dropout_rate)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_cat(x2, self.up(x1)))


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CNNCommunicator(nn.Module):
    """Three (conv with bias -> BatchNorm -> ReLU -> Dropout2d), F -> F channels."""

    def __init__(self, in_channels: int, out_channels: int, dropout_rate: float = 0.0,
                 kernel_size: int = 5, padding: int = 2) -> None:
        super().__init__()
        mid = (in_channels + out_channels) // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride=1, padding=padding)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.dropout1 = nn.Dropout2d(p=dropout_rate)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size, stride=1, padding=padding)
        self.bn2 = nn.BatchNorm2d(mid)
        self.dropout2 = nn.Dropout2d(p=dropout_rate)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size, stride=1, padding=padding)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.dropout3 = nn.Dropout2d(p=dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(self.relu(self.bn1(self.conv1(x))))
        x = self.dropout2(self.relu(self.bn2(self.conv2(x))))
        return self.dropout3(self.relu(self.bn3(self.conv3(x))))


# ---------------------------------------------------------------------------------------------
# sub_modules.py: the U-Net encoder and decoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, n_channels: int = 3, depth: int = 4, complexity: int = 32,
                 dropout_rate: float = 0.0) -> None:
        super().__init__()
        channels = [complexity * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(n_channels, complexity, dropout_rate=dropout_rate)
        self.contraction = nn.ModuleList(
            Down(channels[i], channels[i + 1], dropout_rate=dropout_rate) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [self.inc(x)]
        for layer in self.contraction:
            outputs.append(layer(outputs[-1]))
        return outputs


class Decoder(nn.Module):
    def __init__(self, depth: int = 4, n_classes: int = 3, complexity: int = 32,
                 dropout_rate: float = 0.0) -> None:
        super().__init__()
        channels = [complexity * 2**i for i in range(depth + 1)]
        self.expansion = nn.ModuleList(
            Up(channels[-1 - i], channels[-2 - i], dropout_rate=dropout_rate)
            for i in range(depth)
        )
        self.outc = OutConv(complexity, n_classes)

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        x = outputs[-1]
        for i, layer in enumerate(self.expansion):
            x = layer(x, outputs[-2 - i])
        return self.outc(x)


# ---------------------------------------------------------------------------------------------
# MultiGPU_ResNetUNet_with_comm.py: torchvision's ResNet-18/34 cut after layer3
# ---------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same attribute names, so torchvision keys load)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(inplanes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


_RESNET_BLOCKS = {"resnet18": (2, 2, 2), "resnet34": (3, 4, 6)}


class ResNetEncoder(nn.Module):
    """block1 = conv1/bn1/relu, block2 = maxpool + layer1, block3 = layer2, block4 = layer3,
    then an extra double conv 256 -> 256 (`conv`). The reference reads 3 bands whatever its
    n_channels says (torchvision's stem)."""

    def __init__(self, resnet_type: str = "resnet18", dropout_rate: float = 0.0) -> None:
        super().__init__()
        n1, n2, n3 = _RESNET_BLOCKS[resnet_type]
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        self.block2 = nn.Sequential(nn.MaxPool2d(3, 2, 1), _stage(64, 64, n1, 1))
        self.block3 = nn.Sequential(*_stage(64, 128, n2, 2))
        self.block4 = nn.Sequential(*_stage(128, 256, n3, 2))
        self.conv = DoubleConv(256, 256, dropout_rate=dropout_rate)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.block1(x)
        x2 = self.block2(x1)
        x3 = self.block3(x2)
        return [x1, x2, x3, self.conv(self.block4(x3))]


class UpResNet(nn.Module):
    def __init__(self, in_channels_1: int, in_channels_2: int, out_channels: int,
                 dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels_1, in_channels_1 // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels_1 // 2 + in_channels_2, out_channels,
                               dropout_rate=dropout_rate)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_cat(x2, self.up(x1)))


class OutResNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2, in_channels // 2, dropout_rate=dropout_rate)
        self.outc = OutConv(in_channels // 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outc(self.conv(self.up(x)))


class ResNetDecoder(nn.Module):
    def __init__(self, n_classes: int = 3, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.up1 = UpResNet(256, 128, 128, dropout_rate=dropout_rate)
        self.up2 = UpResNet(128, 64, 64, dropout_rate=dropout_rate)
        self.up3 = UpResNet(64, 64, 64, dropout_rate=dropout_rate)
        self.up4 = OutResNet(64, n_classes, dropout_rate=dropout_rate)

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        y = self.up1(outputs[-1], outputs[-2])
        y = self.up2(y, outputs[-3])
        y = self.up3(y, outputs[-4])
        return self.up4(y)


# ---------------------------------------------------------------------------------------------
# MultiGPU_UNet_with_comm.py / MultiGPU_ResNetUNet_with_comm.py, on one device
# ---------------------------------------------------------------------------------------------


class ReferenceDDUNet(nn.Module):
    """The reference's MultiGPU_(ResNet)UNet_with_comm, all clones on the CPU.

    `subdom_dist=(nx, ny)`: nx subimage columns, ny rows (the reference's names). `comm=False`
    is F = 0; `comm_network_but_no_communication=True` runs the communicator on each
    subimage alone (the paper's C = N). `encoder="resnet18"/"resnet34"` builds the ResNet
    variant (depth and complexity are then fixed by the ResNet).
    """

    def __init__(
        self,
        n_channels: int = 3,
        n_classes: int = 3,
        num_comm_fmaps: int = 64,
        depth: int = 3,
        subdom_dist: tuple[int, int] = (2, 2),
        comm: bool = True,
        complexity: int = 32,
        dropout_rate: float = 0.1,
        kernel_size: int = 5,
        padding: int = 2,
        comm_network_but_no_communication: bool = False,
        encoder: str = "unet",
    ) -> None:
        super().__init__()
        self.nx, self.ny = subdom_dist
        self.num_comm_fmaps = num_comm_fmaps
        self.comm = comm and num_comm_fmaps > 0
        self.comm_network_but_no_communication = comm_network_but_no_communication
        self.encoder_type = encoder
        if encoder == "unet":
            enc: nn.Module = Encoder(n_channels, depth, complexity, dropout_rate)
            dec: nn.Module = Decoder(depth, n_classes, complexity, dropout_rate)
        else:
            enc = ResNetEncoder(encoder, dropout_rate)
            dec = ResNetDecoder(n_classes, dropout_rate)
        n = self.nx * self.ny
        self.encoders = nn.ModuleList(copy.deepcopy(enc) for _ in range(n))
        self.decoders = nn.ModuleList(copy.deepcopy(dec) for _ in range(n))
        if self.comm:
            self.communication_network = CNNCommunicator(
                num_comm_fmaps, num_comm_fmaps, dropout_rate, kernel_size, padding
            )

    # -- the reference's index bookkeeping, kept as it is -------------------------------------
    def _get_list_index(self, i: int, j: int) -> int:
        return i * self.ny + j

    def concatenate_tensors(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        columns = []
        for i in range(self.nx):
            column = [tensors[self._get_list_index(i, j)] for j in range(self.ny)]
            columns.append(torch.cat(column, dim=2))
        return torch.cat(columns, dim=3)

    def _split_concatenated_tensor(self, t: torch.Tensor) -> list[torch.Tensor]:
        # The reference's names are swapped (height from dim 3); right for square subimages.
        h = t.shape[3] // self.nx
        w = t.shape[2] // self.ny
        return [
            t[:, :, j * h : (j + 1) * h, i * w : (i + 1) * w]
            for i in range(self.nx)
            for j in range(self.ny)
        ]

    def split_image(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the subimage list the reference's dataset hands its forward."""
        return self._split_concatenated_tensor(x)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, input_image_list: list[torch.Tensor]) -> torch.Tensor:
        assert len(input_image_list) == self.nx * self.ny, "one image per subimage"
        outputs = [self.encoders[k](x) for k, x in enumerate(input_image_list)]
        inputs_decoders = [[x.clone() for x in y] for y in outputs]
        f = self.num_comm_fmaps
        if self.comm:
            if not self.comm_network_but_no_communication:
                mosaic = self.concatenate_tensors([o[-1][:, -f:].clone() for o in outputs])
                parts = self._split_concatenated_tensor(self.communication_network(mosaic))
            else:
                parts = [self.communication_network(o[-1][:, -f:].clone()) for o in outputs]
            for k, part in enumerate(parts):
                inputs_decoders[k][-1][:, -f:, :, :] = part
        decoded = [self.decoders[k](inp) for k, inp in enumerate(inputs_decoders)]
        return self.concatenate_tensors(decoded)

    def forward_image(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for whole images, cut into the subimage grid as the reference."""
        return self.forward(self.split_image(x))

    # -- the reference's checkpoint format ------------------------------------------------------
    def reference_state(self) -> dict[str, Any]:
        """What the reference's `save_weights` writes: clone 0's weights, in one-item lists."""
        state: dict[str, Any] = {
            "encoder_state_dict": [self.encoders[0].state_dict()],
            "decoder_state_dict": [self.decoders[0].state_dict()],
        }
        if self.comm:
            state["communication_network_state_dict"] = self.communication_network.state_dict()
        return state

    def save_weights(self, path: str | Path) -> None:
        torch.save(self.reference_state(), path)

    def load_reference_state(self, state: dict[str, Any]) -> None:
        """The reference's `load_weights`: the one set of weights into every clone."""
        for encoder in self.encoders:
            encoder.load_state_dict(state["encoder_state_dict"][0])
        for decoder in self.decoders:
            decoder.load_state_dict(state["decoder_state_dict"][0])
        if self.comm:
            self.communication_network.load_state_dict(state["communication_network_state_dict"])


def reference_for(model: nn.Module, subdom_dist: tuple[int, int]) -> ReferenceDDUNet:
    """A ReferenceDDUNet with the architecture of a geoddu DDUNet (its `config`), random
    weights; use `copy_geoddu_weights` to give it the geoddu model's."""
    cfg = model.config
    return ReferenceDDUNet(
        n_channels=cfg["in_channels"],
        n_classes=cfg["num_classes"],
        num_comm_fmaps=cfg["comm_features"],
        depth=cfg["depth"],
        subdom_dist=subdom_dist,
        comm=cfg["comm_features"] > 0,
        complexity=cfg["base_channels"],
        dropout_rate=cfg["dropout"],
        kernel_size=cfg["comm_kernel"],
        padding=(cfg["comm_kernel"] - 1) // 2,
        comm_network_but_no_communication=not cfg["communicate"],
        encoder=cfg["encoder"],
    )


def copy_geoddu_weights(model: nn.Module, ref: ReferenceDDUNet) -> ReferenceDDUNet:
    """Give `ref` the weights of a geoddu DDUNet (every clone the same, as in the reference)."""
    from geoddu.reference.convert import to_reference

    ref.load_reference_state(to_reference(model.state_dict(), model.config))
    return ref
