"""BatchNorm's elementwise passes for bfloat16 (and float16) activations: `geoddu.train.
batchnorm` with `--precision bf16`.

Why not the float32 path's ops in bfloat16: on the CPU, torch's bfloat16 kernels for a tensor
times a per-channel vector (1, C, 1, 1) fall back to scalar loops where the channels-last inner
dimension C is shorter than a vector (C = 16 at a DDU-Net's top level: 8x slower than with a
vector's worth of channels), its bfloat16 ReLU is scalar too, and a bfloat16 sum into float32
copies the tensor first. So:

* the affine maps, (x - mean) * scale + shift per channel (per row and channel with a dropout
  mask), are torch's eval-mode BatchNorm kernel, vectorised for channels-last bfloat16 and
  computing in float32 from float32 parameters: no parameter rounded to 8 bits, and x need not
  be centred on its mean first (as the float32 path centres it) to stay exact;
* gradient * per-channel scale is added over rows of k pixels x C channels, with the scale
  repeated k times, so that the inner dimension is long;
* the ReLU clamps the bits: a bfloat16's (and a float16's) sign is its int16 sign, so
  max(bits, 0) zeroes exactly the negative numbers, in int16's vectorised kernel.
"""

from __future__ import annotations

import torch

_LOW = (torch.bfloat16, torch.float16)
_ROW = 256  # values in the inner dimension of `add_scaled_`'s rows


def is_low(dtype: torch.dtype) -> bool:
    """Whether activations of `dtype` take this module's passes."""
    return dtype in _LOW


def affine(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """((x - mean) * scale + shift) * mask in x's dtype: mean, scale and shift per channel (C,),
    any float dtype; `mask` (rows, C, 1, 1) or None."""
    f32 = torch.float32
    mean, scale, shift = mean.to(f32), scale.to(f32), shift.to(f32)
    if not x.numel():
        return x.clone()
    ones = torch.ones_like(mean)  # running variance 1 and eps 0: the kernel's invstd is 1
    if mask is None:
        return torch.ops.aten._native_batch_norm_legit_no_training(
            x, scale, shift, mean, ones, 0.0, 0.0)[0]
    out = torch.empty_like(x)
    rows = mask.reshape(mask.shape[0], -1).to(f32)
    unused = x.new_empty(0, dtype=f32)
    for r in range(x.shape[0]):
        torch.ops.aten.native_batch_norm.out(
            x[r : r + 1], scale * rows[r], shift * rows[r], mean, ones, False, 0.0, 0.0,
            out=out[r : r + 1], save_mean=unused, save_invstd=unused)
    return out


def relu_(y: torch.Tensor) -> torch.Tensor:
    """y.relu_() (+0 where y was negative or -0)."""
    y.view(torch.int16).clamp_min_(0)
    return y


def add_scaled_(out: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """out += grad * scale, `scale` (rows or 1, C, 1, 1) in out's dtype."""
    n, c, h, w = out.shape
    k = _pixels_per_row(c, h * w)
    cl = torch.channels_last
    if k == 1 or not (out.is_contiguous(memory_format=cl) and grad.is_contiguous(memory_format=cl)):
        return out.addcmul_(grad, scale)
    rows = out.permute(0, 2, 3, 1).reshape(n, h * w // k, k * c)  # views of the same memory
    grads = grad.permute(0, 2, 3, 1).reshape(n, h * w // k, k * c)
    rows.addcmul_(grads, scale.reshape(scale.shape[0], 1, c).repeat(1, 1, k))
    return out


def _pixels_per_row(channels: int, pixels: int) -> int:
    """The largest power of two k <= _ROW / channels that divides `pixels`."""
    k = 1
    while 2 * k * channels <= _ROW and pixels % (2 * k) == 0:
        k *= 2
    return k
