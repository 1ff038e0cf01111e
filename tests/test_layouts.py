"""Memory layouts and sizes the op must take in its stride: non-contiguous and
channels_last inputs, the 5-D (B, C, T, H, W) layout, channel slices, empty batches."""

from __future__ import annotations

import pytest
import torch
from helpers import Case, make_inputs, op_kwargs, run_with_grads

import gateshift
from gateshift import reference


def check_against_reference(case, inputs, gen):
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=inputs[0].dtype)
    out, grads = run_with_grads(gateshift.gate_shift, case, inputs, grad_out)
    out_r, grads_r = run_with_grads(reference.gate_shift, case, inputs, grad_out)
    torch.testing.assert_close(out, out_r)
    for g, gr in zip(grads, grads_r):
        torch.testing.assert_close(g, gr)
    return out


def embedded(x, dim, step=1, offset=0, extra=0):
    """A view equal to x inside a larger NaN-filled buffer: every `step`-th index of
    dimension `dim`, starting at `offset` (NaN elsewhere shows any stray read)."""
    shape = list(x.shape)
    shape[dim] = offset + step * x.shape[dim] + extra
    buf = torch.full(shape, float("nan"), dtype=x.dtype)
    index = [slice(None)] * x.dim()
    index[dim] = slice(offset, offset + step * x.shape[dim], step)
    buf[tuple(index)] = x
    return buf[tuple(index)]


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda x: x.contiguous(memory_format=torch.channels_last), id="channels_last"),
        pytest.param(lambda x: x.transpose(2, 3).contiguous().transpose(2, 3), id="transposed_planes"),
        pytest.param(lambda x: embedded(x, 3, step=2), id="strided_w"),
        pytest.param(lambda x: embedded(x, 1, offset=3, extra=2), id="channel_slice"),
        pytest.param(lambda x: embedded(x, 0, step=2, offset=1), id="every_other_frame_row"),
    ],
)
def test_non_contiguous_inputs(make_view, gen):
    case = Case(2, 3, 8, 5, 6)
    x, *params = make_inputs(case, gen)
    xv = make_view(x.clone())
    assert torch.equal(xv, x) and not xv.is_contiguous()
    out = check_against_reference(case, [xv, *params], gen)
    assert out.shape == x.shape


def test_expanded_input(gen):
    # Overlapping memory (stride 0): read as it is, output freshly allocated.
    case = Case(3, 2, 4, 3, 3, bias=False)
    x, *params = make_inputs(case, gen)
    xe = x[:2].unsqueeze(0).expand(3, 2, 4, 3, 3).flatten(0, 1)
    check_against_reference(case, [xe, *params], gen)


def test_bcthw_layout_matches_tsn_layout(gen):
    case = Case(2, 4, 8, 5, 5)
    x, weight, bias, scale, shift = make_inputs(case, gen)
    x5 = x.unflatten(0, (2, 4)).transpose(1, 2).contiguous()  # (B, C, T, H, W), as 3-D CNNs keep it
    kw = dict(bn_scale=scale, bn_shift=shift)
    out5 = gateshift.gate_shift(x5, weight, bias, layout="BCTHW", **kw)
    expected = gateshift.gate_shift(x, weight, bias, num_segments=4, **kw)
    assert out5.shape == x5.shape and out5.is_contiguous()  # same layout in as out, no copy
    torch.testing.assert_close(out5.transpose(1, 2).flatten(0, 1), expected)
    x5g = x5.clone().requires_grad_()
    xg = x.clone().requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    gateshift.gate_shift(x5g, weight, bias, layout="BCTHW", **kw).backward(g.unflatten(0, (2, 4)).transpose(1, 2))
    gateshift.gate_shift(xg, weight, bias, num_segments=4, **kw).backward(g)
    torch.testing.assert_close(x5g.grad.transpose(1, 2).flatten(0, 1), xg.grad)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (8, 8, 0, 4), (8, 8, 4, 0)])
def test_empty_tensors(shape, gen):
    case = Case(max(shape[0] // 4, 0), 4, 8, shape[2], shape[3])
    _, weight, bias, scale, shift = make_inputs(case, gen)
    x = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    out = gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift))
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == shape


def test_empty_batch_gives_zero_parameter_gradients(gen):
    case = Case(0, 4, 8, 3, 3)
    x, weight, bias, scale, shift = (t.requires_grad_() for t in make_inputs(case, gen))
    gateshift.gate_shift(x, weight, bias, **op_kwargs(case, scale, shift)).sum().backward()
    for p in (weight, bias, scale, shift):
        assert torch.equal(p.grad, torch.zeros_like(p))


def test_large_values_do_not_overflow_the_gates(gen):
    case = Case(1, 3, 8, 4, 4)
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=torch.float32)
    out = gateshift.gate_shift(x * 1e4, weight * 1e3, bias, **op_kwargs(case, scale, shift))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference.gate_shift(x * 1e4, weight * 1e3, bias, **op_kwargs(case, scale, shift)))


# ---------------------------------------------------------------------------
# Stride fuzz: every op, every backend, on views whose memory overlaps, has gaps,
# or orders its dimensions in any way, against the reference on a contiguous copy.
# ---------------------------------------------------------------------------

from gateshift._ops import ops  # noqa: E402
from gateshift.testing import cuda_emulator  # noqa: E402

FUZZ_IMPLS = {"cpu": gateshift, "cuda_emulator": cuda_emulator}
FUZZ_OPS = ("gate_shift", "gate_shift_fuse", "temporal_shift", "batch_stats")


def random_strided_view(shape, gen):
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
    base = torch.randn(extent, generator=gen, dtype=torch.float64)
    return base.as_strided(shape, strides, offset)


def fuzz_case(gen):
    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    t = draw(1, 4)
    p = 4 * draw(1, 2)
    return Case(draw(1, 2), t, p + draw(0, 3), draw(1, 6), draw(1, 6), P=p)


def _fused_and_reference(op, impl, case, params, gen):
    """(fused(x), reference(x)) as functions of x alone, for ``op`` with ``params``."""
    _, weight, bias, scale, shift = params
    kw = op_kwargs(case, scale, shift)
    if op == "gate_shift":
        return (lambda x: impl.gate_shift(x, weight, bias, **kw)), (lambda x: reference.gate_shift(x, weight, bias, **kw))
    if op == "gate_shift_fuse":
        fw = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64)
        fb = torch.randn(2, generator=gen, dtype=torch.float64)
        return (
            lambda x: impl.gate_shift_fuse(x, weight, bias, fw, fb, **kw),
            lambda x: reference.gate_shift_fuse(x, weight, bias, fw, fb, **kw),
        )
    if op == "temporal_shift":
        return (lambda x: impl.temporal_shift(x, case.T, 3)), (lambda x: reference.temporal_shift(x, case.T, 3))
    stats = ops.batch_stats if impl is gateshift else cuda_emulator.ops.batch_stats

    def fused_stats(x):
        return torch.cat(stats(x.unflatten(0, (case.B, case.T)), case.gated))

    def reference_stats(x):
        var, mean = torch.var_mean(x.unflatten(0, (case.B, case.T))[:, :, : case.gated], dim=(0, 1, 3, 4), correction=0)
        return torch.cat((mean, var))

    return fused_stats, reference_stats


@pytest.mark.parametrize("impl", FUZZ_IMPLS)
@pytest.mark.parametrize("op", FUZZ_OPS)
def test_stride_fuzz(op, impl, gen):
    # Found by an adversarial user: on overlapping views the outputs used to follow
    # x's stride order, putting frames between rows, while the kernels wrote planes.
    for _ in range(16 if impl == "cpu" else 6):
        case = fuzz_case(gen)
        params = make_inputs(case, gen)
        x = random_strided_view((case.B * case.T, case.C, case.H, case.W), gen)
        fused, ref = _fused_and_reference(op, FUZZ_IMPLS[impl], case, params, gen)
        xv = x.detach().requires_grad_()  # the strided view itself, as a leaf
        xc = x.detach().contiguous().requires_grad_()
        out, expected = fused(xv), ref(xc)
        torch.testing.assert_close(out, expected, msg=lambda m: f"{op} {case} strides {x.stride()}: {m}")
        g = random_strided_view(tuple(expected.shape) if expected.dim() == 4 else (1, 1, 1, expected.numel()), gen)
        g = g.reshape(expected.shape)
        (gx,) = torch.autograd.grad(out, xv, g)
        (gx_r,) = torch.autograd.grad(expected, xc, g)
        torch.testing.assert_close(gx, gx_r, msg=lambda m: f"{op} {case} strides {x.stride()} grad: {m}")


@pytest.mark.parametrize("op", ["gate_shift_forward", "temporal_shift", "batch_stats_backward"])
def test_fake_kernels_give_the_real_strides_on_overlapping_views(op, gen):
    # torch.compile plans memory from the fake kernels: they must predict the layout
    # the real kernels return, overlapping inputs included.
    x5 = torch.arange(200.0).as_strided((2, 3, 8, 5, 4), (9, 3, 7, 4, 1))
    if op == "temporal_shift":
        args = (x5, 2, False)
    elif op == "batch_stats_backward":
        mean, var = ops.batch_stats(x5, 8)
        args = (torch.randn(8, generator=gen), torch.randn(8, generator=gen), x5, mean, 8)
    else:
        _, weight, bias, scale, shift = make_inputs(Case(2, 3, 8, 5, 4), gen, dtype=torch.float32)
        args = (x5, weight, bias, scale, shift, 8, True)
    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    real = as_tuple(getattr(ops, op)(*args))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = as_tuple(getattr(ops, op)(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)))
    for r, f in zip(real, fake):
        assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype)
    torch.library.opcheck(getattr(ops, op).default, args)
