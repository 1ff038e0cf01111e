"""The corners where the fused GSM and GSF must behave as the published modules do:
empty batches, mixed dtypes, non-finite inputs, input with transposed planes (copied
once, and announced once; channels_last is read in place on the CPU:
test_channels_last.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from helpers import published_and_fused
from torch.profiler import ProfilerActivity, profile

import gateshift
import gateshift._ops
from gateshift import reference

MODULES = {"GSM": (reference.GSM, gateshift.GSM), "GSF": (reference.GSF, gateshift.GSF)}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("module", MODULES)
def test_empty_batch_returns_an_empty_tensor_as_published(module, training, gen):
    published, fused = published_and_fused(module, gen)
    x = torch.empty(0, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    out_r = published.train(training)(x)
    out_f = fused.train(training)(x)
    assert out_f.shape == out_r.shape == x.shape
    out_f.sum().backward()
    assert x.grad.shape == x.shape
    for (name, a), b in zip(published.named_buffers(), fused.buffers()):  # num_batches_tracked counts it
        torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("module", MODULES)
def test_x_in_another_dtype_than_the_parameters_is_an_error(module, gen):
    published, fused = published_and_fused(module, gen)
    x = torch.randn(6, 8, 5, 4, generator=gen)  # float32 into a float64 module
    with pytest.raises(RuntimeError):
        published(x)
    with pytest.raises(TypeError, match=r"x is torch.float32 but the module's parameters are torch.float64"):
        fused(x)
    # Under autocast, bfloat16 x into a float32 module is no error: autocast picks the dtype.
    fused32, published32 = MODULES[module][1](8, 3), MODULES[module][0](8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused32(x.bfloat16()).dtype == published32(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("module", MODULES)
def test_the_reference_and_the_published_module_agree_on_non_finite_x(module, bad, gen):
    # The published module computes x - g*x (not (1-g)*x): inf - g*inf is NaN where
    # (1-g)*inf is not. The reference, and so every kernel tested against it, follows it.
    published, _ = published_and_fused(module, gen)
    published.eval()
    x = torch.randn(6, 8, 5, 4, generator=gen, dtype=torch.float64)
    x[2, 1, 3, 2] = bad
    x[4, 6, 0, 0] = bad
    bn = published.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    kwargs = dict(num_segments=3, bn_scale=scale.detach(), bn_shift=shift.detach())
    if module == "GSM":
        expected = reference.gate_shift(x, published.conv3D.weight.detach(), published.conv3D.bias.detach(), **kwargs)
    else:
        fuse_weight = torch.cat((published.channel_conv1.weight, published.channel_conv2.weight)).detach()
        fuse_bias = torch.cat((published.channel_conv1.bias, published.channel_conv2.bias)).detach()
        expected = reference.gate_shift_fuse(x, published.conv3D.weight.detach(), published.conv3D.bias.detach(),
                                             fuse_weight, fuse_bias, **kwargs)
    with torch.no_grad():
        out = published(x)
    assert torch.equal(torch.isnan(expected), torch.isnan(out))
    assert torch.equal(torch.isinf(expected), torch.isinf(out))
    finite = torch.isfinite(out)
    torch.testing.assert_close(expected[finite], out[finite])


def x_sized_copies(fn, x: torch.Tensor) -> int:
    """How many copies of an x-sized tensor ``fn`` makes, nested calls inside the ops
    included (the profiler sees every ATen call)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::copy_" and e.input_shapes and
               list(e.input_shapes[0]) == list(x.shape))


def with_transposed_planes(x: torch.Tensor) -> torch.Tensor:
    """x's values with each (H, W) plane stored transposed: planes the kernels cannot
    walk in place (neither contiguous nor pixel-major)."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("module", MODULES)
def test_input_with_transposed_planes_is_copied_once(module, gen):
    _, fused = published_and_fused(module, gen, dtype=torch.float32)
    leaf = torch.randn(6, 8, 5, 7, generator=gen, requires_grad=True)
    x = with_transposed_planes(leaf)
    assert not x.is_contiguous()
    g = torch.randn(6, 8, 5, 7, generator=gen)

    def forward_and_backward():
        out = fused(x)
        torch.autograd.grad(out, x, g)  # the gradient of x itself: no accumulation into a leaf

    # Once in forward, shared by the batch statistics and the gate-shift op; the saved
    # copy serves backward.
    assert x_sized_copies(forward_and_backward, x) == 1
    contiguous = x.contiguous()
    assert x_sized_copies(lambda: torch.autograd.grad(fused(contiguous), contiguous, g), x) == 0


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_the_plane_copy_is_announced_once(module, gen, monkeypatch):
    monkeypatch.setattr(gateshift._ops, "_plane_copy_warned", False)
    _, fused = published_and_fused(module, gen, dtype=torch.float32)
    x = with_transposed_planes(torch.randn(6, 8, 5, 7, generator=gen))
    with pytest.warns(UserWarning, match=r"planes that are not contiguous .* copy it to contiguous planes first"):
        fused(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused(x)  # once per process
        fused(x.contiguous())


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_a_broadcast_gradient_is_copied_without_a_warning(module, gen, monkeypatch):
    # out.sum().backward() hands the op an expanded gradient (zero strides): every kernel
    # materialises it, so there is no layout to warn about; its gradient is still right.
    # So is an input broadcast along its rows (its planes not contiguous): copied, silently.
    monkeypatch.setattr(gateshift._ops, "_plane_copy_warned", False)
    published, fused = published_and_fused(module, gen)
    x = torch.randn(6, 8, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (grad,) = torch.autograd.grad(fused(x).sum(), x)
        x_broadcast = torch.randn(6, 8, 5, 1, generator=gen, dtype=torch.float64).expand(6, 8, 5, 7)
        out_broadcast = fused(x_broadcast)
    (expected,) = torch.autograd.grad(published(x).sum(), x)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(out_broadcast, published(x_broadcast))


def test_the_raw_ops_announce_their_copy_once():
    # TORCH_WARN_ONCE in csrc/common/checks.cpp: once per process, so in a fresh one, and
    # not for a broadcast tensor (first: had it warned, the later copies would not). A
    # warning of a torch.ops call goes to c10's log on stderr, not to Python's warnings.
    script = (
        "import torch, gateshift\n"
        "x = torch.randn(2, 3, 8, 5, 7).transpose(3, 4)\n"
        "torch.ops.gateshift.temporal_shift(torch.randn(1, 1, 1, 1, 1).expand(2, 3, 8, 5, 7), 2, False)\n"
        "for _ in range(3):\n"
        "    torch.ops.gateshift.temporal_shift(x, 2, False)\n"
        "torch.ops.gateshift.temporal_shift(x.contiguous(), 2, False)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stderr.count("copy it to contiguous planes first") == 1
    assert "shape [2, 3, 8, 7, 5] and strides [840, 280, 35, 1, 7]" in result.stderr
