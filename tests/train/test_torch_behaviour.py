"""The torch behaviours training's execution relies on beyond torch's documented API, each
pinned here so that a torch upgrade that changes one fails a test rather than a result:

* autograd runs a callback queued during a backward pass once, after every gradient of that
  pass is computed (`geoddu.train.grad_sums`; DDP's reducer finalises the same way);
* `aten.native_batch_norm_backward` in eval form gives the reductions sum(gy * xhat) and
  sum(gy), and `aten.threshold_backward` is ReLU's gradient (`geoddu.train.batchnorm`);
* `torch.batch_norm_update_stats` gives a tensor's per-channel mean and biased variance;
* `torch.fx.Tracer.create_args_for_root` can be overridden to trace a method that takes a
  list of tensors, one placeholder per tensor (`geoddu.train.streams`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geoddu.models import create_model
from geoddu.train.streams import stage_runner


def test_a_queued_callback_runs_once_after_the_backward_pass():
    w = torch.randn(3, requires_grad=True)
    seen: list[object] = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        torch.autograd.Variable._execution_engine.queue_callback(
            lambda: seen.append(w.grad.clone() if w.grad is not None else None))
        return grad

    y = w * 2
    y.register_hook(hook)
    # w's gradient has a second part (from w * 3) that autograd may add after the hook ran
    (y.sum() + (w * 3).sum()).backward()
    assert len(seen) == 1 and torch.equal(seen[0], torch.full((3,), 5.0))


def test_batch_norm_reductions_and_relu_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    gy = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    weight = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    eps = 1e-5
    _, gw, gb = torch.ops.aten.native_batch_norm_backward(
        gy, x, weight, mean, var, None, None, False, eps, [False, True, True])
    xhat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    assert torch.allclose(gw, (gy * xhat).sum((0, 2, 3)))
    assert torch.allclose(gb, gy.sum((0, 2, 3)))
    y = torch.relu(x)
    assert torch.equal(torch.ops.aten.threshold_backward(gy, y, 0), gy * (x > 0))
    m, v = torch.batch_norm_update_stats(x, None, None, 0.0)
    assert torch.allclose(m, mean) and torch.allclose(v, var)


def test_a_method_taking_a_list_traces_to_one_placeholder_per_tensor():
    net = create_model("DDU-Net(2,4,Y)", in_channels=3, num_classes=3, base_channels=4).train()
    x = torch.randn(1, 3, 16, 16)
    skips, bottleneck = net.encode(x)
    maps = torch.randn(1, 4, 4, 4)
    run = stage_runner(net.decode, (skips, bottleneck, maps))
    steps = run((skips, bottleneck, maps), None)
    # the traced stage pauses at its first training-mode BatchNorm layer ...
    layer, value, mask = next(steps)
    assert isinstance(layer, nn.BatchNorm2d) and mask is None
    assert layer is net.decoder.ups[0].conv[1]
    # ... whose input is the first conv of the first up block on [skip, up(bottleneck)]
    up = net.decoder.ups[0]
    expected = F.conv2d(torch.cat([skips[-1], up.up(net.replace_maps(bottleneck, maps))], 1),
                        up.conv[0].weight, padding=1)
    assert torch.allclose(value, expected, atol=1e-6)
