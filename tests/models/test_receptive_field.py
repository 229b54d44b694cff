"""Table IV from the calculator, and the calculator checked against real gradients."""

import pytest
import torch

from geoddu.analysis import receptive_field, receptive_fields
from geoddu.models import create_model


@pytest.mark.parametrize(("depth", "unet", "ddunet"), [(2, 44, 92), (3, 92, 188), (4, 188, 380)])
def test_table_iv(depth, unet, ddunet):
    rf = receptive_fields({"depth": depth, "comm_features": 16})
    assert rf == {"without_communication": unet, "with_communication": ddunet}


def test_f_does_not_change_the_receptive_field():
    assert receptive_field({"depth": 3, "comm_features": 1}) == receptive_field(
        {"depth": 3, "comm_features": 64}
    )
    assert receptive_field({"depth": 3, "comm_features": 0}) == 92


def _footprints(model, size: int, positions: range, trials: int = 6) -> list[int]:
    """Width of the input region with a non-zero gradient for output pixels in `positions`.

    One backward pass: batch element (position, trial) only asks for the gradient of its own
    output pixel, and eval-mode batch elements do not interact. The union over random inputs
    keeps max-pooling's sparse gradient from hiding inputs.
    """
    model.eval().double()
    pos = list(positions)
    torch.manual_seed(0)
    x = torch.randn(len(pos) * trials, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = model(x, (1, 1))
    cols = torch.tensor([p for p in pos for _ in range(trials)])
    out[torch.arange(len(cols)), :, size // 2, cols].sum().backward()
    touched = (x.grad[:, 0] != 0).any(dim=1).view(len(pos), trials, size).any(dim=1)
    widths = []
    for row in touched:
        hit = row.nonzero().flatten()
        widths.append(int(hit.max() - hit.min() + 1))
    return widths


@pytest.mark.parametrize(
    ("name", "size"), [("U-Net(2)", 80), ("U-Net(3)", 128), ("DDU-Net(2,4,Y)", 128)]
)
def test_empirical_receptive_field_matches_theory(name, size):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, base_channels=4, num_classes=2)
    stride = model.stride
    centre = size // 2
    widths = _footprints(model, size, range(centre, centre + stride))
    theory = receptive_field(model.config)
    # The best-aligned output pixel sees exactly the theoretical field (Table IV) and no
    # pixel sees less; misaligned pixels see a little more through the 2x2 up-sampling.
    assert min(widths) == theory
    assert max(widths) < theory + 2 * stride
