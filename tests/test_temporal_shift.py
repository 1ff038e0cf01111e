"""TSM's temporal shift: the temporal_shift op on every implementation (the CPU kernel,
the CUDA kernel run by the emulator, the CUDA kernel on a GPU) against the published
shift (gateshift.reference), and gateshift.TemporalShift as a drop-in for the published
module.

Layouts, argument errors, compile/export and property-based tests of every op live in
the cross-cutting files (test_layouts.py, test_errors.py, test_ecosystem.py,
test_properties.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    IMPLEMENTATIONS,
    check_runs_on_the_current_stream_and_device,
    implementation_cases,
    implementations,
    opcheck,
)
from torch import nn

import gateshift
from gateshift import reference

# (B, T, C, H, W, fold_div): T = 1 and 2, C < fold_div (nothing shifts), fold_div = 1 (all
# channels take the next frame), odd sizes, and a network-like 64 channels of 7 x 7.
SHAPES = [(2, 8, 16, 5, 7, 8), (3, 1, 8, 4, 4, 4), (1, 2, 12, 1, 9, 3), (2, 3, 5, 3, 3, 8), (1, 4, 9, 6, 1, 2),
          (2, 3, 6, 3, 3, 1), (2, 8, 64, 7, 7, 8)]


# The emulator's share: all but the network-like shape (its 6272 emulated blocks take seconds).
@pytest.mark.parametrize("impl,shape", implementation_cases(SHAPES, SHAPES[:-1]))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_the_published_shift(impl, shape, dtype, gen):
    b, t, c, h, w, div = shape
    x = torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    xi = impl.to(x).requires_grad_()
    out = impl.temporal_shift(xi, t, div)
    (gx,) = torch.autograd.grad(out, xi, impl.to(g))
    xr = x.clone().requires_grad_()
    expected = reference.temporal_shift(xr, t, div)
    (gx_r,) = torch.autograd.grad(expected, xr, g)
    # A shift moves values: it must be exact in every dtype.
    assert out.device.type == impl.device and out.dtype == dtype
    assert torch.equal(out.cpu(), expected) and torch.equal(gx.cpu(), gx_r)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_backward_is_the_adjoint_of_forward(impl, gen):
    # <shift(x), g> == <x, shift^T(g)>: a published temporal-shift CUDA op shipped a
    # backward that repeated the forward's shift instead, and its tests never noticed.
    b, t, c, h, w = 3, 7, 24, 5, 6
    x = impl.to(torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64)).requires_grad_()
    g = impl.to(torch.randn(x.shape, generator=gen, dtype=torch.float64))
    out = impl.temporal_shift(x, t, 8)
    (gx,) = torch.autograd.grad(out, x, g)
    # The two sums add the same products in different orders: their rounding is relative
    # to the products' magnitudes, not to the sum, which cancels (0.63 from 15120 products
    # of order 1 once, 1.3e-13 apart).
    scale = (out * g).abs().sum().item()
    torch.testing.assert_close(torch.dot(out.flatten(), g.flatten()), torch.dot(x.flatten(), gx.flatten()),
                               rtol=1e-13, atol=1e-14 * scale)
    # The backward is not the forward applied again:
    assert not torch.equal(gx, impl.temporal_shift(g, t, 8))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck_and_gradgradcheck(impl, gen):
    x = impl.to(torch.randn(6, 8, 3, 2, generator=gen, dtype=torch.float64)).requires_grad_()

    def fn(x):
        return impl.temporal_shift(x, 3, 4)

    # The emulator checks random projections of the Jacobian (fast_mode).
    fast = impl.name == "cuda_emulator"
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=fast)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(impl, reverse, requires_grad, gen):
    x5 = impl.to(torch.randn(2, 3, 8, 4, 5, generator=gen)).requires_grad_(requires_grad)
    opcheck(impl, "temporal_shift", (x5, 2, reverse))
    x5 = x5.detach().transpose(1, 2).contiguous().transpose(1, 2)  # a BCTHW tensor's view
    opcheck(impl, "temporal_shift", (x5, 2, reverse))


@pytest.mark.cuda
def test_runs_on_the_current_stream_and_the_device_of_x(gen):
    x = torch.randn(16, 64, 7, 7, generator=gen)
    check_runs_on_the_current_stream_and_device(lambda x: gateshift.temporal_shift(x, 8, 8), x)


# ---------------------------------------------------------------------------
# The module. It calls the public op, so it runs on the CPU kernel or on the GPU's.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", implementations("cpu", "cuda"))
def test_module_is_a_drop_in(impl, gen):
    net = nn.Conv2d(16, 8, 1)
    published = reference.TemporalShift(net, n_segment=4, n_div=8).to(impl.device)
    fused = gateshift.TemporalShift(nn.Conv2d(16, 8, 1), n_segment=4, n_div=8).to(impl.device)
    fused.load_state_dict(published.state_dict(), strict=True)
    x = torch.randn(8, 16, 5, 5, generator=gen).to(impl.device)
    torch.testing.assert_close(fused(x), published(x))
    assert "n_segment=4, fold_div=8" in repr(fused)
    assert torch.equal(gateshift.TemporalShift(None, 4)(x), reference.temporal_shift(x, 4, 8))


def test_module_takes_the_published_signature_and_static_shift(gen):
    x = torch.randn(8, 16, 5, 5, generator=gen)
    expected = reference.temporal_shift(x, 4, 8)
    module = gateshift.TemporalShift(None, 4, 8, inplace=False)  # positional and keyword, as published
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert "inplace" not in repr(module) and "inplace=True" in repr(gateshift.TemporalShift(None, 4, 8, True))
    # The published static method: TemporalShift.shift(x, n_segment, fold_div=3, inplace=False).
    assert torch.equal(gateshift.TemporalShift.shift(x, 4), reference.temporal_shift(x, 4, 3))
    assert torch.equal(gateshift.TemporalShift.shift(x, 4, fold_div=8), expected)
    with pytest.raises(TypeError, match="inplace must be a bool"):
        gateshift.TemporalShift(None, 4, 8, inplace="yes")


def test_in_place_shift_writes_into_its_input_and_trains(gen):
    leaf = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    net = nn.Conv2d(16, 4, 1).double()
    expected_module = reference.TemporalShift(net, 4, 8)
    fused = gateshift.TemporalShift(net, 4, 8, inplace=True)
    g = torch.randn(8, 4, 3, 3, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad(expected_module(leaf * 2), leaf, g)
    x = leaf * 2  # a non-leaf activation, as inside a network
    storage = x.data_ptr()
    out = fused(x)
    assert x.data_ptr() == storage
    torch.testing.assert_close(x, reference.temporal_shift(leaf.detach() * 2, 4, 8))  # x itself was shifted
    (got,) = torch.autograd.grad(out, leaf, g)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_tensors_shift_as_published(dtype, gen):
    x = torch.randint(0, 2 if dtype == torch.bool else 100, (6, 12, 3, 4), generator=gen).to(dtype)
    for shift in (lambda x: gateshift.temporal_shift(x, 3, 4), lambda x: gateshift.TemporalShift.shift(x, 3, 4),
                  gateshift.TemporalShift(None, 3, 4)):
        out = shift(x)
        assert out.dtype == dtype
        assert torch.equal(out, reference.temporal_shift(x, 3, 4))
