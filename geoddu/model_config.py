"""The model options every front names, without torch.

The CLI's option defaults and choices come from here, so `geoddu --help` need not import torch
(a second or more). Not under geoddu/models/: importing any module there runs that package's
__init__, which builds the torch modules.
"""

from __future__ import annotations

from typing import Any

# The encoders DDUNet builds: the paper's U-Net and the torchvision-style ResNets of
# geoddu/models/resnet.py (its RESNET_ENCODERS; tests/cli/test_cli.py checks the two agree).
ENCODERS = ("unet", "resnet18", "resnet50")

# The keywords every front uses; the names follow segmentation-models-pytorch / torchgeo.
DEFAULT_CONFIG: dict[str, Any] = {
    "encoder": "unet",
    "in_channels": 3,
    "num_classes": 3,
    "depth": 4,
    "base_channels": 16,
    "comm_features": 64,
    "communicate": True,
    "comm_layers": 3,
    "comm_kernel": 5,
    "comm_dilation": 1,
    "up_bias": True,
    "dropout": 0.1,
}

# Class maps are uint8 with 255 as nodata, so ids 0..254 are all a model can name.
MAX_CLASSES = 255
# 2^8 = 256 px per bottleneck cell is already coarser than any subimage the paper uses; deeper
# values in a file are corruption, not a model.
MAX_DEPTH = 8
# Bounds on the other sizes a checkpoint's config gives, far above any real model (the paper's:
# 3 layers of 5x5, base 64, F <= 512) and low enough that a corrupt or hostile file is refused
# before a model is built: 10^6 communication layers took minutes to build on the meta device
# (found by fuzzing), 10^6 channels would ask for terabytes of activations.
MAX_CHANNELS = 2**14  # in_channels, base_channels, comm_features
MAX_COMM_LAYERS = 64
MAX_COMM_KERNEL = 63
MAX_COMM_DILATION = 64
