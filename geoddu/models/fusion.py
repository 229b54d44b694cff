"""An inference copy of a model: BatchNorm folded into the convolution before it, no dropout.

In eval mode BatchNorm is an affine map per channel, so it folds exactly into the preceding
conv's weights and bias; dropout is the identity. The copy does the same arithmetic in fewer
passes over memory (measured on a 2-core CPU: 0.70 -> 0.79 Mpx/s for DDU-Net(4,64,Y), and
1.14 Mpx/s with channels-last tensors), and differs from the original only by float rounding.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A fused, eval-mode deep copy of `model` (the original is left untouched).

    Every module in this package applies a BatchNorm directly to the output of the conv
    registered just before it (in Sequential blocks and in the ResNet blocks alike), which is
    what makes folding by registration order safe here.
    """
    fused = copy.deepcopy(model).eval()
    _fold(fused)
    return fused


def _fold(module: nn.Module) -> None:
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        prev = module._modules[names[i - 1]] if i else None
        if isinstance(child, nn.Dropout | nn.Dropout2d):
            module._modules[name] = nn.Identity()
        elif isinstance(child, nn.BatchNorm2d) and isinstance(prev, nn.Conv2d):
            module._modules[names[i - 1]] = fuse_conv_bn_eval(prev, child)
            module._modules[name] = nn.Identity()
        elif child is not None:
            _fold(child)
