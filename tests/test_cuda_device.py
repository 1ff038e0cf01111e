"""The fused ops on a real GPU: parity with the reference, gradcheck, the module.

Marked `cuda`: skipped with a reason where torch.cuda.is_available() is False
(decided when the tests run, see conftest.py). `gateshift-check` runs the same
kind of checks from the command line.
"""

from __future__ import annotations

import pytest
import torch
from helpers import Case, assert_close_to_reference, make_inputs, op_kwargs, run_with_grads

import gateshift
from gateshift import reference

pytestmark = pytest.mark.cuda

CASES = [Case(2, 8, 64, 28, 28), Case(3, 3, 12, 7, 7, P=8, order="grouped"), Case(1, 1, 8, 1, 9, affine=False),
         Case(4, 16, 32, 13, 13, bias=False)]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_matches_reference_on_gpu(case, dtype, gen):
    inputs64 = make_inputs(case, gen)
    inputs = [t.to(device="cuda", dtype=dtype) if t is not None else None for t in inputs64]
    rounded64 = [t.double().cpu() if t is not None else None for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64)
    out, grads = run_with_grads(gateshift.gate_shift, case, inputs, grad_out.to(device="cuda", dtype=dtype))
    out64, grads64 = run_with_grads(reference.gate_shift, case, rounded64, grad_out)
    low = dtype in (torch.float16, torch.bfloat16)
    if low:
        out_lp, grads_lp = run_with_grads(reference.gate_shift, case, inputs, grad_out.to(device="cuda", dtype=dtype))
    else:
        out_lp, grads_lp = None, [None] * 5
    assert out.is_cuda
    assert_close_to_reference(out.cpu(), out64, None if out_lp is None else out_lp.cpu(), what="out")
    for g, g64, glp in zip(grads, grads64, grads_lp):
        assert_close_to_reference(g.cpu(), g64, None if glp is None else glp.cpu(), what="grad")


def test_gradcheck_on_gpu(gen):
    case = Case(2, 3, 8, 5, 6)
    x, weight, bias, scale, shift = (t.cuda().requires_grad_() for t in make_inputs(case, gen))

    def fn(x, weight, bias, scale, shift):
        return gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))

    assert torch.autograd.gradcheck(fn, (x, weight, bias, scale, shift))


def test_module_training_step_on_gpu(gen):
    published = reference.GSM(32, 4).cuda()
    with torch.no_grad():
        published.conv3D.weight.normal_(0, 0.1)
    fused = gateshift.GSM(32, 4).cuda()
    fused.load_state_dict(published.state_dict())
    x = torch.randn(8, 32, 14, 14, generator=gen).cuda()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = published(x1), fused(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-4)
    for p1, p2 in zip(published.parameters(), fused.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_module_batch_statistics_stay_float32_on_gpu(dtype, gen):
    # The BN statistics come from the CUDA batch_stats kernel in float32, as on the CPU.
    fused = gateshift.GSM(16, 4).cuda().to(dtype)
    x = (torch.randn(8, 16, 7, 7, generator=gen) * 3 + 100).cuda().to(dtype)
    fused(x)
    var, mean = torch.var_mean(x.double().unflatten(0, (2, 4)), dim=(0, 1, 3, 4), correction=0)
    n = 2 * 4 * 7 * 7
    expected = 0.9 * torch.ones(16, dtype=torch.float64, device="cuda") + 0.1 * var * n / (n - 1)
    torch.testing.assert_close(fused.bn.running_var.double(), expected.to(fused.bn.running_var.dtype).double(),
                               rtol=2e-2, atol=0)
    torch.testing.assert_close(fused.bn.running_mean.double(), (0.1 * mean).to(fused.bn.running_mean.dtype).double(),
                               rtol=2e-2, atol=0)


def test_non_default_stream_and_device_guard(gen):
    case = Case(2, 4, 16, 9, 9)
    x, weight, bias, scale, shift = (t.float().cuda() for t in make_inputs(case, gen))
    expected = gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))
    stream.synchronize()
    torch.testing.assert_close(out, expected)


def test_mixed_devices_are_a_clear_error(gen):
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    with pytest.raises(ValueError, match="weight must be on the device of x"):
        gateshift.gate_shift(x.float(), weight.float().cuda(), None, num_segments=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gate_shift_fuse_matches_reference_on_gpu(dtype, gen):
    case = Case(2, 8, 64, 14, 14)
    inputs64 = list(make_inputs(case, gen)) + [
        torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5,
        torch.randn(2, generator=gen, dtype=torch.float64) * 0.5,
    ]
    inputs = [t.to(device="cuda", dtype=dtype) for t in inputs64]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64)

    def run(fn, tensors, g):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        x, weight, bias, scale, shift, fw, fb = leaves
        out = fn(x, weight, bias, fw, fb, **op_kwargs(case, scale, shift))
        return [out, *torch.autograd.grad(out, leaves, g.to(device=out.device, dtype=out.dtype))]

    ours = run(gateshift.gate_shift_fuse, inputs, grad_out)
    exact = run(reference.gate_shift_fuse, [t.double().cpu() for t in inputs], grad_out)
    low = run(reference.gate_shift_fuse, inputs, grad_out) if dtype == torch.bfloat16 else [None] * 8
    for a, e, lp in zip(ours, exact, low):
        assert_close_to_reference(a.cpu(), e, None if lp is None else lp.cpu(), what="GSF")


def test_temporal_shift_is_exact_on_gpu(gen):
    x = torch.randn(16, 64, 7, 7, generator=gen).cuda().requires_grad_()
    g = torch.randn(x.shape, generator=gen).cuda()
    out = gateshift.temporal_shift(x, 8, 8)
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().clone().requires_grad_()
    expected = reference.temporal_shift(xr, 8, 8)
    (gx_r,) = torch.autograd.grad(expected, xr, g)
    assert torch.equal(out, expected) and torch.equal(gx, gx_r)
