"""Memory layouts and sizes every op must take in its stride, on every implementation:
non-contiguous and channels_last inputs, channel slices and strided frames, expanded
(overlapping) inputs, the 5-D (B, C, T, H, W) layout, empty tensors, random strides
(the stride fuzz), and the fake kernels' prediction of the real outputs' strides."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    GATED_OPS,
    IMPLEMENTATIONS,
    OPS,
    Case,
    call_op,
    implementation_cases,
    implementations,
    launches_as_on,
    make_inputs,
    op_params,
)

from gateshift import reference


def check_against_reference(op, impl, case, x, params, gen):
    """``op`` on ``impl`` with ``x`` as given (any view, on ``impl``'s device) against the
    reference on a contiguous float64 CPU copy: the output, and the gradients of x and of
    every parameter."""
    x = x.detach().requires_grad_()
    leaves = {name: impl.to(t).requires_grad_() for name, t in params.items()}
    leaves_r = {name: t.clone().requires_grad_() for name, t in params.items()}
    x_r = x.detach().cpu().contiguous().requires_grad_()
    with launches_as_on(impl, 1):
        out = call_op(op, impl, x, leaves, case)
    expected = call_op(op, reference, x_r, leaves_r, case)
    assert out.device.type == impl.device and out.shape == expected.shape
    torch.testing.assert_close(out.cpu(), expected, msg=lambda m: f"{op} output: {m}")
    g = torch.randn(expected.shape, generator=gen, dtype=expected.dtype)
    with launches_as_on(impl, 1):
        grads = torch.autograd.grad(out, [x, *leaves.values()], impl.to(g))
    grads_r = torch.autograd.grad(expected, [x_r, *leaves_r.values()], g)
    for name, a, b in zip(["x", *leaves], grads, grads_r):
        torch.testing.assert_close(a.cpu(), b, msg=lambda m: f"{op} grad {name}: {m}")
    return out


def embedded(x, dim, step=1, offset=0, extra=0):
    """A view equal to x inside a larger NaN-filled buffer: every `step`-th index of
    dimension `dim`, starting at `offset` (NaN elsewhere shows any stray read)."""
    shape = list(x.shape)
    shape[dim] = offset + step * x.shape[dim] + extra
    buf = torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
    index = [slice(None)] * x.dim()
    index[dim] = slice(offset, offset + step * x.shape[dim], step)
    buf[tuple(index)] = x
    return buf[tuple(index)]


# Views whose (H, W) planes are not contiguous are copied to contiguous planes by the
# ops' shared entry before the CUDA kernels see them (channels_last, which the CPU
# kernels read in place: test_channels_last.py): the emulator would run the kernels on
# the same copy as for a contiguous x, so only the views the CUDA kernels read in place
# (strided channels and frames) run there too.
COPIED_VIEWS = {
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "transposed_planes": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
    "strided_w": lambda x: embedded(x, 3, step=2),
}
VIEWS_READ_IN_PLACE = {
    "channel_slice": lambda x: embedded(x, 1, offset=3, extra=2),
    "every_other_frame_row": lambda x: embedded(x, 0, step=2, offset=1),
}
VIEW_PARAMS = implementation_cases(list(COPIED_VIEWS) + list(VIEWS_READ_IN_PLACE), list(VIEWS_READ_IN_PLACE))


@pytest.mark.parametrize("impl,view", VIEW_PARAMS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(impl, view, op, gen):
    make_view = {**COPIED_VIEWS, **VIEWS_READ_IN_PLACE}[view]
    case = Case(2, 2, 8, 4, 5)
    x = impl.to(make_inputs(case, gen)[0])
    xv = make_view(x.clone())
    assert torch.equal(xv, x) and not xv.is_contiguous()
    check_against_reference(op, impl, case, xv, op_params(op, case, gen), gen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", OPS)
def test_expanded_input(impl, op, gen):
    # Overlapping memory (stride 0): read as it is, output freshly allocated.
    case = Case(3, 2, 4, 3, 3, bias=False)
    x = impl.to(make_inputs(case, gen)[0])
    xe = x[:2].unsqueeze(0).expand(3, 2, 4, 3, 3).flatten(0, 1)
    check_against_reference(op, impl, case, xe, op_params(op, case, gen), gen)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", OPS)
def test_bcthw_layout_matches_tsn_layout(impl, op, gen):
    case = Case(2, 3, 8, 4, 3)
    x = impl.to(make_inputs(case, gen)[0])
    params = {name: impl.to(t) for name, t in op_params(op, case, gen).items()}
    x5 = x.unflatten(0, (2, 3)).transpose(1, 2).contiguous()  # (B, C, T, H, W), as 3-D CNNs keep it
    x5g = x5.clone().requires_grad_()
    xg = x.clone().requires_grad_()
    with launches_as_on(impl, 1):
        out5 = call_op(op, impl, x5g, params, case, layout="BCTHW", num_segments=None)
        out = call_op(op, impl, xg, params, case)
    assert out5.shape == x5.shape and out5.is_contiguous()  # same layout in as out, no copy
    torch.testing.assert_close(out5.transpose(1, 2).flatten(0, 1), out)
    g = impl.to(torch.randn(x.shape, generator=gen, dtype=x.dtype))
    with launches_as_on(impl, 1):
        out5.backward(g.unflatten(0, (2, 3)).transpose(1, 2))
        out.backward(g)
    torch.testing.assert_close(x5g.grad.transpose(1, 2).flatten(0, 1), xg.grad)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (8, 8, 0, 4), (8, 8, 4, 0)], ids=str)
def test_empty_tensors(impl, op, shape, gen):
    case = Case(max(shape[0] // 4, 0), 4, 8, shape[2], shape[3])
    params = {name: impl.to(t) for name, t in op_params(op, case, gen).items()}
    x = impl.to(torch.randn(shape, dtype=torch.float64, generator=gen)).requires_grad_()
    out = call_op(op, impl, x, params, case)
    assert out.shape == shape and out.device.type == impl.device
    out.sum().backward()
    assert x.grad.shape == shape


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", GATED_OPS)
def test_empty_batch_gives_zero_parameter_gradients(impl, op, gen):
    case = Case(0, 4, 8, 3, 3)
    x = impl.to(make_inputs(case, gen)[0]).requires_grad_()
    params = {name: impl.to(t).requires_grad_() for name, t in op_params(op, case, gen).items()}
    call_op(op, impl, x, params, case).sum().backward()
    for name, p in params.items():
        assert torch.equal(p.grad, torch.zeros_like(p)), name


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", GATED_OPS)
def test_large_values_do_not_overflow_the_gates(impl, op, gen):
    # Gate pre-activations of 2e7 and more, GSF fusion pre-activations of 2e3 and more: far
    # past where exp overflows float32 (88), so tanh and sigmoid must saturate to +-1 and
    # to 0 / 1, never give inf / inf. Every sum has terms of one sign, so that no
    # pre-activation lands near zero by cancellation. With random signs, a seed in a few
    # hundred put a gate within float32's rounding of its sum (about 10 here) of zero, where
    # its value is anybody's guess: in CI (seed 1806080674) our output and the reference's,
    # both float32, differed by 0.3, each about 1 from float64. Here group 0's gate is +1
    # and group 1's -1, so their features are shifted x and -x with residuals 0 and 2x, and
    # GSF's fusion takes all of group 0's shifted part (f = 1) and all of group 1's residual
    # (f = 0): float32 holds the output to its last bit or so.
    case = Case(1, 3, 8, 4, 4)
    x = make_inputs(case, gen, dtype=torch.float32)[0].abs() * 1e4 + 1e3
    params = op_params(op, case, gen, dtype=torch.float32)
    params["bn_scale"] = params["bn_scale"].abs() + 0.1  # u = relu(scale * x + shift): x's sign
    params["weight"] = params["weight"].abs() * torch.tensor([1e3, -1e3]).view(2, 1, 1, 1, 1)
    if op == "gate_shift_fuse":
        # f from [ym; rm]: group 0's ym >= 0 and rm = 0, group 1's ym <= 0 and rm >= 0.
        signs = torch.tensor([[1.0, 1.0], [1.0, -1.0]]).view(2, 2, 1, 1)
        params["fuse_weight"] = params["fuse_weight"].abs() * signs + 0.1 * signs
    with launches_as_on(impl, 1):
        out = call_op(op, impl, impl.to(x), {name: impl.to(t) for name, t in params.items()}, case)
    assert torch.isfinite(out).all()
    expected = call_op(op, reference, x.double(), {name: t.double() for name, t in params.items()}, case)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=2e-7, atol=0)


# ---------------------------------------------------------------------------
# Stride fuzz: every op, every implementation, on views whose memory overlaps, has
# gaps, or orders its dimensions in any way, against the reference on a contiguous copy.
# ---------------------------------------------------------------------------


def random_strided_view(shape, gen, device="cpu"):
    """A float64 view of ``shape`` (N, C, H, W) over random memory, with strides drawn so
    that planes may overlap each other, leave gaps, or sit in any dimension order,
    and the planes' own rows and columns may be contiguous or not."""

    def draw(n):
        return int(torch.randint(n, (1,), generator=gen))

    n, c, h, w = shape
    sw = 1 if draw(4) else 2
    sh = w * sw + (draw(3) if draw(2) else 0)
    plane = (h - 1) * sh + (w - 1) * sw + 1
    # Channel and frame strides: inside a row or a plane (overlapping), one plane
    # apart, or with gaps; the frame stride may also be the smaller one.
    sc = [1 + draw(sh), 1 + draw(plane), plane, plane + 1 + draw(5)][draw(4)]
    sn = [1 + draw(sh), 1 + draw(max(c * sc, 1)), c * sc, c * sc + draw(7)][draw(4)]
    strides = (sn, sc, sh, sw)
    offset = draw(5)
    extent = offset + sum((size - 1) * stride for size, stride in zip(shape, strides)) + 1
    base = torch.randn(extent, generator=gen, dtype=torch.float64).to(device)
    return base.as_strided(shape, strides, offset)


def fuzz_case(gen):
    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    t = draw(1, 4)
    p = 4 * draw(1, 2)
    return Case(draw(1, 2), t, p + draw(0, 3), draw(1, 6), draw(1, 6), P=p)


def batch_stats_of(library, case):
    """batch_stats of ``library``'s ops as a function of x (B*T, C, H, W): mean and var, one tensor."""

    def stats(x):
        return torch.cat(library.batch_stats(x.unflatten(0, (case.B, case.T)), case.gated))

    return stats


def reference_batch_stats(case):
    def stats(x):
        var, mean = torch.var_mean(x.unflatten(0, (case.B, case.T))[:, :, : case.gated], dim=(0, 1, 3, 4), correction=0)
        return torch.cat((mean, var))

    return stats


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", (*OPS, "batch_stats"))
def test_stride_fuzz(impl, op, gen):
    # Found by an adversarial user: on overlapping views the outputs used to follow
    # x's stride order, putting frames between rows, while the kernels wrote planes.
    for _ in range(6 if impl.name == "cuda_emulator" else 16):
        case = fuzz_case(gen)
        x = random_strided_view((case.B * case.T, case.C, case.H, case.W), gen, impl.device)
        if op == "batch_stats":
            fused, ref = batch_stats_of(impl, case), reference_batch_stats(case)
        else:
            params = op_params(op, case, gen)
            params_i = {name: impl.to(t) for name, t in params.items()}

            def fused(x):
                return call_op(op, impl, x, params_i, case)

            def ref(x):
                return call_op(op, reference, x, params, case)

        xv = x.detach().requires_grad_()  # the strided view itself, as a leaf
        xc = x.detach().cpu().contiguous().requires_grad_()
        out, expected = fused(xv), ref(xc)
        torch.testing.assert_close(out.cpu(), expected, msg=lambda m: f"{op} {case} strides {x.stride()}: {m}")
        g = random_strided_view(tuple(expected.shape) if expected.dim() == 4 else (1, 1, 1, expected.numel()), gen)
        g = g.reshape(expected.shape)
        (gx,) = torch.autograd.grad(out, xv, impl.to(g))
        (gx_r,) = torch.autograd.grad(expected, xc, g)
        torch.testing.assert_close(gx.cpu(), gx_r, msg=lambda m: f"{op} {case} strides {x.stride()} grad: {m}")


RAW_OPS = ("gate_shift_forward", "gate_shift_backward", "gate_shift_fuse_forward", "gate_shift_fuse_backward",
           "temporal_shift", "batch_stats", "batch_stats_backward")


def raw_args_on_an_overlapping_view(op, impl, gen):
    """Arguments of the raw op ``op`` on ``impl``'s device whose x (and output gradient)
    are views with overlapping, out-of-order strides."""
    x5 = impl.to(torch.arange(200.0)).as_strided((2, 3, 8, 5, 4), (9, 3, 7, 4, 1))
    if op == "temporal_shift":
        return (x5, 2, False)
    if op.startswith("batch_stats"):
        if op == "batch_stats":
            return (x5, 8)
        mean, _ = impl.ops.batch_stats(x5, 8)
        return (impl.to(torch.randn(8, generator=gen)), impl.to(torch.randn(8, generator=gen)), x5, mean, 8)
    case = Case(2, 3, 8, 5, 4)
    params = {name: impl.to(t) for name, t in op_params("gate_shift_fuse", case, gen, dtype=torch.float32).items()}
    weight, bias, scale, shift = params["weight"], params["bias"], params["bn_scale"], params["bn_shift"]
    fuse_weight, fuse_bias = params["fuse_weight"], params["fuse_bias"]
    grad = impl.to(torch.arange(300.0)).as_strided(x5.shape, (0, 40, 5, 4, 1), 7)
    if op == "gate_shift_forward":
        return (x5, weight, bias, scale, shift, 8, True)
    if op == "gate_shift_backward":
        _, gates = impl.ops.gate_shift_forward(x5, weight, bias, scale, shift, 8, True)
        return (grad, x5, gates, weight, scale, shift, 8, True)
    if op == "gate_shift_fuse_forward":
        return (x5, weight, bias, scale, shift, fuse_weight, fuse_bias, 8, True)
    _, gates, fusion = impl.ops.gate_shift_fuse_forward(x5, weight, bias, scale, shift, fuse_weight, fuse_bias, 8, True)
    return (grad, x5, gates, fusion, weight, scale, shift, fuse_weight, 8, True)


@pytest.mark.parametrize("impl", implementations("cpu", "cuda"))
@pytest.mark.parametrize("op", RAW_OPS)
def test_fake_kernels_give_the_real_strides_on_overlapping_views(impl, op, gen):
    # torch.compile plans memory from the fake kernels: they must predict the layout
    # the real kernels return, overlapping inputs included. (The emulator returns its
    # outputs inside guarded buffers, which fake kernels do not predict, on purpose.)
    args = raw_args_on_an_overlapping_view(op, impl, gen)

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    real = as_tuple(getattr(impl.ops, op)(*args))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = as_tuple(getattr(impl.ops, op)(*fake_args))
    assert len(fake) == len(real)
    for r, f in zip(real, fake):
        assert (f.shape, f.stride(), f.dtype, f.device) == (r.shape, r.stride(), r.dtype, r.device)
    torch.library.opcheck(getattr(impl.ops, op).default, args)

