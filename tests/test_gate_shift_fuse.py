"""Gate-Shift-Fuse (GSF): the gate_shift_fuse op on every implementation (the CPU
kernels, the CUDA kernels run by the emulator, the CUDA kernels on a GPU) against
gateshift.reference on the CPU in float64, and gateshift.GSF as a drop-in for the
published module.

Layouts, argument errors, compile/export and property-based tests of every op live in
the cross-cutting files (test_layouts.py, test_errors.py, test_ecosystem.py,
test_properties.py).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import (
    IMPLEMENTATIONS,
    LOW_PRECISION,
    Case,
    assert_close_to_reference,
    check_runs_on_the_current_stream_and_device,
    fuse_inputs,
    implementation_cases,
    implementations,
    launches_as_on,
    low_precision_reference,
    nan_padded,
    op_kwargs,
    run_with_grads,
    opcheck,
    train_step_and_compare,
)

import gateshift
from gateshift import reference

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
INPUT_NAMES = ("x", "weight", "bias", "bn_scale", "bn_shift", "fuse_weight", "fuse_bias")


def check_against_reference(impl, case, dtype, gen, *, num_sms=None, x_view=None):
    """The op on ``impl`` (inputs in ``dtype`` on its device, x through ``x_view`` if
    given) against the float64 reference on the CPU, output and every gradient; half
    types within twice the reference's own error in that dtype."""
    inputs64 = fuse_inputs(case, gen)
    inputs = [None if t is None else t.to(device=impl.device, dtype=dtype) for t in inputs64]
    if x_view is not None:
        inputs[0] = x_view(inputs[0])
    rounded = [None if t is None else t.cpu().double() for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64).to(device=impl.device, dtype=dtype)
    grad_out64 = grad_out.cpu().double()  # rounded to dtype too
    with launches_as_on(impl, num_sms):
        out, grads = run_with_grads(impl.gate_shift_fuse, case, inputs, grad_out)
    out64, grads64 = run_with_grads(reference.gate_shift_fuse, case, rounded, grad_out64)
    low = dtype in LOW_PRECISION
    with low_precision_reference():
        out_lp, grads_lp = (run_with_grads(reference.gate_shift_fuse, case, inputs, grad_out) if low
                            else (None, [None] * 7))
    assert out.dtype == dtype and out.device.type == impl.device
    assert_close_to_reference(out, out64, out_lp, what="out")
    names = [n for n, t in zip(INPUT_NAMES, inputs) if t is not None]
    for name, g, g64, glp in zip(names, grads, grads64, grads_lp):
        assert g.device.type == impl.device
        assert_close_to_reference(g, g64, glp, what=f"grad {name}")


CASES = [
    Case(2, 8, 16, 5, 7),
    Case(1, 1, 8, 4, 4),
    Case(3, 2, 12, 1, 9, P=8),
    Case(2, 3, 10, 6, 1, P=6, order="grouped", affine=False),
    Case(1, 5, 8, 9, 11, bias=False),
    Case(2, 8, 64, 14, 14),  # network-like: 64 channels of 14 x 14, 16 frames
]
# The emulator's share (small: see helpers.implementation_cases): one frame.
EMULATED_CASES = [CASES[1]]


@pytest.mark.parametrize("impl,case", implementation_cases(CASES, EMULATED_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(impl, case, dtype, gen):
    check_against_reference(impl, case, dtype, gen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("index", range(8))
def test_random_configuration_matches_reference(impl, index, gen):
    # Every dtype with and without the affine, random ragged sizes, x a channel slice of
    # a NaN-filled tensor; on the emulator, random SM counts too.
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    dtype, affine = DTYPES[index % 4], index >= 4
    order = rng.choice(["interleaved", "grouped"])
    P = 4 * rng.randint(1, 3) if order == "interleaved" else 2 * rng.randint(1, 5)
    case = Case(rng.choice([1, 2]), rng.choice([1, 2, 3, 5]), P + rng.choice([0, 2]), rng.randint(1, 10),
                rng.randint(1, 10), P=P, order=order, affine=affine, bias=rng.random() < 0.5)
    sms = rng.choice([1, 4, 64])
    print(f"case {case} {dtype} sms={sms}")
    check_against_reference(impl, case, dtype, gen, num_sms=sms, x_view=nan_padded)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_wide_channels_cross_the_chunk_boundaries(impl, gen):
    # 36 channels per group cross the CUDA forward kernel's channel chunks; the
    # backward's last chunk mixes gated and pass-through channels.
    check_against_reference(impl, Case(1, 3, 76, 5, 6, P=72), torch.float64, gen, num_sms=2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_planes_of_many_tiles(impl, gen):
    # 17 x 26 planes are 3 x 4 = 12 of the CUDA kernels' 8 x 8 tiles: the means' sums
    # over tiles take more than one tile per warp (8 warps).
    check_against_reference(impl, Case(1, 2, 8, 17, 26, P=8), torch.float64, gen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_backward_is_the_adjoint_of_forward(impl, gen):
    # Zero gating and fusion weights make the gates tanh(bias) and the fusion weights
    # sigmoid(fuse_bias), constants: the op is linear in x, and its x-gradient must be
    # its adjoint (the shifts' adjoints included).
    case = Case(2, 5, 16, 6, 7, P=12)
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = (impl.to(t) for t in fuse_inputs(case, gen))
    x = x.requires_grad_()
    out = impl.gate_shift_fuse(x, torch.zeros_like(weight), bias, torch.zeros_like(fuse_weight), fuse_bias,
                               **op_kwargs(case, scale, shift))
    g = impl.to(torch.randn(out.shape, generator=gen, dtype=out.dtype))
    (gx,) = torch.autograd.grad(out, x, g)
    # Relative to the sum of |terms|: the dot products cancel (their value can be small).
    scale = torch.dot(out.detach().flatten().abs(), g.flatten().abs())
    torch.testing.assert_close(torch.dot(out.flatten(), g.flatten()), torch.dot(x.flatten(), gx.flatten()),
                               rtol=0, atol=1e-13 * float(scale))
    assert (out - x).abs().max() > 0.1  # the op is not the identity here


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "tap,value",
    [pytest.param(0, float("inf"), id="inf-first-tap"), pytest.param(2, float("-inf"), id="-inf-last-tap")],
)
def test_non_finite_gate_weights_propagate_as_in_the_reference(impl, tap, value, gen):
    # As for gate_shift: an infinite weight of the first (last) temporal tap meets the
    # conv's zero padding at a clip's first (last) frame, and 0 * inf is NaN there; the
    # fusion convolution then spreads it over neighbouring channels and frames.
    case = Case(2, 3, 8, 4, 5, affine=False)
    x, weight, bias, _, _, fuse_weight, fuse_bias = fuse_inputs(case, gen)
    weight[0, 1, tap, 1, 1] = value  # group 0, the spatial centre of a temporal tap
    with launches_as_on(impl, 1):
        out = impl.gate_shift_fuse(*(impl.to(t) for t in (x, weight, bias, fuse_weight, fuse_bias)),
                                   num_segments=case.T).cpu()
    expected = reference.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, num_segments=case.T)
    assert torch.isnan(expected).any()
    for what, where in (("NaN", torch.isnan), ("infinite", torch.isinf)):
        differ = int((where(out) != where(expected)).sum())
        assert differ == 0, f"{differ} elements {what} in one of ours and the reference only"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite], expected[finite])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("residual_tap", [pytest.param(1.0, id="f=0"), pytest.param(-1.0, id="f=1")])
def test_infinite_input_gives_the_published_modules_infinities_and_nans(impl, residual_tap, gen):
    # x = -inf at one pixel of a gated channel: BN (a positive scale) and ReLU make it 0,
    # so the gates stay finite, and with every gate near -1 (small weights, bias -10) the
    # residual r = x - g x is -inf there. At the first frame of group 0 (the last of
    # group 1) no shifted part carries it to a frame beside it, so with only the fusion
    # conv's centre tap on the residual means, weighted +-1 (no bias), f = sigmoid(-+inf)
    # is exactly 0 or 1 for that channel and frame. The published f ys + (1 - f) r is
    # then -inf (f = 0) or NaN (f = 1) at the pixel; a form like r + f (ys - r) would
    # give NaN at f = 0.
    case = Case(2, 4, 8, 5, 6)
    x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias = fuse_inputs(case, gen)
    weight, bias, bn_scale = weight * 0.01, torch.full_like(bias, -10.0), bn_scale.abs() + 0.1
    x[1 * case.T + 0, 1, 3, 4] = float("-inf")  # clip 1, frame 0, group 0
    x[0 * case.T + case.T - 1, 6, 0, 2] = float("-inf")  # clip 0, last frame, group 1
    fuse_weight = torch.zeros_like(fuse_weight)
    fuse_weight[:, 1, 1, 1] = residual_tap
    fuse_bias = torch.zeros_like(fuse_bias)
    with launches_as_on(impl, 1):
        args = (impl.to(t) for t in (x, weight, bias, fuse_weight, fuse_bias))
        out = impl.gate_shift_fuse(*args, **op_kwargs(case, impl.to(bn_scale), impl.to(bn_shift))).cpu()
    expected = reference.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **op_kwargs(case, bn_scale, bn_shift))
    if residual_tap > 0:
        assert int(torch.isneginf(expected).sum()) == 2
    else:
        assert bool(torch.isnan(expected).any())
    for what, where in (("NaN", torch.isnan), ("infinite", torch.isinf), ("-inf", torch.isneginf)):
        differ = int((where(out) != where(expected)).sum())
        assert differ == 0, f"{differ} elements {what} in one of ours and the reference only"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite], expected[finite])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck(impl, gen):
    case = Case(1, 3, 8, 3, 4)
    inputs = [impl.to(t).requires_grad_() for t in fuse_inputs(case, gen)]

    def fn(x, weight, bias, scale, shift, fuse_weight, fuse_bias):
        return impl.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **op_kwargs(case, scale, shift))

    # The emulator checks random projections of the Jacobian (fast_mode): a few emulated
    # launches instead of one per input element.
    with launches_as_on(impl, 2):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=impl.name == "cuda_emulator")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_double_backward_is_a_clear_error(impl, gen):
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift, fw, fb = (impl.to(t).requires_grad_() for t in fuse_inputs(case, gen))
    out = impl.gate_shift_fuse(x, weight, bias, fw, fb, **op_kwargs(case, scale, shift))
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize(
    "impl,requires_grad",
    # On the emulator opcheck tests the schema and the autograd registration only (see
    # helpers.opcheck), which need inputs that require grad.
    [pytest.param(*p.values, requires_grad, id=f"{p.id}-{requires_grad}", marks=p.marks)
     for p in IMPLEMENTATIONS for requires_grad in (False, True)
     if requires_grad or p.id != "cuda_emulator"],
)
def test_opcheck(impl, requires_grad, gen):
    case = Case(2, 3, 8, 4, 5)
    x, weight, bias, scale, shift, fw, fb = (impl.to(t.float()).requires_grad_(requires_grad)
                                             for t in fuse_inputs(case, gen))
    args = (x.unflatten(0, (2, 3)), weight, bias, scale, shift, fw, fb, 8, True)
    with launches_as_on(impl, 2):
        opcheck(impl, "gate_shift_fuse_forward", args)
        out, gates, fusion = impl.ops.gate_shift_fuse_forward(*(a.detach() if torch.is_tensor(a) else a for a in args))
        grad = impl.to(torch.randn(out.shape, generator=gen))
        opcheck(impl, "gate_shift_fuse_backward",
                (grad, x.detach().unflatten(0, (2, 3)), gates, fusion, weight.detach(), scale.detach(),
                 shift.detach(), fw.detach(), 8, True))


@pytest.mark.parametrize("impl", implementations("cpu"))
def test_parameter_gradients_do_not_depend_on_the_thread_count(impl, gen):
    case = Case(1, 8, 12, 17, 18, P=8)
    inputs = [t.float() for t in fuse_inputs(case, gen)]
    grad_out = torch.randn(inputs[0].shape, generator=gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 8):
            torch.set_num_threads(n)
            results.append(run_with_grads(impl.gate_shift_fuse, case, inputs, grad_out))
    finally:
        torch.set_num_threads(threads)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


@pytest.mark.cuda
def test_runs_on_the_current_stream_and_the_device_of_x(gen):
    case = Case(2, 4, 16, 9, 9)
    x, weight, bias, scale, shift, fw, fb = (t.float() for t in fuse_inputs(case, gen))

    def fn(x, weight, bias, scale, shift, fw, fb):
        return gateshift.gate_shift_fuse(x, weight, bias, fw, fb, **op_kwargs(case, scale, shift))

    check_runs_on_the_current_stream_and_device(fn, x, weight, bias, scale, shift, fw, fb)


# ---------------------------------------------------------------------------
# The module: gateshift.GSF as a drop-in for the published module (gateshift.reference.GSF).
# The modules call the public ops, so they run on the CPU kernels or on the GPU's;
# the emulated kernels are not reachable through them.
# ---------------------------------------------------------------------------

MODULE_IMPLEMENTATIONS = implementations("cpu", "cuda")


def randomised_pair(fplane, segments, ratio, gen, dtype=torch.float64, device="cpu"):
    published = reference.GSF(fplane, segments, ratio)
    with torch.no_grad():
        for name, p in published.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name == "bn.weight" else 0.0))
        published.bn.running_mean.normal_(0, 0.3, generator=gen)
        published.bn.running_var.uniform_(0.5, 1.5, generator=gen)
    fused = gateshift.GSF(fplane, segments, ratio)
    fused.load_state_dict(published.state_dict(), strict=True)
    return published.to(device=device, dtype=dtype), fused.to(device=device, dtype=dtype)


def test_module_state_dict_is_the_published_modules():
    published, fused = reference.GSF(32, 8), gateshift.GSF(32, 8)
    assert list(fused.state_dict()) == list(published.state_dict())
    assert all(fused.state_dict()[k].shape == v.shape for k, v in published.state_dict().items())


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize("fplane,ratio,segments", [(16, 100, 4), (24, 50, 3), (48, 25, 1)])
def test_module_training_steps_match_published_module(impl, fplane, ratio, segments, gen):
    published, fused = randomised_pair(fplane, segments, ratio, gen, device=impl.device)
    assert fused.fPlane == reference.gsf_channels(fplane, ratio)
    for step in range(3):
        x = torch.randn(2 * segments, fplane, 5, 6, generator=gen, dtype=torch.float64) * 1.5 + 0.2
        train_step_and_compare(published, fused, x.to(impl.device), gen, 0.05, step)
    published.eval()
    fused.eval()
    x = torch.randn(2 * segments, fplane, 5, 6, generator=gen, dtype=torch.float64).to(impl.device)
    torch.testing.assert_close(fused(x), published(x))


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
def test_module_low_precision(impl, gen):
    published, fused = randomised_pair(16, 4, 100, gen, dtype=torch.float32, device=impl.device)
    x = torch.randn(8, 16, 6, 6, generator=gen).to(impl.device)
    published_lp = copy.deepcopy(published).bfloat16()
    out, out_lp, exact = fused.bfloat16()(x.bfloat16()), published_lp(x.bfloat16()), published.double()(x.double())
    assert_close_to_reference(out, exact.detach(), out_lp, what="bf16 out")


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        gateshift.GSF(6, 8)
    with pytest.raises(ValueError, match="gsf_ch_ratio"):
        gateshift.GSF(16, 8, 0)
    assert "fPlane=8" in repr(gateshift.GSF(16, 8, 50))
