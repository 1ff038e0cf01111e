"""The CPU kernels on float16 and bfloat16 data compute in float32 and round once.

GSM's forward outputs and the gates of a half-precision call are the float32 call's on
the same, exactly widened, inputs rounded to the data type, bit for bit. The other
values (GSF's output, the backward's, the statistics) come from sums in float32 whose
order may differ between the two element types' code paths: those agree within float32
rounding, then the data type's. This pins down the kernels' own element conversions
(csrc/cpu/element_conversion.h), which work on the raw bits so that GCC vectorises them.
"""

from __future__ import annotations

import pytest
import torch
from helpers import Case, fuse_inputs

from gateshift._ops import ops

HALF_DTYPES = (torch.float16, torch.bfloat16)
MEMORY_FORMATS = ("contiguous", "channels_last")


# 4-lane and 8-lane rows with remainders, and channels past P that pass through.
CASE = Case(B=2, T=4, C=12, H=5, W=7, P=8)


def _random_inputs(gen, dtype, fuse: bool, memory_format: str):
    """helpers.fuse_inputs' x, parameters (the BN affine in float32, as the ops take it
    for half-precision x) and an output gradient, in ``dtype``; x and grad_out
    (B, T, C, H, W), pixel-major for ``channels_last``."""
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(CASE, gen, dtype=dtype)
    grad_out = torch.randn(x.shape, generator=gen).to(dtype)
    if memory_format == "channels_last":  # pixel-major frames, read in place
        x = x.contiguous(memory_format=torch.channels_last)
    x, grad_out = (t.unflatten(0, (CASE.B, CASE.T)) for t in (x, grad_out))
    params = [weight, bias, scale.float(), shift.float()] + ([fuse_weight, fuse_bias] if fuse else [])
    return x, params, grad_out, CASE.gated


def _widened(t):
    return t.float() if t.dtype in HALF_DTYPES else t


def _assert_rounded_float32(actual, expected_float32, what, *, summed=False):
    """actual is expected_float32 rounded to actual's dtype: bitwise, or for sums (summed)
    within float32 rounding of the sum, then the dtype's own rounding."""
    expected = expected_float32.to(actual.dtype)
    if summed:
        eps = torch.finfo(actual.dtype).eps
        torch.testing.assert_close(actual.float(), expected.float(), rtol=max(eps, 1e-5), atol=1e-5, msg=what)
    else:
        assert torch.equal(actual, expected), f"{what}: max difference {(actual.float() - expected.float()).abs().max()}"


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("fuse", [False, True], ids=["gsm", "gsf"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_gate_shift_ops_round_the_float32_result_once(dtype, fuse, memory_format, gen):
    x, params, grad_out, p = _random_inputs(gen, dtype, fuse, memory_format)
    wide_x, wide_params, wide_grad = _widened(x), [_widened(t) for t in params], _widened(grad_out)
    if fuse:
        weight, bias, scale, shift, fuse_weight, fuse_bias = params
        out, gates, fusion = ops.gate_shift_fuse_forward(x, weight, bias, scale, shift, fuse_weight, fuse_bias, p, True)
        w_out, w_gates, w_fusion = ops.gate_shift_fuse_forward(wide_x, *wide_params, p, True)
        grads = ops.gate_shift_fuse_backward(grad_out, x, gates, fusion, weight, scale, shift, fuse_weight, p, True)
        w_grads = ops.gate_shift_fuse_backward(
            wide_grad, wide_x, w_gates, w_fusion, wide_params[0], scale, shift, wide_params[4], p, True
        )
        _assert_rounded_float32(fusion, w_fusion, "fusion table", summed=True)  # spatial means
    else:
        weight, bias, scale, shift = params
        out, gates = ops.gate_shift_forward(x, weight, bias, scale, shift, p, True)
        w_out, w_gates = ops.gate_shift_forward(wide_x, *wide_params, p, True)
        grads = ops.gate_shift_backward(grad_out, x, gates, weight, scale, shift, p, True)
        w_grads = ops.gate_shift_backward(wide_grad, wide_x, w_gates, wide_params[0], scale, shift, p, True)
    # GSF's output mixes by the fusion table's spatial means: sums, as above.
    _assert_rounded_float32(out, w_out, "output", summed=fuse)
    _assert_rounded_float32(gates, w_gates, "gates")
    names = ["grad_x", "grad_weight", "grad_bias", "grad_bn_scale", "grad_bn_shift", "grad_fuse_weight", "grad_fuse_bias"]
    for name, g, w_g in zip(names, grads, w_grads):
        _assert_rounded_float32(g, w_g, name, summed=True)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_batch_statistics_round_the_float32_result_once(dtype, memory_format, gen):
    x, _, grad_in, p = _random_inputs(gen, dtype, False, memory_format)
    mean, var = ops.batch_stats(x, p)
    w_mean, w_var = ops.batch_stats(_widened(x), p)
    _assert_rounded_float32(mean, w_mean, "mean", summed=True)
    _assert_rounded_float32(var, w_var, "var", summed=True)
    g_mean, g_var = torch.randn(p, generator=gen), torch.randn(p, generator=gen)
    for extra in (None, grad_in):
        actual = ops.batch_stats_backward(g_mean, g_var, x, mean, p, extra)
        expected = ops.batch_stats_backward(g_mean, g_var, _widened(x), mean, p, None if extra is None else _widened(extra))
        what = f"grad_x, grad_in {'given' if extra is not None else 'None'}"
        _assert_rounded_float32(actual, expected, what, summed=True)
