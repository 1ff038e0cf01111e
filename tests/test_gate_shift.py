"""Gate-Shift (GSM): the gate_shift op on every implementation (the CPU kernels, the CUDA
kernels run by the emulator, the CUDA kernels on a GPU) against gateshift.reference on
the CPU in float64, and gateshift.GSM as a drop-in for the published module.

Layouts, argument errors, compile/export and property-based tests of every op live in
the cross-cutting files (test_layouts.py, test_errors.py, test_ecosystem.py,
test_properties.py).
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    IMPLEMENTATIONS,
    LOW_PRECISION,
    Case,
    assert_close_to_reference,
    check_runs_on_the_current_stream_and_device,
    implementation_cases,
    implementations,
    launches_as_on,
    low_precision_reference,
    make_inputs,
    nan_padded,
    op_kwargs,
    opcheck,
    run_with_grads,
    train_step_and_compare,
)
from torch import nn

import gateshift
from gateshift import reference
from gateshift.testing.implementations import implementation

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
INPUT_NAMES = ("x", "weight", "bias", "bn_scale", "bn_shift")

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
    # network-like sizes (64 channels of 28 x 28; 16 frames of 13 x 13) among more ragged ones
    Case(2, 8, 64, 28, 28),
    Case(3, 3, 12, 7, 7, P=8, order="grouped"),
    Case(1, 1, 8, 1, 9, affine=False),
    Case(4, 16, 32, 13, 13, bias=False),
    # groups of 20 channels: the CPU forward's chunks of 8 channels end mid-group
    Case(2, 4, 44, 5, 6, P=40),
]
# The emulator's share (small: see helpers.implementation_cases): one frame; 1 x 1
# planes without affine or bias.
EMULATED_CASES = [CASES[1], CASES[6]]


def check_against_reference(impl, case, dtype, gen, *, num_sms=None, x_view=None):
    """The op on ``impl`` (inputs in ``dtype`` on its device, x through ``x_view`` if
    given) against the float64 reference on the CPU, output and every gradient; half
    types within twice the reference's own error in that dtype."""
    inputs64 = make_inputs(case, gen)
    inputs = [None if t is None else t.to(device=impl.device, dtype=dtype) for t in inputs64]
    if x_view is not None:
        inputs[0] = x_view(inputs[0])
    # The reference runs on the dtype-rounded inputs, so only the op's arithmetic differs.
    rounded64 = [None if t is None else t.cpu().double() for t in inputs]
    grad_out = torch.randn(inputs64[0].shape, generator=gen, dtype=torch.float64).to(device=impl.device, dtype=dtype)
    grad_out64 = grad_out.cpu().double()  # rounded to dtype too

    with launches_as_on(impl, num_sms):
        out, grads = run_with_grads(impl.gate_shift, case, inputs, grad_out)
    out64, grads64 = run_with_grads(reference.gate_shift, case, rounded64, grad_out64)
    if dtype in LOW_PRECISION:
        with low_precision_reference():
            out_lp, grads_lp = run_with_grads(reference.gate_shift, case, inputs, grad_out)
    else:
        out_lp, grads_lp = None, [None] * len(grads)

    assert out.dtype == dtype and out.device.type == impl.device
    assert_close_to_reference(out, out64, out_lp, what="out")
    names = [n for n, t in zip(INPUT_NAMES, inputs) if t is not None]
    for name, g, g64, glp in zip(names, grads, grads64, grads_lp):
        assert g.dtype == dtype and g.device.type == impl.device
        assert_close_to_reference(g, g64, glp, what=f"grad {name}")


@pytest.mark.parametrize("impl,case", implementation_cases(CASES, EMULATED_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(impl, case, dtype, gen):
    check_against_reference(impl, case, dtype, gen)


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
    P = 4 * rng.randint(1, 3) if order == "interleaved" else 2 * rng.randint(1, 5)
    C = P + rng.choice([0, 0, 1, 3])
    sms = rng.choice([1, 3, 64])  # 64: clips cut into runs of frames, with recomputed gate frames
    return Case(B, T, C, H, W, P=P if P < C else None, order=order, affine=affine, bias=bias), dtype, sms


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("index", range(32))
def test_random_configuration_matches_reference(impl, index, gen):
    # x is a channel slice of a NaN-filled tensor: a read into the wrong plane gives NaN.
    # On the emulator the SM count varies too, and with it how clips are cut into blocks.
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    case, dtype, sms = random_case(index, rng)
    print(f"case {case} {dtype} sms={sms}")
    check_against_reference(impl, case, dtype, gen, num_sms=sms, x_view=nan_padded)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "case",
    [
        # CUDA forward: 36 channels per group = a chunk of 32 and a ragged one; backward:
        # the third chunk of 32 channels holds gated (64..71) and pass-through (72..75) ones
        Case(1, 3, 76, 9, 10, P=72),
        Case(1, 2, 40, 5, 6, P=36, order="grouped", bias=False),
    ],
    ids=str,
)
def test_wide_channels_cross_the_chunk_boundaries(impl, case, gen):
    check_against_reference(impl, case, torch.float64, gen, num_sms=1)


@pytest.mark.parametrize(
    "impl,num_sms",
    [
        pytest.param(implementation("cuda_emulator"), 1, id="cuda_emulator-1sm"),
        pytest.param(implementation("cuda_emulator"), 64, id="cuda_emulator-64sms"),
        pytest.param(implementation("cuda"), None, id="cuda", marks=pytest.mark.cuda),
    ],
)
def test_cuda_kernels_agree_with_the_cpu_kernels(impl, num_sms, gen):
    # Tighter than the reference comparison: both accumulate in float64 over the same sums.
    case = Case(2, 5, 10, 9, 6, P=8)
    inputs = make_inputs(case, gen)
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=torch.float64)
    with launches_as_on(impl, num_sms):
        out_g, grads_g = run_with_grads(impl.gate_shift, case, [impl.to(t) for t in inputs], impl.to(grad_out))
    out_c, grads_c = run_with_grads(gateshift.gate_shift, case, inputs, grad_out)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-12, atol=1e-12)
    for g_g, g_c in zip(grads_g, grads_c):
        torch.testing.assert_close(g_g.cpu(), g_c, rtol=1e-11, atol=1e-11)


GRADCHECK_CASES = [Case(2, 3, 8, 3, 4), Case(1, 2, 6, 2, 3, P=4, order="grouped", bias=False),
                   Case(1, 1, 4, 3, 1, affine=False)]


@pytest.mark.parametrize("impl,case", implementation_cases(GRADCHECK_CASES, GRADCHECK_CASES[1:]))
def test_gradcheck(impl, case, gen):
    x, weight, bias, scale, shift = (
        None if t is None else impl.to(t).requires_grad_() for t in make_inputs(case, gen)
    )

    def fn(x, weight, *optional):
        it = iter(optional)
        b = next(it) if bias is not None else None
        s = next(it) if scale is not None else None
        h = next(it) if shift is not None else None
        return impl.gate_shift(x, weight, b, **op_kwargs(case, s, h))

    args = [t for t in (x, weight, bias, scale, shift) if t is not None]
    # The emulator checks random projections of the Jacobian (fast_mode): a few emulated
    # launches instead of one per input element.
    with launches_as_on(impl, 2):
        assert torch.autograd.gradcheck(fn, args, fast_mode=impl.name == "cuda_emulator")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_double_backward_is_a_clear_error(impl, gen):
    case = Case(1, 2, 4, 3, 3)
    x, weight, bias, scale, shift = (impl.to(t).requires_grad_() for t in make_inputs(case, gen))
    out = impl.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))
    (gx,) = torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize(
    "impl,case",
    implementation_cases(
        [Case(3, 7, 24, 9, 10), Case(2, 5, 20, 6, 7, P=12, order="grouped"), Case(4, 2, 16, 5, 5, P=8)],
        [Case(2, 4, 8, 5, 9, P=4)],
    ),
)
def test_backward_is_the_adjoint_of_forward(impl, case, gen):
    # With a zero gating weight the gates are the constant tanh(bias) and the op is
    # linear in x, so its x-gradient must be its exact adjoint: <op(x), g> == <x, op^T(g)>.
    # (A published temporal-shift CUDA op shipped a backward that repeated the
    # forward shift instead; a loose gradcheck never noticed.)
    x, weight, bias, scale, shift = (impl.to(t) for t in make_inputs(case, gen))
    weight = torch.zeros_like(weight)
    x5 = x.unflatten(0, (case.B, case.T))
    interleaved = case.order == "interleaved"
    out5, gates = impl.ops.gate_shift_forward(x5, weight, bias, scale, shift, case.gated, interleaved)
    g5 = impl.to(torch.randn(out5.shape, generator=gen, dtype=out5.dtype))
    grad_x5 = impl.ops.gate_shift_backward(g5, x5, gates, weight, scale, shift, case.gated, interleaved)[0]
    lhs = torch.dot(out5.flatten(), g5.flatten())
    rhs = torch.dot(x5.flatten(), grad_x5.flatten())
    # Relative to the sum of |terms|: the dot products cancel (their value can be small).
    scale = torch.dot(out5.flatten().abs(), g5.flatten().abs())
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-13 * float(scale))
    # And the shift really moves something: the op is not the identity here.
    assert (out5 - x5).abs().max() > 0.1


NON_FINITE_WEIGHTS = [
    pytest.param(0, float("inf"), id="inf-first-tap"),
    pytest.param(2, float("-inf"), id="-inf-last-tap"),
    pytest.param(1, float("nan"), id="nan-middle-tap"),
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("tap,value", NON_FINITE_WEIGHTS)
def test_non_finite_gate_weights_propagate_as_in_the_reference(impl, tap, value, gen):
    # The gate conv's zero padding in time multiplies the first (last) temporal tap by 0
    # at a clip's first (last) frame: an infinite weight there makes those gates NaN, as
    # in the published conv3d, while inside the clip it saturates the tanh. (No BN affine:
    # u = x, nonzero, so only the padded frames give 0 * inf.)
    case = Case(2, 3, 8, 4, 5, affine=False)
    x, weight, bias, _, _ = make_inputs(case, gen)
    weight[1, 2, tap, 1, 1] = value  # group 1, the spatial centre of a temporal tap
    with launches_as_on(impl, 1):
        out = impl.gate_shift(impl.to(x), impl.to(weight), impl.to(bias), num_segments=case.T).cpu()
    expected = reference.gate_shift(x, weight, bias, num_segments=case.T)
    assert torch.isnan(expected).any()
    for what, where in (("NaN", torch.isnan), ("infinite", torch.isinf)):
        differ = int((where(out) != where(expected)).sum())
        assert differ == 0, f"{differ} elements {what} in one of ours and the reference only"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite], expected[finite])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gates_are_tanh_of_the_gate_conv(impl, gen):
    case = Case(2, 4, 12, 6, 7)
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=torch.float32)
    x5 = x.unflatten(0, (case.B, case.T))
    _, gates = impl.ops.gate_shift_forward(*(impl.to(t) for t in (x5, weight, bias, scale, shift)), case.C, True)
    u = torch.relu(x5.double() * scale.double().view(1, 1, -1, 1, 1) + shift.double().view(1, 1, -1, 1, 1))
    pre = F.conv3d(u.transpose(1, 2), weight.double(), bias.double(), padding=1, groups=2)
    expected = torch.tanh(pre).transpose(1, 2)  # (B, T, 2, H, W)
    assert gates.dtype == torch.float32 and gates.shape == expected.shape
    torch.testing.assert_close(gates.cpu().double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", implementations("cpu"))
@pytest.mark.parametrize(
    "case",
    # One clip, so that 1, 3 and 8 threads cut it into different runs of frames:
    # 17 x 18 planes make a gradient group one frame; 7 x 7 planes make it six.
    [Case(1, 8, 12, 17, 18, P=8), Case(1, 8, 16, 7, 7)],
    ids=str,
)
def test_parameter_gradients_do_not_depend_on_the_thread_count(impl, case, gen):
    inputs = make_inputs(case, gen, dtype=torch.float32)
    grad_out = torch.randn(inputs[0].shape, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3, 8, 3):
            torch.set_num_threads(n)
            results.append(run_with_grads(impl.gate_shift, case, inputs, grad_out))
    finally:
        torch.set_num_threads(threads)
    (out0, grads0), *others = results
    for out, grads in others:  # any thread count, any run: the same bits
        assert torch.equal(out, out0)
        for g, g0 in zip(grads, grads0):
            assert torch.equal(g, g0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parameter_gradients_are_bitwise_reproducible_in_deterministic_mode(impl, dtype, gen):
    # The emulator schedules its threads differently on every run, as a GPU does;
    # fixed-order reductions (no atomics) must still give the same bits. (On 8 emulated
    # SMs the clip is cut into runs of frames: several blocks' partial sums.)
    case = Case(1, 4, 12, 6, 9, P=8)
    inputs = [None if t is None else t.to(device=impl.device, dtype=dtype) for t in make_inputs(case, gen)]
    grad_out = torch.randn(inputs[0].shape, generator=gen).to(device=impl.device, dtype=dtype)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with launches_as_on(impl, 8):
            first = run_with_grads(impl.gate_shift, case, inputs, grad_out)
            second = run_with_grads(impl.gate_shift, case, inputs, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1]):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_default_channels_and_order_are_the_published_modules(impl, gen):
    case = Case(2, 3, 8, 4, 4)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    out = impl.gate_shift(*(impl.to(t) for t in (x, weight, bias)), num_segments=3,
                          bn_scale=impl.to(scale), bn_shift=impl.to(shift))
    expected = reference.gate_shift(x, weight, bias, num_segments=3, bn_scale=scale, bn_shift=shift, channels=8)
    torch.testing.assert_close(out.cpu(), expected)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float32_affine_for_half_precision_input(impl, dtype, gen):
    # The GSM module passes its folded BatchNorm in float32: the affine's gradients
    # (sums over B*T*H*W) must come back in float32, not rounded to half precision.
    case = Case(2, 3, 8, 4, 5)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    inputs = [impl.to(t) for t in (x.to(dtype), weight.to(dtype), bias.to(dtype), scale.float(), shift.float())]
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out, grads = run_with_grads(impl.gate_shift, case, inputs, impl.to(grad_out.to(dtype)))
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype, dtype, dtype, torch.float32, torch.float32]
    out64, grads64 = run_with_grads(reference.gate_shift, case, [t.cpu().double() for t in inputs], grad_out)
    for g, g64 in zip(grads[3:], grads64[3:]):  # float32 sums: well within half precision's error
        torch.testing.assert_close(g.cpu().double(), g64, rtol=2e-2, atol=2e-2 * g64.abs().max().item())


OPCHECK_CASES = [
    (Case(2, 3, 8, 4, 5), "TSN"),
    (Case(1, 2, 6, 3, 1, P=4, order="grouped", affine=False, bias=False), "TSN"),
    (Case(2, 4, 8, 3, 3), "BCTHW"),
    (Case(0, 3, 8, 4, 4), "TSN"),  # empty batch
]
# The emulator's share: all but the first (its fake-kernel check is not run there, see helpers.opcheck).
OPCHECK_PARAMS = implementation_cases(OPCHECK_CASES, OPCHECK_CASES[1:], ids=lambda c: f"{c[0]}-{c[1]}")


@pytest.mark.parametrize("impl,case_layout", OPCHECK_PARAMS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward(impl, case_layout, requires_grad, gen):
    x5, weight, bias, scale, shift, p, interleaved = raw_forward_args(impl, *case_layout, gen)
    tensors = [None if t is None else t.requires_grad_(requires_grad) for t in (x5, weight, bias, scale, shift)]
    with launches_as_on(impl, 2):
        opcheck(impl, "gate_shift_forward", (*tensors, p, interleaved))


@pytest.mark.parametrize("impl,case_layout", OPCHECK_PARAMS)
def test_opcheck_backward(impl, case_layout, gen):
    x5, weight, bias, scale, shift, p, interleaved = raw_forward_args(impl, *case_layout, gen)
    with launches_as_on(impl, 2):
        out, gates = impl.ops.gate_shift_forward(x5, weight, bias, scale, shift, p, interleaved)
        grad_out = impl.to(torch.randn(out.shape, generator=gen))
        opcheck(impl, "gate_shift_backward", (grad_out, x5, gates, weight, scale, shift, p, interleaved))


def raw_forward_args(impl, case: Case, layout: str, gen):
    """float32 arguments of the raw gate_shift_forward op on ``impl``'s device; for
    "BCTHW", x5 is the permuted view that gate_shift makes of a (B, C, T, H, W) tensor."""
    x, weight, bias, scale, shift = (impl.to(t) for t in make_inputs(case, gen, dtype=torch.float32))
    x5 = x.unflatten(0, (case.B, case.T))
    if layout == "BCTHW":
        x5 = x5.transpose(1, 2).contiguous().transpose(1, 2)
    return x5, weight, bias, scale, shift, case.gated, case.order == "interleaved"


@pytest.mark.cuda
def test_runs_on_the_current_stream_and_the_device_of_x(gen):
    case = Case(2, 4, 16, 9, 9)
    x, weight, bias, scale, shift = (t.float() for t in make_inputs(case, gen))

    def fn(x, weight, bias, scale, shift):
        return gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))

    check_runs_on_the_current_stream_and_device(fn, x, weight, bias, scale, shift)


# ---------------------------------------------------------------------------
# The module: gateshift.GSM as a drop-in for the published module (gateshift.reference.GSM).
# The modules call the public ops, so they run on the CPU kernels or on the GPU's;
# the emulated kernels are not reachable through them.
# ---------------------------------------------------------------------------

MODULE_IMPLEMENTATIONS = implementations("cpu", "cuda")


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial weights and statistics (a fresh GSM is the identity map)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if "conv3D" in name else 0.2
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale + (1.0 if name == "bn.weight" else 0.0))
        if module.bn.running_mean is not None:
            module.bn.running_mean.copy_(torch.randn(module.bn.num_features, generator=gen) * 0.3)
            module.bn.running_var.copy_(torch.rand(module.bn.num_features, generator=gen) + 0.5)


def pair(fplane, segments, gen, dtype=torch.float64, device="cpu", **bn_options):
    """The published module with random weights and statistics, and the fused one
    loaded from its state_dict."""
    published = reference.GSM(fplane, segments)
    if bn_options:
        published.bn = nn.BatchNorm3d(fplane, **bn_options)
    randomise(published, gen)
    published = published.to(device=device, dtype=dtype)
    fused = gateshift.GSM(fplane, segments)
    fused.bn = copy.deepcopy(published.bn)
    fused.load_state_dict(published.state_dict(), strict=True)
    return published, fused.to(device=device, dtype=dtype)


def features(gen, b, t, c, h, w, dtype=torch.float64, device="cpu"):
    return (torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64) * 1.5 + 0.3).to(device=device, dtype=dtype)


def test_module_state_dict_is_the_published_modules(gen):
    published = reference.GSM(16, 8)
    fused = gateshift.GSM(16, 8)
    assert list(fused.state_dict()) == list(published.state_dict())
    for key, value in published.state_dict().items():
        assert fused.state_dict()[key].shape == value.shape
    randomise(published, gen)
    fused.load_state_dict(published.state_dict(), strict=True)
    published.load_state_dict(fused.state_dict(), strict=True)  # and back
    for key, value in published.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value)


def test_new_module_is_the_identity_like_the_published_one(gen):
    fused = gateshift.GSM(8, 4)
    x = features(gen, 2, 4, 8, 5, 5, dtype=torch.float32)
    # Zero gates: no shift, and the interleaving permutes channels only.
    torch.testing.assert_close(fused(x), reference.GSM(8, 4)(x))


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize("segments,shape", [(8, (2, 32, 6, 7)), (3, (3, 8, 5, 1)), (1, (2, 12, 4, 4))])
def test_module_training_steps_match_published_module(impl, segments, shape, gen):
    b, c, h, w = shape
    published, fused = pair(c, segments, gen, device=impl.device)
    for step in range(3):
        x = features(gen, b, segments, c, h, w, device=impl.device)
        train_step_and_compare(published, fused, x, gen, 0.1, step)
    assert int(fused.bn.num_batches_tracked) == 3


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
def test_module_eval_uses_running_statistics(impl, gen):
    published, fused = pair(16, 4, gen, device=impl.device)
    published.eval()
    fused.eval()
    x = features(gen, 2, 4, 16, 5, 6, device=impl.device)
    before = copy.deepcopy(fused.bn.state_dict())
    torch.testing.assert_close(fused(x), published(x))
    for key, value in fused.bn.state_dict().items():
        assert torch.equal(value, before[key]), f"eval changed bn.{key}"


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "bn_options",
    [dict(momentum=None), dict(track_running_stats=False), dict(affine=False), dict(eps=1e-3, momentum=0.3)],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
@pytest.mark.parametrize("training", [True, False])
def test_module_batch_norm_options(impl, bn_options, training, gen):
    published, fused = pair(8, 3, gen, device=impl.device, **bn_options)
    published.train(training)
    fused.train(training)
    for _ in range(2):
        x = features(gen, 2, 3, 8, 4, 5, device=impl.device)
        torch.testing.assert_close(fused(x), published(x))
        for b1, b2 in zip(published.buffers(), fused.buffers()):
            torch.testing.assert_close(b2, b1)


def relu_input(published: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The BatchNorm output (ReLU input) of the published module in training mode, in float64."""
    bn, t = published.bn, published.num_segments
    x5 = x.double().unflatten(0, (-1, t)).transpose(1, 2)
    var, mean = torch.var_mean(x5, dim=(0, 2, 3, 4), correction=0, keepdim=True)
    w, b = bn.weight.double().view(1, -1, 1, 1, 1), bn.bias.double().view(1, -1, 1, 1, 1)
    return ((x5 - mean) * torch.rsqrt(var + bn.eps) * w + b).transpose(1, 2).flatten(0, 1)


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_module_low_precision_training_step(impl, dtype, gen):
    published, fused = pair(16, 4, gen, dtype=torch.float64, device=impl.device)
    x = features(gen, 2, 4, 16, 6, 6, device=impl.device)
    published_lp = copy.deepcopy(published).to(dtype)
    fused = fused.to(dtype)
    x64, xlp, xf = (x.clone().requires_grad_() for _ in range(3))
    outs = [published(x64), published_lp(xlp.to(dtype)), fused(xf.to(dtype))]
    g = torch.randn(outs[0].shape, generator=gen, dtype=torch.float64).to(impl.device)
    for out in outs:
        out.backward(g.to(out.dtype))
    exact, ref_lp, ours = outs
    # Where the BN output is within a few units of `dtype` of zero, rounding x may
    # flip the ReLU's mask, in the reference as in ours, and move the gradient of that
    # one element by its whole du: such elements are not compared.
    eps = torch.finfo(dtype).eps
    pre = relu_input(published, x)
    away = pre.abs() > 4 * eps * (pre.abs().max() + 1)
    for name, a, r, e, mask in [
        ("out", ours, ref_lp, exact, torch.ones_like(away)),
        ("grad x", xf.grad, xlp.grad, x64.grad, away),
    ]:
        err = ((a.double() - e.detach()).abs() * mask).max().item()
        if dtype == torch.float32:
            assert err <= 1e-4 * max(1.0, e.abs().max().item()), f"{name}: {err}"
        else:
            ref_err = ((r.double() - e.detach()).abs() * mask).max().item()
            assert err <= 2 * ref_err + eps * e.abs().max().item(), f"{name}: {err} vs reference's {ref_err}"


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_module_batch_statistics_stay_float32(impl, dtype, gen):
    # The BN statistics come from the batch_stats kernels in float32: around a mean of
    # 100, half-precision sums would lose the variance.
    fused = gateshift.GSM(16, 4).to(device=impl.device, dtype=dtype)
    x = (torch.randn(8, 16, 7, 7, generator=gen) * 3 + 100).to(device=impl.device, dtype=dtype)
    fused(x)
    var, mean = torch.var_mean(x.cpu().double().unflatten(0, (2, 4)), dim=(0, 1, 3, 4), correction=0)
    n = 2 * 4 * 7 * 7
    expected_var = 0.9 + 0.1 * var * n / (n - 1)
    expected_mean = 0.1 * mean
    # The running buffers are in `dtype`: compare with the expected values rounded to it.
    for buffer, expected in ((fused.bn.running_var, expected_var), (fused.bn.running_mean, expected_mean)):
        torch.testing.assert_close(buffer.cpu().double(), expected.to(dtype).double(), rtol=2e-2, atol=0)


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
def test_module_extra_channels_pass_through(impl, gen):
    fused = gateshift.GSM(8, 2)
    randomise(fused, gen)
    fused = fused.to(impl.device)
    x = features(gen, 2, 2, 12, 3, 3, dtype=torch.float32, device=impl.device)
    y = fused(x)
    assert torch.equal(y[:, 8:], x[:, 8:])
    torch.testing.assert_close(y[:, :8], fused(x[:, :8].contiguous()))


def test_module_repr_and_constructor_errors():
    assert "fPlane=16, num_segments=8" in repr(gateshift.GSM(16, 8))
    assert gateshift.GSM(16).num_segments == 3  # the published default
    for bad in (6, 0, -4, 8.0):
        with pytest.raises(ValueError, match="fPlane"):
            gateshift.GSM(bad)
    with pytest.raises(ValueError, match="num_segments"):
        gateshift.GSM(8, 0)


def test_module_running_statistics_that_are_not_tracked_stay_put(gen):
    # BatchNorm3d semantics when tracking is switched off after construction: the
    # buffers exist but training leaves them alone, and eval still uses them.
    published, fused = pair(8, 2, gen)
    for m in (published, fused):
        m.bn.track_running_stats = False
    x = features(gen, 2, 2, 8, 3, 4)
    torch.testing.assert_close(fused(x), published(x))
    for (name, b1), b2 in zip(published.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b2, b1, msg=lambda m: f"{name}: {m}")
    published.eval()
    fused.eval()
    torch.testing.assert_close(fused(x), published(x))


def test_module_eval_without_running_statistics_needs_more_than_one_value(gen):
    published, fused = pair(8, 1, gen, track_running_stats=False)
    published.eval()
    fused.eval()
    x = torch.randn(1, 8, 1, 1, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        published(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(x)


def test_module_training_needs_more_than_one_value_per_channel(gen):
    fused = gateshift.GSM(8, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(torch.randn(1, 8, 1, 1, generator=gen))
    fused.eval()
    assert fused(torch.randn(1, 8, 1, 1, generator=gen)).shape == (1, 8, 1, 1)


def test_module_input_errors(gen):
    fused = gateshift.GSM(8, 4)
    with pytest.raises(ValueError, match="expects input"):
        fused(torch.randn(8, 4, 3, 3, generator=gen))
    with pytest.raises(ValueError, match="multiple of num_segments"):
        fused(torch.randn(6, 8, 3, 3, generator=gen))
