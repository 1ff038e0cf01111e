"""TSM's temporal shift, fused, on the CPU and through the CUDA emulator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gateshift
from gateshift import reference
from gateshift._ops import ops
from gateshift.testing import cuda_emulator

IMPLS = {"cpu": gateshift.temporal_shift, "cuda_emulator": cuda_emulator.temporal_shift}
# (B, T, C, H, W, fold_div): T = 1 and 2, C < fold_div (nothing shifts), fold_div = 1 (all
# channels take the next frame), odd sizes.
SHAPES = [(2, 8, 16, 5, 7, 8), (3, 1, 8, 4, 4, 4), (1, 2, 12, 1, 9, 3), (2, 3, 5, 3, 3, 8), (1, 4, 9, 6, 1, 2), (2, 3, 6, 3, 3, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_the_published_shift(impl, shape, dtype, gen):
    b, t, c, h, w, div = shape
    x = torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    out = IMPLS[impl](x, t, div)
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().clone().requires_grad_()
    expected = reference.temporal_shift(xr, t, div)
    (gx_r,) = torch.autograd.grad(expected, xr, g)
    # A shift moves values: it must be exact in every dtype.
    assert torch.equal(out, expected) and torch.equal(gx, gx_r)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_is_the_adjoint_of_forward(impl, gen):
    # <shift(x), g> == <x, shift^T(g)>: a published temporal-shift CUDA op shipped a
    # backward that repeated the forward's shift instead, and its tests never noticed.
    b, t, c, h, w = 3, 7, 24, 5, 6
    x = torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64).requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = IMPLS[impl](x, t, 8)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(torch.dot(out.flatten(), g.flatten()), torch.dot(x.flatten(), gx.flatten()),
                               rtol=1e-13, atol=0)
    # The backward is not the forward applied again:
    assert not torch.equal(gx, IMPLS[impl](g, t, 8))


def test_gradcheck_and_gradgradcheck(gen):
    x = torch.randn(6, 8, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gateshift.temporal_shift(x, 3, 4), (x,))
    assert torch.autograd.gradgradcheck(lambda x: gateshift.temporal_shift(x, 3, 4), (x,))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(reverse, requires_grad, gen):
    x5 = torch.randn(2, 3, 8, 4, 5, generator=gen, requires_grad=requires_grad)
    torch.library.opcheck(ops.temporal_shift.default, (x5, 2, reverse))
    x5 = x5.detach().transpose(1, 2).contiguous().transpose(1, 2)  # a BCTHW tensor's view
    torch.library.opcheck(ops.temporal_shift.default, (x5, 2, reverse))


def test_layouts_and_empty(gen):
    x = torch.randn(8, 16, 5, 5, generator=gen)
    expected = reference.temporal_shift(x, 4, 8)
    x5 = x.unflatten(0, (2, 4)).transpose(1, 2).contiguous()
    out5 = gateshift.temporal_shift(x5, fold_div=8, layout="BCTHW")
    assert out5.is_contiguous() and torch.equal(out5.transpose(1, 2).flatten(0, 1), expected)
    assert torch.equal(gateshift.temporal_shift(x.contiguous(memory_format=torch.channels_last), 4, 8), expected)
    assert gateshift.temporal_shift(x[:0], 4, 8).shape == (0, 16, 5, 5)


def test_compiles_without_graph_breaks(gen):
    x = torch.randn(8, 16, 5, 5, generator=gen, requires_grad=True)
    compiled = torch.compile(lambda x: gateshift.temporal_shift(x, 4, 8) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), reference.temporal_shift(x, 4, 8) * 2)


def test_module_is_a_drop_in(gen):
    net = nn.Conv2d(16, 8, 1)
    published = reference.TemporalShift(net, n_segment=4, n_div=8)
    fused = gateshift.TemporalShift(nn.Conv2d(16, 8, 1), n_segment=4, n_div=8)
    fused.load_state_dict(published.state_dict(), strict=True)
    x = torch.randn(8, 16, 5, 5, generator=gen)
    torch.testing.assert_close(fused(x), published(x))
    assert "n_segment=4, fold_div=8" in repr(fused)
    assert torch.equal(gateshift.TemporalShift(None, 4)(x), reference.temporal_shift(x, 4, 8))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x: gateshift.temporal_shift(x, 3), ValueError, "multiple of num_segments"),
        (lambda x: gateshift.temporal_shift(x, 4, 0), ValueError, "fold_div must be >= 1"),
        (lambda x: gateshift.temporal_shift(x, 4, 2.0), TypeError, "fold_div must be an int"),
        (lambda x: gateshift.temporal_shift(x.int(), 4), TypeError, "x must be float32"),
        (lambda x: gateshift.temporal_shift(x[0], 4), ValueError, "x must be a 4-D"),
        (lambda x: ops.temporal_shift(x.unflatten(0, (2, 4)), 17, False), ValueError, r"fold must be in \[0, C\]"),
        (lambda x: gateshift.TemporalShift(None, 0), ValueError, "n_segment must be a positive int"),
    ],
)
def test_errors(call, error, match, gen):
    x = torch.randn(8, 16, 3, 3, generator=gen)
    with pytest.raises(error, match=match):
        call(x)
