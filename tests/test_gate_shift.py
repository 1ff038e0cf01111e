"""The fused gate_shift op against the plain-PyTorch reference, on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import Case, assert_close_to_reference, make_inputs, op_kwargs, run_with_grads

import gateshift
from gateshift import reference
from gateshift._ops import ops

# Ragged on purpose: T = 1, 2, 3, 8; H or W of 1; odd sizes; channels < C; both
# orders; with and without the BN affine and the bias.
CASES = [
    Case(2, 8, 16, 5, 7),
    Case(1, 1, 8, 4, 4),
    Case(3, 2, 8, 1, 9),
    Case(2, 3, 12, 6, 1, P=8),
    Case(1, 3, 6, 3, 5, order="grouped", affine=False),
    Case(2, 8, 20, 7, 7, P=12, bias=False),
    Case(1, 5, 4, 1, 1, affine=False, bias=False),
    Case(4, 3, 8, 9, 11, order="grouped"),
    Case(1, 8, 32, 14, 14),
    Case(2, 2, 10, 2, 3, P=6, order="grouped", bias=False),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(case, dtype, gen):
    inputs64 = make_inputs(case, gen)
    inputs = [t.to(dtype) if t is not None else None for t in inputs64]
    # The reference runs on the dtype-rounded inputs, so only the op's arithmetic differs.
    rounded64 = [t.to(torch.float64) if t is not None else None for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64).to(dtype)

    out, grads = run_with_grads(gateshift.gate_shift, case, inputs, grad_out)
    out64, grads64 = run_with_grads(reference.gate_shift, case, rounded64, grad_out.double())
    out_lp = grads_lp = None
    if dtype in (torch.bfloat16, torch.float16):
        out_lp, grads_lp = run_with_grads(reference.gate_shift, case, inputs, grad_out)
    else:
        grads_lp = [None] * len(grads)

    assert out.dtype == dtype
    assert_close_to_reference(out, out64, out_lp, what="out")
    names = [n for n, t in zip(("x", "weight", "bias", "bn_scale", "bn_shift"), inputs) if t is not None]
    for name, g, g64, glp in zip(names, grads, grads64, grads_lp):
        assert g.dtype == dtype
        assert_close_to_reference(g, g64, glp, what=f"grad {name}")


@pytest.mark.parametrize(
    "case",
    [Case(2, 3, 8, 3, 4), Case(1, 2, 6, 2, 3, P=4, order="grouped", bias=False), Case(1, 1, 4, 3, 1, affine=False)],
    ids=str,
)
def test_gradcheck(case, gen):
    x, weight, bias, scale, shift = (
        t.requires_grad_() if t is not None else None for t in make_inputs(case, gen)
    )

    def fn(x, weight, *optional):
        it = iter(optional)
        b = next(it) if bias is not None else None
        s = next(it) if scale is not None else None
        h = next(it) if shift is not None else None
        return gateshift.gate_shift(x, weight, b, **op_kwargs(case, s, h))

    args = [t for t in (x, weight, bias, scale, shift) if t is not None]
    assert torch.autograd.gradcheck(fn, args)


def test_double_backward_is_a_clear_error(gen):
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift = (t.requires_grad_() for t in make_inputs(case, gen))
    out = gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize(
    "case",
    [Case(3, 7, 24, 9, 10), Case(2, 5, 20, 6, 7, P=12, order="grouped"), Case(4, 2, 16, 5, 5, P=8)],
    ids=str,
)
def test_backward_is_the_adjoint_of_forward(case, gen):
    # With a zero gating weight the gates are the constant tanh(bias) and the op is
    # linear in x, so its x-gradient must be its exact adjoint: <op(x), g> == <x, op^T(g)>.
    # (A published temporal-shift CUDA op shipped a backward that repeated the
    # forward shift instead; a loose gradcheck never noticed.)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    weight = torch.zeros_like(weight)
    x5 = x.unflatten(0, (case.B, case.T))
    out5, gates = ops.gate_shift_forward(x5, weight, bias, scale, shift, case.gated, case.order == "interleaved")
    g5 = torch.randn(out5.shape, generator=gen, dtype=out5.dtype)
    grad_x5 = ops.gate_shift_backward(g5, x5, gates, weight, scale, shift, case.gated, case.order == "interleaved")[0]
    lhs = torch.dot(out5.flatten(), g5.flatten())
    rhs = torch.dot(x5.flatten(), grad_x5.flatten())
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)
    # And the shift really moves something: the op is not the identity here.
    assert (out5 - x5).abs().max() > 0.1


def test_gates_are_tanh_of_the_gate_conv(gen):
    case = Case(2, 4, 12, 6, 7)
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=torch.float32)
    x5 = x.unflatten(0, (case.B, case.T))
    _, gates = ops.gate_shift_forward(x5, weight, bias, scale, shift, case.C, True)
    u = torch.relu(x5.double() * scale.double().view(1, 1, -1, 1, 1) + shift.double().view(1, 1, -1, 1, 1))
    pre = F.conv3d(u.transpose(1, 2), weight.double(), bias.double(), padding=1, groups=2)
    expected = torch.tanh(pre).transpose(1, 2)  # (B, T, 2, H, W)
    assert gates.dtype == torch.float32 and gates.shape == expected.shape
    torch.testing.assert_close(gates.double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "case",
    # One clip, so that 1, 3 and 8 threads cut it into different runs of frames:
    # 17 x 18 planes make a gradient group one frame; 7 x 7 planes make it six.
    [Case(1, 8, 12, 17, 18, P=8), Case(1, 8, 16, 7, 7)],
    ids=str,
)
def test_parameter_gradients_are_reproducible_bitwise(case, gen):
    inputs = make_inputs(case, gen, dtype=torch.float32)
    grad_out = torch.randn(inputs[0].shape, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3, 8, 3):
            torch.set_num_threads(n)
            results.append(run_with_grads(gateshift.gate_shift, case, inputs, grad_out))
    finally:
        torch.set_num_threads(threads)
    (out0, grads0), *others = results
    for out, grads in others:  # any thread count, any run: the same bits
        assert torch.equal(out, out0)
        for g, g0 in zip(grads, grads0):
            assert torch.equal(g, g0)


def test_default_channels_and_order_are_the_published_modules(gen):
    case = Case(2, 3, 8, 4, 4)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    out = gateshift.gate_shift(x, weight, bias, num_segments=3, bn_scale=scale, bn_shift=shift)
    expected = reference.gate_shift(x, weight, bias, num_segments=3, bn_scale=scale, bn_shift=shift, channels=8)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["cpu", "cuda_emulator"])
def test_float32_affine_for_half_precision_input(dtype, impl, gen):
    # The GSM module passes its folded BatchNorm in float32: the affine's gradients
    # (sums over B*T*H*W) must come back in float32, not rounded to half precision.
    from gateshift.testing import cuda_emulator

    fn = gateshift.gate_shift if impl == "cpu" else cuda_emulator.gate_shift
    case = Case(2, 3, 8, 4, 5)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    inputs = [x.to(dtype), weight.to(dtype), bias.to(dtype), scale.float(), shift.float()]
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out, grads = run_with_grads(fn, case, inputs, grad_out.to(dtype))
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype, dtype, dtype, torch.float32, torch.float32]
    out64, grads64 = run_with_grads(reference.gate_shift, case, [t.double() for t in inputs], grad_out)
    for g, g64 in zip(grads[3:], grads64[3:]):  # float32 sums: well within half precision's error
        torch.testing.assert_close(g.double(), g64, rtol=2e-2, atol=2e-2 * g64.abs().max().item())
