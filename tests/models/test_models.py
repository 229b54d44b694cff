"""The paper's parameter tables (V, VIII, IX) must come out of our models exactly."""

import pytest
import torch

from geoddu.analysis import count_parameters, parameter_counts
from geoddu.errors import GeodduError
from geoddu.models import DDUNet, UNet, create_model, parse_model_name
from geoddu.partition import Partition


def test_table_v_block_by_block():
    m = create_model("U-Net(4)", in_channels=3, base_channels=16, num_classes=3, up_bias=False)
    blocks = parameter_counts(m)["blocks"]
    assert list(blocks.values()) == [
        2800,
        13952,
        55552,
        221696,
        885760,
        573952,
        143616,
        35968,
        9024,
        51,
    ]
    assert parameter_counts(m)["total"] == 1942371


@pytest.mark.parametrize(("depth", "count"), [(2, 7487), (3, 30479), (4, 122031)])
def test_table_viii_encoder_decoder(depth, count):
    # The paper prints 30,470 for D=3; the same construction gives 30,479 (a misprint).
    m = create_model(f"U-Net({depth})", in_channels=1, base_channels=4, num_classes=3)
    assert parameter_counts(m)["encoder_decoder"] == count
    assert parameter_counts(m)["communication"] == 0


@pytest.mark.parametrize(
    ("f", "count"),
    [(1, 84), (2, 318), (4, 1236), (8, 4872), (16, 19344), (32, 77088), (64, 307776)],
)
def test_table_viii_communication(f, count):
    m = create_model(f"DDU-Net(4,{f},Y)", in_channels=1, base_channels=4, num_classes=3)
    assert parameter_counts(m)["communication"] == count


def test_table_ix_resnet18():
    m = create_model("resnet18", in_channels=3, num_classes=7, comm_features=256)
    blocks = parameter_counts(m)["blocks"]
    assert blocks["block1 (conv1+bn1)"] == 9536
    assert blocks["block2 (layer1)"] == 147968
    assert blocks["block3 (layer2)"] == 525568
    assert blocks["block4 (layer3)"] == 2099712
    assert blocks["inter-conv"] == 1180672
    assert count_parameters(m.decoder) == 845415
    assert parameter_counts(m)["communication"] == 4917504


def test_resnet_shapes_and_stride():
    """ResNet DDU-Nets cut at 1/16 and compose like the U-Net: the forward equals each
    subimage encoded alone, the mosaic of their last F maps communicated, each decoded."""
    for name in ("resnet18", "resnet50"):
        m = create_model(name, num_classes=7, comm_features=16).eval()
        assert m.stride == 16
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            out = m(x, (2, 3))
            cells = [p for row in Partition.uniform(64, 96, 2, 3).split(x) for p in row]
            encoded = [m.encode(c) for c in cells]
            assert all(b.shape == (1, 256, 2, 2) for _, b in encoded)
            maps = [b[:, -16:] for _, b in encoded]
            mosaic = m.comm(torch.cat([torch.cat(maps[3 * i : 3 * i + 3], -1)
                                       for i in range(2)], -2))
            by_hand = torch.cat([torch.cat(
                [m.decoder(torch.cat([encoded[3 * i + j][1][:, :-16],
                                      mosaic[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]], 1),
                           encoded[3 * i + j][0]) for j in range(3)], -1) for i in range(2)], -2)
        assert out.shape == (1, 7, 64, 96)
        torch.testing.assert_close(out, by_hand, rtol=1e-4, atol=1e-4)


def test_resnet_loads_torchvision_state_dict_and_freezes(tmp_path):
    ref = create_model("resnet18", num_classes=2, comm_features=8)
    # A torchvision-layout state dict: our backbone's keys plus an fc head and a layer4.
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in ref.encoder.state_dict().items()
        if not k.startswith("inter_conv.")
    }
    state["fc.weight"] = torch.randn(1000, 512)
    state["layer4.0.conv1.weight"] = torch.randn(512, 256, 3, 3)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    m = create_model(
        "resnet18", num_classes=2, comm_features=8, encoder_weights=str(path), freeze_encoder=True
    )
    assert torch.equal(m.encoder.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert not any(p.requires_grad for p in m.encoder.layer1.parameters())
    assert all(p.requires_grad for p in m.encoder.inter_conv.parameters())
    m.train()
    assert not m.encoder.bn1.training  # frozen BatchNorm keeps its statistics
    with pytest.raises(GeodduError, match="missing"):
        torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "bad.pth")
        create_model("resnet18", encoder_weights=str(tmp_path / "bad.pth"))


def test_names_and_factory():
    assert parse_model_name("DDU-Net(3,32,Y)") == {
        "encoder": "unet",
        "depth": 3,
        "comm_features": 32,
        "communicate": True,
    }
    assert parse_model_name("U-Net(2)")["comm_features"] == 0
    m = create_model("DDU-Net(2,8,N)", in_channels=1, base_channels=4)
    assert m.config["communicate"] is False and m.comm_features == 8
    with pytest.raises(GeodduError):
        create_model("DDU-Net(3)")
    with pytest.raises(GeodduError):
        create_model(unknown_option=1)
    with pytest.raises(GeodduError):
        create_model("U-Net(2)", base_channels=4, comm_features=999)


def test_f0_on_1x1_partition_is_the_plain_unet():
    torch.manual_seed(0)
    dd = create_model("U-Net(3)", in_channels=2, base_channels=4, num_classes=3).eval()
    unet = UNet(in_channels=2, num_classes=3, depth=3, base_channels=4).eval()
    unet.load_state_dict(dd.state_dict())
    x = torch.randn(2, 2, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(dd(x, (1, 1)), unet(x), rtol=0, atol=0)


def _outputs_after_changing_one_subimage(model: DDUNet):
    torch.manual_seed(1)
    x = torch.randn(1, 1, 32, 96)
    y = x.clone()
    y[..., :, 64:] = torch.randn(1, 1, 32, 32)  # change only the third subimage
    with torch.no_grad():
        a, b = model(x, (1, 3)), model(y, (1, 3))
    return a, b


def test_without_communication_subimages_are_independent():
    m = create_model("DDU-Net(3,8,N)", in_channels=1, base_channels=4).eval()
    a, b = _outputs_after_changing_one_subimage(m)
    torch.testing.assert_close(a[..., :64], b[..., :64], rtol=0, atol=0)
    assert not torch.allclose(a[..., 64:], b[..., 64:])


def test_with_communication_subimages_influence_each_other():
    m = create_model("DDU-Net(3,8,Y)", in_channels=1, base_channels=4).eval()
    a, b = _outputs_after_changing_one_subimage(m)
    assert not torch.allclose(a[..., :32], b[..., :32])  # the first subimage changed too


def test_unequal_subimages_and_subimage_api():
    from geoddu.partition import Partition

    m = create_model("DDU-Net(2,4,Y)", in_channels=1, base_channels=4).eval()
    x = torch.randn(1, 1, 48, 80)
    part = Partition((16, 32), (32, 16, 32))
    with torch.no_grad():
        whole = m(x, part)
        parts = m.forward_subimages(part.split(x))
    assert whole.shape == (1, 3, 48, 80)
    torch.testing.assert_close(Partition.stitch(parts), whole)
    with pytest.raises(GeodduError, match="multiple"):
        m(x, Partition((18, 30), (80,)))


@pytest.mark.parametrize("name", ["DDU-Net(2,4,Y)", "resnet18"])
def test_fused_inference_copy_computes_the_same_function(name):
    from geoddu.models.fusion import fuse_for_inference

    torch.manual_seed(0)
    m = create_model(name, in_channels=3, num_classes=3, base_channels=4, comm_features=4)
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    m.eval()
    fused = fuse_for_inference(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # original untouched
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, (2, 2)), m(x, (2, 2)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["DDU-Net(2,4,Y)", "resnet18"])
def test_conv_relu_fusion_gives_the_same_bits_in_bf16(name):
    """The bf16 inference copy runs conv + ReLU as one oneDNN call, inside Sequentials only
    (a ResNet block calls its ReLU module twice): the same bits as the two modules."""
    from geoddu.models.fusion import ConvReLU, fuse_for_inference

    torch.manual_seed(0)
    m = create_model(name, in_channels=3, num_classes=3, base_channels=4, comm_features=4).eval()
    plain = fuse_for_inference(m).to(torch.bfloat16)
    fused = fuse_for_inference(m, conv_relu=True).to(torch.bfloat16)
    pairs = [x for x in fused.modules() if isinstance(x, ConvReLU)]
    assert pairs and not any(isinstance(x, ConvReLU) for x in plain.modules())
    blocks = [b for b in fused.modules() if not isinstance(b, torch.nn.Sequential)
              and any(isinstance(c, torch.nn.ReLU) for c in b.children())]
    assert (name == "resnet18") == bool(blocks)  # ResNet blocks keep their own ReLU
    assert not any(isinstance(c, ConvReLU) for b in blocks for c in b.children())
    x = torch.randn(1, 3, 64, 64).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fused(x, (2, 2)), plain(x, (2, 2)))
    # fp32, which oneDNN runs on every x86 CPU: the fused call itself is exercised here also
    # where the CPU lacks oneDNN's bf16 kernels (AVX2 only), and bf16 above falls back.
    with torch.no_grad():
        assert torch.equal(fused.float()(x.float(), (2, 2)), plain.float()(x.float(), (2, 2)))
