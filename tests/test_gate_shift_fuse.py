"""Gate-Shift-Fuse, fused: the op on the CPU and through the CUDA emulator, and the
module as a drop-in for the published GSF."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import Case, assert_close_to_reference, make_inputs, op_kwargs, train_step_and_compare
from torch import nn

import gateshift
from gateshift import reference
from gateshift._ops import ops
from gateshift.testing import cuda_emulator

IMPLS = {"cpu": gateshift.gate_shift_fuse, "cuda_emulator": cuda_emulator.gate_shift_fuse}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def fuse_inputs(case, gen, dtype=torch.float64):
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=dtype)
    fuse_weight = (torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    fuse_bias = (torch.randn(2, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    return [x, weight, bias, scale, shift, fuse_weight, fuse_bias]


def run(fn, case, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = leaves
    out = fn(x, weight, bias, fuse_weight, fuse_bias, **op_kwargs(case, scale, shift))
    present = [t for t in leaves if t is not None]
    return out.detach(), list(torch.autograd.grad(out, present, grad_out.to(out.dtype)))


def check_against_reference(fn, case, dtype, gen):
    inputs64 = fuse_inputs(case, gen)
    inputs = [t.to(dtype) if t is not None else None for t in inputs64]
    rounded = [t.double() if t is not None else None for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64).to(dtype)
    out, grads = run(fn, case, inputs, grad_out)
    out64, grads64 = run(reference.gate_shift_fuse, case, rounded, grad_out.double())
    low = dtype in (torch.bfloat16, torch.float16)
    out_lp, grads_lp = run(reference.gate_shift_fuse, case, inputs, grad_out) if low else (None, [None] * 7)
    assert out.dtype == dtype
    assert_close_to_reference(out, out64, out_lp, what="out")
    names = [n for n, t in zip(("x", "weight", "bias", "bn_scale", "bn_shift", "fuse_weight", "fuse_bias"), inputs)
             if t is not None]
    for name, g, g64, glp in zip(names, grads, grads64, grads_lp):
        assert_close_to_reference(g, g64, glp, what=f"grad {name}")


CASES = [
    Case(2, 8, 16, 5, 7),
    Case(1, 1, 8, 4, 4),
    Case(3, 2, 12, 1, 9, P=8),
    Case(2, 3, 10, 6, 1, P=6, order="grouped", affine=False),
    Case(1, 5, 8, 9, 11, bias=False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_matches_reference(case, dtype, gen):
    check_against_reference(gateshift.gate_shift_fuse, case, dtype, gen)


@pytest.mark.parametrize("index", range(8))
def test_emulated_cuda_matches_reference(index, gen):
    # Every dtype with and without the affine, random ragged sizes and SM counts.
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    dtype, affine = DTYPES[index % 4], index >= 4
    order = rng.choice(["interleaved", "grouped"])
    P = 4 * rng.randint(1, 3) if order == "interleaved" else 2 * rng.randint(1, 5)
    case = Case(rng.choice([1, 2]), rng.choice([1, 2, 3, 5]), P + rng.choice([0, 2]), rng.randint(1, 10),
                rng.randint(1, 10), P=P, order=order, affine=affine, bias=rng.random() < 0.5)
    with cuda_emulator.num_sms(rng.choice([1, 4, 64])):
        check_against_reference(cuda_emulator.gate_shift_fuse, case, dtype, gen)


def test_emulated_cuda_wide_channels(gen):
    # 36 channels per group cross the forward kernel's channel chunks; the backward's
    # last chunk mixes gated and pass-through channels.
    with cuda_emulator.num_sms(2):
        check_against_reference(cuda_emulator.gate_shift_fuse, Case(1, 3, 76, 5, 6, P=72), torch.float64, gen)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_is_the_adjoint_of_forward(impl, gen):
    # Zero gating and fusion weights make the gates tanh(bias) and the fusion weights
    # sigmoid(fuse_bias), constants: the op is linear in x, and its x-gradient must be
    # its adjoint (the shifts' adjoints included).
    case = Case(2, 5, 16, 6, 7, P=12)
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen)
    x = x.requires_grad_()
    out = IMPLS[impl](x, torch.zeros_like(weight), bias, torch.zeros_like(fuse_weight), fuse_bias,
                      **op_kwargs(case, scale, shift))
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(torch.dot(out.flatten(), g.flatten()), torch.dot(x.flatten(), gx.flatten()),
                               rtol=1e-12, atol=0)


def test_gradcheck(gen):
    case = Case(1, 3, 8, 3, 4)
    inputs = [t.requires_grad_() for t in fuse_inputs(case, gen)]

    def fn(x, weight, bias, scale, shift, fuse_weight, fuse_bias):
        return gateshift.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **op_kwargs(case, scale, shift))

    assert torch.autograd.gradcheck(fn, inputs)
    with cuda_emulator.num_sms(2):
        def fn_emulated(x, weight, bias, scale, shift, fuse_weight, fuse_bias):
            return cuda_emulator.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **op_kwargs(case, scale, shift))

        assert torch.autograd.gradcheck(fn_emulated, inputs, fast_mode=True)


def test_double_backward_is_a_clear_error(gen):
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift, fw, fb = (t.requires_grad_() for t in fuse_inputs(case, gen))
    out = gateshift.gate_shift_fuse(x, weight, bias, fw, fb, **op_kwargs(case, scale, shift))
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad, gen):
    case = Case(2, 3, 8, 4, 5)
    x, weight, bias, scale, shift, fw, fb = (t.float().requires_grad_(requires_grad) for t in fuse_inputs(case, gen))
    args = (x.unflatten(0, (2, 3)), weight, bias, scale, shift, fw, fb, 8, True)
    torch.library.opcheck(ops.gate_shift_fuse_forward.default, args)
    out, gates, fusion = ops.gate_shift_fuse_forward(*(a.detach() if torch.is_tensor(a) else a for a in args))
    grad = torch.randn(out.shape, generator=gen)
    torch.library.opcheck(
        ops.gate_shift_fuse_backward.default,
        (grad, x.detach().unflatten(0, (2, 3)), gates, fusion, weight.detach(), scale.detach(), shift.detach(),
         fw.detach(), 8, True),
    )


def test_parameter_gradients_are_reproducible_bitwise(gen):
    case = Case(1, 8, 12, 17, 18, P=8)
    inputs = [t.float() for t in fuse_inputs(case, gen)]
    grad_out = torch.randn(inputs[0].shape, generator=gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 8):
            torch.set_num_threads(n)
            results.append(run(gateshift.gate_shift_fuse, case, inputs, grad_out))
    finally:
        torch.set_num_threads(threads)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


def test_errors(gen):
    case = Case(1, 2, 8, 3, 3)
    x, weight, bias, scale, shift, fw, fb = fuse_inputs(case, gen)
    kw = op_kwargs(case, scale, shift)
    with pytest.raises(ValueError, match=r"fuse_weight must have shape \(2, 2, 3, 3\)"):
        gateshift.gate_shift_fuse(x, weight, bias, fw[:1], fb, **kw)
    with pytest.raises(TypeError, match="fuse_bias must have the dtype of x"):
        gateshift.gate_shift_fuse(x, weight, bias, fw, fb.float(), **kw)
    with pytest.raises(ValueError, match=r"fusion must have shape"):
        out, gates, fusion = ops.gate_shift_fuse_forward(x.unflatten(0, (1, 2)), weight, bias, scale, shift, fw, fb, 8, True)
        ops.gate_shift_fuse_backward(out, x.unflatten(0, (1, 2)), gates, fusion[:, :, :2], weight, scale, shift, fw, 8, True)


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------


def randomised_pair(fplane, segments, ratio, gen, dtype=torch.float64):
    published = reference.GSF(fplane, segments, ratio)
    with torch.no_grad():
        for name, p in published.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name == "bn.weight" else 0.0))
        published.bn.running_mean.normal_(0, 0.3, generator=gen)
        published.bn.running_var.uniform_(0.5, 1.5, generator=gen)
    fused = gateshift.GSF(fplane, segments, ratio)
    fused.load_state_dict(published.state_dict(), strict=True)
    return published.to(dtype), fused.to(dtype)


def test_state_dict_is_the_published_modules():
    published, fused = reference.GSF(32, 8), gateshift.GSF(32, 8)
    assert list(fused.state_dict()) == list(published.state_dict())
    assert all(fused.state_dict()[k].shape == v.shape for k, v in published.state_dict().items())


@pytest.mark.parametrize("fplane,ratio,segments", [(16, 100, 4), (24, 50, 3), (48, 25, 1)])
def test_training_steps_match_published_module(fplane, ratio, segments, gen):
    published, fused = randomised_pair(fplane, segments, ratio, gen)
    assert fused.fPlane == reference.gsf_channels(fplane, ratio)
    for step in range(3):
        x = torch.randn(2 * segments, fplane, 5, 6, generator=gen, dtype=torch.float64) * 1.5 + 0.2
        train_step_and_compare(published, fused, x, gen, 0.05, step)
    published.eval()
    fused.eval()
    x = torch.randn(2 * segments, fplane, 5, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fused(x), published(x))


def test_low_precision_module(gen):
    published, fused = randomised_pair(16, 4, 100, gen, dtype=torch.float32)
    x = torch.randn(8, 16, 6, 6, generator=gen)
    published_lp = copy.deepcopy(published).bfloat16()
    out, out_lp, exact = fused.bfloat16()(x.bfloat16()), published_lp(x.bfloat16()), published.double()(x.double())
    assert_close_to_reference(out, exact.detach(), out_lp, what="bf16 out")


def test_compile_fullgraph(gen):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), gateshift.GSF(16, 4), nn.ReLU())
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 3, 6, 6, generator=gen)
    torch.testing.assert_close(compiled(x), model(x))


def test_constructor_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        gateshift.GSF(6, 8)
    with pytest.raises(ValueError, match="gsf_ch_ratio"):
        gateshift.GSF(16, 8, 0)
    assert "fPlane=8" in repr(gateshift.GSF(16, 8, 50))
