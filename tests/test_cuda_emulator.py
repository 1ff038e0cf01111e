"""The CUDA kernels' exact device code, run on the CPU by the emulator
(gateshift.testing.cuda_emulator), against the reference.

The emulator copies inputs into NaN-guarded buffers and NaN-poisons outputs
inside guard margins it checks after every launch; these tests add inputs that
are channel slices of NaN-filled tensors, so stray reads between planes show too.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import Case, assert_close_to_reference, make_inputs, op_kwargs, run_with_grads

import gateshift
from gateshift import reference
from gateshift.testing import cuda_emulator

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def random_case(index: int, rng: random.Random) -> tuple[Case, torch.dtype, int]:
    """Case `index` of 32: every combination of dtype x affine x bias x order once,
    with random ragged sizes (T = 1, H = 1 and W = 1 among them) and SM counts."""
    dtype = DTYPES[index % 4]
    affine = bool(index // 4 % 2)
    bias = bool(index // 8 % 2)
    order = "interleaved" if index // 16 % 2 == 0 else "grouped"
    T = 1 if index % 5 == 0 else rng.choice([2, 3, 4, 5])
    H = 1 if index % 7 == 1 else rng.randint(2, 11)
    W = 1 if index % 7 == 2 else rng.randint(2, 11)
    B = rng.choice([1, 2])
    quarter = rng.randint(1, 3)
    P = 4 * quarter if order == "interleaved" else 2 * rng.randint(1, 5)
    C = P + rng.choice([0, 0, 1, 3])
    sms = rng.choice([1, 3, 64])  # 64: clips cut into runs of frames, with recomputed gate frames
    return Case(B, T, C, H, W, P=P if P < C else None, order=order, affine=affine, bias=bias), dtype, sms


def nan_padded(x: torch.Tensor, extra: int = 2) -> torch.Tensor:
    """x as a channel slice of a NaN-filled tensor: a read into the wrong plane gives NaN."""
    n, c, h, w = x.shape
    buf = torch.full((n, c + 2 * extra, h, w), float("nan"), dtype=x.dtype)
    buf[:, extra : extra + c] = x
    return buf[:, extra : extra + c]


@pytest.mark.parametrize("index", range(32))
def test_random_configuration_matches_reference(index, gen):
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    case, dtype, sms = random_case(index, rng)
    print(f"case {case} {dtype} sms={sms}")
    inputs64 = make_inputs(case, gen)
    inputs = [t.to(dtype) if t is not None else None for t in inputs64]
    inputs[0] = nan_padded(inputs[0])
    rounded64 = [t.to(torch.float64) if t is not None else None for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64).to(dtype)

    with cuda_emulator.num_sms(sms):
        out, grads = run_with_grads(cuda_emulator.gate_shift, case, inputs, grad_out)
    out64, grads64 = run_with_grads(reference.gate_shift, case, rounded64, grad_out.double())
    low = dtype in (torch.float16, torch.bfloat16)
    out_lp, grads_lp = run_with_grads(reference.gate_shift, case, inputs, grad_out) if low else (None, [None] * 5)

    assert_close_to_reference(out, out64, out_lp, what="out")
    names = [n for n, t in zip(("x", "weight", "bias", "bn_scale", "bn_shift"), inputs) if t is not None]
    for name, g, g64, glp in zip(names, grads, grads64, grads_lp):
        assert_close_to_reference(g, g64, glp, what=f"grad {name}")


@pytest.mark.parametrize(
    "case",
    [
        # forward: 36 channels per group = a chunk of 32 and a ragged one; backward: the
        # third chunk of 32 channels holds gated (64..71) and pass-through (72..75) ones
        Case(1, 3, 76, 9, 10, P=72),
        Case(1, 2, 40, 5, 6, P=36, order="grouped", bias=False),
    ],
    ids=str,
)
def test_wide_channels_cross_the_chunk_boundaries(case, gen):
    inputs = make_inputs(case, gen)
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=torch.float64)
    with cuda_emulator.num_sms(1):
        out, grads = run_with_grads(cuda_emulator.gate_shift, case, inputs, grad_out)
    out_r, grads_r = run_with_grads(reference.gate_shift, case, inputs, grad_out)
    torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-10)
    for g, g_r in zip(grads, grads_r):
        torch.testing.assert_close(g, g_r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sms", [1, 64])
def test_agrees_with_the_cpu_kernels(sms, gen):
    case = Case(2, 5, 10, 9, 6, P=8)
    inputs = make_inputs(case, gen)
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=torch.float64)
    with cuda_emulator.num_sms(sms):
        out_e, grads_e = run_with_grads(cuda_emulator.gate_shift, case, inputs, grad_out)
    out_c, grads_c = run_with_grads(gateshift.gate_shift, case, inputs, grad_out)
    torch.testing.assert_close(out_e, out_c, rtol=1e-12, atol=1e-12)
    for g_e, g_c in zip(grads_e, grads_c):
        torch.testing.assert_close(g_e, g_c, rtol=1e-11, atol=1e-11)


def test_gradcheck(gen):
    case = Case(1, 3, 4, 3, 2)
    x, weight, bias, scale, shift = (t.requires_grad_() for t in make_inputs(case, gen))

    def fn(x, weight, bias, scale, shift):
        return cuda_emulator.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))

    # fast_mode checks random projections of the Jacobian: a few emulated launches
    # instead of one per input element.
    with cuda_emulator.num_sms(2):
        assert torch.autograd.gradcheck(fn, (x, weight, bias, scale, shift), fast_mode=True)


def test_backward_is_the_adjoint_of_forward(gen):
    case = Case(2, 4, 8, 5, 9, P=4)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    weight = torch.zeros_like(weight)  # constant gates: the op is linear in x
    ops = cuda_emulator.ops
    x5 = x.unflatten(0, (case.B, case.T))
    out5, gates = ops.gate_shift_forward(x5, weight, bias, scale, shift, case.gated, True)
    g5 = torch.randn(out5.shape, generator=gen, dtype=out5.dtype)
    grad_x5 = ops.gate_shift_backward(g5, x5, gates, weight, scale, shift, case.gated, True)[0]
    torch.testing.assert_close(
        torch.dot(out5.flatten(), g5.flatten()), torch.dot(x5.flatten(), grad_x5.flatten()), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parameter_gradients_are_bitwise_reproducible(dtype, gen):
    # The emulator schedules its threads differently on every run; fixed-order
    # reductions (no atomics) must still give the same bits, in deterministic mode.
    case = Case(2, 4, 12, 6, 9, P=8)
    inputs = [t.to(dtype) if t is not None else None for t in make_inputs(case, gen)]
    grad_out = torch.randn(inputs[0].shape, generator=gen).to(dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with cuda_emulator.num_sms(8):
            first = run_with_grads(cuda_emulator.gate_shift, case, inputs, grad_out)
            second = run_with_grads(cuda_emulator.gate_shift, case, inputs, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1]):
        assert torch.equal(g1, g2)


def test_layouts_and_empty_batch(gen):
    case = Case(2, 3, 8, 5, 5)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    kw = dict(bn_scale=scale, bn_shift=shift)
    # 5-D (B, C, T, H, W), read through strides without a copy.
    x5 = x.unflatten(0, (2, 3)).transpose(1, 2).contiguous()
    with cuda_emulator.num_sms(4):
        out5 = cuda_emulator.gate_shift(x5, weight, bias, layout="BCTHW", **kw)
        out = cuda_emulator.gate_shift(x.contiguous(memory_format=torch.channels_last), weight, bias, num_segments=3, **kw)
        empty = cuda_emulator.gate_shift(x[:0], weight, bias, num_segments=3, **kw)
    expected = reference.gate_shift(x, weight, bias, num_segments=3, **kw)
    torch.testing.assert_close(out5.transpose(1, 2).flatten(0, 1), expected)
    torch.testing.assert_close(out, expected)
    assert empty.shape == (0, 8, 5, 5)


def test_opcheck(gen):
    # No fake-tensor comparison: the emulator returns its outputs inside guarded
    # buffers (a storage offset), on purpose; the real op's fake kernel is checked
    # in test_op_registration.py.
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift = (t.float().requires_grad_() for t in make_inputs(case, gen))
    with cuda_emulator.num_sms(2):
        torch.library.opcheck(
            cuda_emulator.ops.gate_shift_forward.default,
            (x.unflatten(0, (1, 2)), weight, bias, scale, shift, 4, True),
            test_utils=("test_schema", "test_autograd_registration"),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,channels", [((2, 3, 10, 5, 7), 8), ((1, 2, 4, 1, 3), 4)])
def test_batch_stats_kernels(shape, channels, dtype, gen):
    # The module's BatchNorm statistics on CUDA: float32 results around a large mean.
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 50).to(dtype)
    mean, var = cuda_emulator.ops.batch_stats(x, channels)
    var_r, mean_r = torch.var_mean(x.double()[:, :, :channels], dim=(0, 1, 3, 4), correction=0)
    assert mean.dtype == var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mean.double(), mean_r, rtol=tol, atol=0)
    torch.testing.assert_close(var.double(), var_r, rtol=tol * 10, atol=0)
    gm = torch.randn(channels, generator=gen, dtype=mean.dtype)
    gv = torch.randn(channels, generator=gen, dtype=mean.dtype)
    grad = cuda_emulator.ops.batch_stats_backward(gm, gv, x, mean, channels)
    xr = x.double().requires_grad_()
    var_r, mean_r = torch.var_mean(xr[:, :, :channels], dim=(0, 1, 3, 4), correction=0)
    (expected,) = torch.autograd.grad((mean_r * gm.double()).sum() + (var_r * gv.double()).sum(), xr)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)


def test_set_num_sms_validates():
    with pytest.raises(ValueError, match="num_sms must be positive"):
        cuda_emulator.set_num_sms(0)
