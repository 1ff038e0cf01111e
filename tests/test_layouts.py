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
