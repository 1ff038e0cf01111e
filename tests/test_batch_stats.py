"""The per-channel batch statistics op behind the GSM module's training-mode BatchNorm."""

from __future__ import annotations

import pytest
import torch

from gateshift._ops import ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels", [((2, 3, 8, 5, 7), 8), ((1, 4, 6, 1, 9), 4), ((3, 1, 5, 2, 2), 5)])
def test_matches_var_mean(shape, channels, dtype, gen):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 10).to(dtype)  # large mean: no cancellation
    mean, var = ops.batch_stats(x, channels)
    var_r, mean_r = torch.var_mean(x.double()[:, :, :channels], dim=(0, 1, 3, 4), correction=0)
    assert mean.dtype == var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mean.double(), mean_r, rtol=tol, atol=0)
    torch.testing.assert_close(var.double(), var_r, rtol=tol * 10, atol=0)


def test_gradcheck(gen):
    x = torch.randn(2, 3, 6, 3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.batch_stats(x, 4), (x,))


def test_gradient_is_the_adjoint(gen):
    # The statistics' gradient is linear in (grad_mean, grad_var) given x:
    # check against the reference's autograd on large random inputs.
    x = torch.randn(3, 5, 16, 9, 10, generator=gen, dtype=torch.float64)
    gm, gv = torch.randn(12, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    mean, _ = ops.batch_stats(x, 12)
    grad = ops.batch_stats_backward(gm, gv, x, mean, 12)
    xr = x.clone().requires_grad_()
    var_r, mean_r = torch.var_mean(xr[:, :, :12], dim=(0, 1, 3, 4), correction=0)
    (expected,) = torch.autograd.grad((mean_r * gm).sum() + (var_r * gv).sum(), xr)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    assert torch.equal(grad[:, :, 12:], torch.zeros_like(grad[:, :, 12:]))


def test_empty_input_gives_nan_like_var_mean():
    mean, var = ops.batch_stats(torch.empty(0, 3, 4, 2, 2), 4)
    assert torch.isnan(mean).all() and torch.isnan(var).all()
