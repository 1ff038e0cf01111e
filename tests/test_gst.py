"""GST (grouped spatial-temporal aggregation) and the published GST ResNet-50.

The module against the published block (``gateshift.reference.GST``: two Conv3d on 5-D
tensors and a cat, with permutes for 2-D-layout tensors), in float64, float32 and
bfloat16, for both betas, both layouts, stride 2, odd sizes and T = 1; gradcheck; the
network's names, shapes and parameter counts against the published code and paper.
"""

from __future__ import annotations

import math

import pytest
import torch

import gateshift
from gateshift import reference
from gateshift.models import gst_resnet50


def published_and_ours(in_channels, out_channels, alpha, beta, stride, frames, gen, dtype=torch.float64):
    published = reference.GST(in_channels, out_channels, alpha, beta, stride, num_segments=frames)
    with torch.no_grad():
        for p in published.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
    ours = gateshift.GST(in_channels, out_channels, alpha, beta, stride, num_segments=frames)
    ours.load_state_dict(published.state_dict())  # strict: the published names and shapes
    return published.to(dtype), ours.to(dtype)


CASES = [  # in, out, alpha, beta, stride, B, T, H, W
    (8, 8, 4, 2, 1, 2, 4, 6, 5),
    (8, 12, 4, 1, 1, 1, 3, 7, 7),
    (6, 8, 2, 2, 2, 2, 3, 9, 6),  # stride 2, odd sizes
    (7, 9, 8, 2, 1, 1, 5, 5, 3),  # odd channel counts: 3 spatial and 4 temporal inputs
    (8, 8, 4, 2, 2, 3, 1, 8, 8),  # T = 1: the temporal taps meet the padding on both sides
    (4, 16, 4, 1, 2, 1, 2, 1, 1),  # 1x1 planes
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", ["BCTHW", "TSN"])
def test_gst_matches_the_published_block_in_float64(case, layout):
    cin, cout, alpha, beta, stride, b, t, h, w = case
    gen = torch.Generator().manual_seed(int(torch.randint(2**31, (1,))))
    published, ours = published_and_ours(cin, cout, alpha, beta, stride, t, gen)
    x = torch.randn(b, cin, t, h, w, generator=gen, dtype=torch.float64)
    if layout == "TSN":
        x = x.transpose(1, 2).contiguous().flatten(0, 1)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = published(x1), ours(x2)
    torch.testing.assert_close(y2, y1)
    g = torch.randn(y1.shape, generator=gen, dtype=torch.float64)
    grads1 = torch.autograd.grad(y1, [x1, *published.parameters()], g)
    grads2 = torch.autograd.grad(y2, [x2, *ours.parameters()], g)
    for name, a, e in zip(["x", "conv2", "Tconv"], grads2, grads1):
        torch.testing.assert_close(a, e, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["BCTHW", "TSN"])
@pytest.mark.parametrize("beta", [1, 2])
def test_gst_low_precision_error_is_the_published_blocks(dtype, layout, beta):
    # Both in the low dtype against the float64 published block: ours may be off by at
    # most twice the published block's own error (plus a few units in the last place).
    gen = torch.Generator().manual_seed(int(torch.randint(2**31, (1,))))
    published64, _ = published_and_ours(16, 16, 4, beta, 1, 4, gen)
    published, ours = published_and_ours(16, 16, 4, beta, 1, 4, gen, dtype=dtype)
    for m in (published, ours):
        m.load_state_dict({k: v.to(dtype) for k, v in published64.state_dict().items()})
    x = torch.randn(2, 16, 4, 6, 6, generator=gen, dtype=torch.float64)
    if layout == "TSN":
        x = x.transpose(1, 2).contiguous().flatten(0, 1)
    with torch.no_grad():
        expected = published64(x)
        err_published = (published(x.to(dtype)).double() - expected).abs().max()
        err_ours = (ours(x.to(dtype)).double() - expected).abs().max()
    eps = torch.finfo(dtype).eps * float(expected.abs().max())
    assert err_ours <= 2 * err_published + 4 * eps, (float(err_ours), float(err_published))


@pytest.mark.parametrize("layout", ["BCTHW", "TSN"])
@pytest.mark.parametrize("beta", [1, 2])
def test_gst_gradcheck(layout, beta):
    gen = torch.Generator().manual_seed(int(torch.randint(2**31, (1,))))
    _, ours = published_and_ours(4, 8, 4, beta, 2, 3, gen)
    x = torch.randn(1, 4, 3, 5, 4, generator=gen, dtype=torch.float64)
    if layout == "TSN":
        x = x.transpose(1, 2).contiguous().flatten(0, 1)
    x.requires_grad_()

    def f(x, ws, wt):
        return gateshift.gst.grouped_spatial_temporal(x, ws, wt, beta=beta, stride=2, num_segments=3)

    torch.autograd.gradcheck(f, (x, ours.conv2.weight, ours.Tconv.weight))


def test_gst_parameters_are_the_published_ones():
    gst = gateshift.GST(64, 64, alpha=4, beta=2, stride=2)
    assert gst.conv2.weight.shape == (48, 32, 1, 3, 3) and gst.Tconv.weight.shape == (16, 32, 3, 3, 3)
    assert gst.conv2.bias is None and gst.Tconv.bias is None
    assert gst.conv2.stride == (1, 2, 2) and gst.Tconv.stride == (1, 2, 2)
    large = gateshift.GST(64, 64, alpha=4, beta=1)
    assert large.conv2.weight.shape == (48, 64, 1, 3, 3) and large.Tconv.weight.shape == (16, 64, 3, 3, 3)
    assert "alpha=4, beta=2, stride=2" in repr(gst)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"in_channels": 0}, "in_channels must be a positive int"),
    ({"out_channels": 2.5}, "out_channels must be a positive int"),
    ({"alpha": 1}, "alpha must be at least 2"),
    ({"alpha": 16, "out_channels": 8}, "alpha must be at least 2 and at most out_channels=8"),
    ({"beta": 3}, "beta must be 1"),
    ({"stride": 0}, "stride must be a positive int"),
    ({"num_segments": -1}, "num_segments must be a positive int"),
])
def test_gst_constructor_errors(kwargs, match):
    args = {"in_channels": 8, "out_channels": 8} | kwargs
    with pytest.raises(ValueError, match=match):
        gateshift.GST(**args)


def test_gst_input_errors():
    with pytest.raises(ValueError, match=r"\(B\*T, C, H, W\) with num_segments set"):
        gateshift.GST(8, 8)(torch.randn(4, 8, 5, 5))
    with pytest.raises(ValueError, match="not a multiple of num_segments=3"):
        gateshift.GST(8, 8, num_segments=3)(torch.randn(4, 8, 5, 5))
    with pytest.raises(ValueError, match="C = in_channels = 8"):
        gateshift.GST(8, 8)(torch.randn(1, 6, 2, 5, 5))


# The published GST ResNet-50 (GST.py of the authors' code, and the paper's Table 2).
def test_gst_resnet50_names_and_shapes_are_the_published_ones():
    state = gst_resnet50(num_classes=174).state_dict()
    assert state["conv1.weight"].shape == (64, 3, 1, 7, 7)
    assert state["layer1.0.conv2.weight"].shape == (48, 32, 1, 3, 3)
    assert state["layer1.0.Tconv.weight"].shape == (16, 32, 3, 3, 3)
    assert state["layer3.5.bn2.running_var"].shape == (256,)
    assert state["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1, 1)
    assert state["fc.weight"].shape == (174, 2048)
    assert not any("gst" in k for k in state)  # the GST's parameters sit on the block, as published


@pytest.mark.parametrize(("alpha", "beta", "millions", "tolerance"), [
    (4, 2, 21.0, 0.05), (2, 2, 23.9, 0.05),  # the paper's Table 2, to its rounding
    # 19.62M and 29.52M here, 0.4% below the paper's figures: the published code
    # (GST.py) builds these shapes; the paper does not say what else it counted.
    (8, 2, 19.7, 0.1), (4, 1, 29.6, 0.1),
])
def test_gst_resnet50_parameters_match_the_paper(alpha, beta, millions, tolerance):
    net = gst_resnet50(alpha, beta, num_classes=174)
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - millions) < tolerance


def test_gst_resnet50_output_is_per_frame_and_matches_a_5d_reference():
    gen = torch.Generator().manual_seed(int(torch.randint(2**31, (1,))))
    net = gst_resnet50(num_classes=5).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    clips = torch.randn(1, 3, 2, 224, 224, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = net(clips)
        # Frame by frame through the network with the temporal convolution's outer taps
        # cut: what a TSN would compute; the GST network must differ from it (it mixes
        # frames) and equal it when Tconv only has its centre tap.
        for block in (m for m in net.modules() if hasattr(m, "Tconv")):
            block.Tconv.weight[:, :, [0, 2]] = 0
        per_frame = torch.cat([net(clips[:, :, t:t + 1]) for t in range(2)])
        centre_only = net(clips)
    assert y.shape == (2, 5)
    torch.testing.assert_close(centre_only, per_frame)
    assert not torch.allclose(y, centre_only)


def test_gst_resnet50_errors():
    with pytest.raises(ValueError, match=r"clips must be \(B, 3, T, H, W\)"):
        gst_resnet50(num_classes=3)(torch.randn(2, 3, 224, 224))
    with pytest.raises(ValueError, match="beta must be 1"):
        gst_resnet50(beta=4)
