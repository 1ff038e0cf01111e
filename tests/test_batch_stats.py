"""The per-channel batch statistics ops behind the GSM/GSF modules' training-mode
BatchNorm (batch_stats and batch_stats_backward), on every implementation (the CPU
kernels, the CUDA kernels run by the emulator, the CUDA kernels on a GPU), against
torch.var_mean and its autograd in float64 on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import IMPLEMENTATIONS, check_runs_on_the_current_stream_and_device, launches_as_on, opcheck

from gateshift._ops import ops
from gateshift.testing import cuda_emulator

# Relative tolerances of the statistics (accumulated in float32, float64 for float64)
# and of their gradient (in x's dtype).
STATS_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6}
GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def var_mean(x5: torch.Tensor, channels: int):
    """The reference: biased variance and mean of the first ``channels`` channels of
    (B, T, C, H, W) over B, T, H and W."""
    return torch.var_mean(x5[:, :, :channels], dim=(0, 1, 3, 4), correction=0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,channels", [((2, 3, 8, 5, 7), 8), ((1, 4, 6, 1, 9), 4), ((3, 1, 5, 2, 2), 5)])
def test_matches_var_mean(impl, shape, channels, dtype, gen):
    # A large mean: sums of squares would cancel; the kernels must not.
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 50).to(dtype)
    mean, var = impl.batch_stats(impl.to(x), channels)
    var_r, mean_r = var_mean(x.double(), channels)
    assert mean.dtype == var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mean.device.type == var.device.type == impl.device
    tol = STATS_RTOL[dtype]
    torch.testing.assert_close(mean.cpu().double(), mean_r, rtol=tol, atol=0)
    torch.testing.assert_close(var.cpu().double(), var_r, rtol=tol * 10, atol=0)

    # The gradient of <mean, grad_mean> + <var, grad_var> in x, against autograd's.
    gm = torch.randn(channels, generator=gen, dtype=mean.dtype)
    gv = torch.randn(channels, generator=gen, dtype=mean.dtype)
    grad = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, channels)
    assert grad.dtype == dtype and grad.shape == x.shape
    xr = x.double().requires_grad_()
    var_r, mean_r = var_mean(xr, channels)
    (expected,) = torch.autograd.grad((mean_r * gm.double()).sum() + (var_r * gv.double()).sum(), xr)
    rtol = GRAD_RTOL[dtype]
    torch.testing.assert_close(grad.cpu().double(), expected, rtol=rtol, atol=rtol * expected.abs().max().item())

    # With grad_in, the rest of x's gradient: added before the one rounding to x's dtype;
    # the channels without statistics get grad_in as it is.
    grad_in = (torch.randn(shape, generator=gen, dtype=torch.float64) * expected.abs().max()).to(dtype)
    summed = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, channels, impl.to(grad_in))
    assert summed.dtype == dtype and summed.shape == x.shape
    expected = expected + grad_in.double()
    torch.testing.assert_close(summed.cpu().double(), expected, rtol=rtol, atol=rtol * expected.abs().max().item())
    assert torch.equal(summed[:, :, channels:].cpu(), grad_in[:, :, channels:])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("value", [0.1, -3.7, 1e4])
def test_constant_channels_have_zero_variance(impl, value, gen):
    # One pass around the channel's first element: a constant channel's deviations are
    # exact zeros, and the variance is never below zero (BatchNorm takes its rsqrt).
    x = torch.randn(2, 3, 6, 5, 4, generator=gen)
    x[:, :, :3] = value
    mean, var = impl.batch_stats(impl.to(x), 6)
    torch.testing.assert_close(mean[:3].cpu(), torch.full((3,), value), rtol=1e-6, atol=0)
    assert torch.equal(var[:3].cpu(), torch.zeros(3))
    assert (var[3:] > 0).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_long_channels_summed_in_several_parts(impl, gen):
    # 2 x 3 x 40 x 37 = 8,880 elements per channel: the CUDA kernels cut each channel
    # into runs of 8,192 (one block each), the second starting mid-plane; x is a view
    # with every other frame, so the frames' stride is not T's.
    base = torch.randn(2, 6, 3, 40, 37, generator=gen, dtype=torch.float64) * 2 + 30
    x = impl.to(base.float())[:, ::2]
    assert x.stride(1) == 2 * x.stride(0) // 6
    mean, var = impl.batch_stats(x, 3)
    var_r, mean_r = var_mean(base.float().double()[:, ::2], 3)
    torch.testing.assert_close(mean.cpu().double(), mean_r, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.cpu().double(), var_r, rtol=1e-5, atol=0)
    if impl.name == "cuda_emulator":  # and the runs' order of summation is fixed
        with cuda_emulator.block_schedule("concurrent", 5):
            again = impl.batch_stats(x, 3)
        assert torch.equal(again[0], mean) and torch.equal(again[1], var)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_an_infinite_value_makes_its_channel_nan_as_var_mean_does(impl, gen):
    # inf - inf is NaN in the one-pass sums; the clamp at zero must keep it NaN on every backend.
    x = torch.randn(2, 3, 4, 5, 4, generator=gen)
    x[1, 2, 0, 3, 1] = float("inf")
    mean, var = impl.batch_stats(impl.to(x), 4)
    var_r, _ = var_mean(x.double(), 4)
    assert torch.isnan(var[0].cpu()) and torch.isnan(var_r[0])
    assert torch.isfinite(var[1:].cpu()).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck(impl, gen):
    x = impl.to(torch.randn(2, 3, 6, 3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    # The emulator checks random projections of the Jacobian (fast_mode).
    assert torch.autograd.gradcheck(lambda x: impl.batch_stats(x, 4), (x,), fast_mode=impl.name == "cuda_emulator")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradient_is_the_adjoint(impl, gen):
    # The statistics' gradient is linear in (grad_mean, grad_var) given x:
    # check against the reference's autograd on large random inputs.
    x = torch.randn(3, 5, 16, 9, 10, generator=gen, dtype=torch.float64)
    gm, gv = torch.randn(12, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    with launches_as_on(impl, 8):
        mean, _ = impl.batch_stats(impl.to(x), 12)
        grad = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, 12).cpu()
    xr = x.clone().requires_grad_()
    var_r, mean_r = var_mean(xr, 12)
    (expected,) = torch.autograd.grad((mean_r * gm).sum() + (var_r * gv).sum(), xr)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    assert torch.equal(grad[:, :, 12:], torch.zeros_like(grad[:, :, 12:]))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_grad_in_in_any_layout(impl, gen):
    # grad_in as a channels_last copy and as a view of every other frame: the op reads
    # them where they are (or copies them to contiguous planes), never as if contiguous.
    x = torch.randn(2, 3, 8, 5, 6, generator=gen, dtype=torch.float64)
    gm, gv = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    base = torch.randn(2, 6, 8, 5, 6, generator=gen, dtype=torch.float64)
    mean, _ = impl.batch_stats(impl.to(x), 6)
    stats = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, 6).cpu()
    for grad_in in (base[:, ::2], base[:, :3].contiguous(memory_format=torch.channels_last_3d)):
        assert not grad_in.is_contiguous()
        summed = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, 6, impl.to(grad_in))
        torch.testing.assert_close(summed.cpu(), stats + grad_in, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_empty_input_gives_nan_like_var_mean(impl):
    mean, var = impl.batch_stats(impl.to(torch.empty(0, 3, 4, 2, 2)), 4)
    assert mean.shape == var.shape == (4,)
    assert torch.isnan(mean).all() and torch.isnan(var).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("channels", [8, 5])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(impl, channels, requires_grad, gen):
    x5 = impl.to(torch.randn(2, 3, 8, 4, 5, generator=gen)).requires_grad_(requires_grad)
    opcheck(impl, "batch_stats", (x5, channels))
    mean, _ = impl.batch_stats(x5.detach(), channels)
    gm, gv = impl.to(torch.randn(channels, generator=gen)), impl.to(torch.randn(channels, generator=gen))
    opcheck(impl, "batch_stats_backward", (gm, gv, x5.detach(), mean, channels))
    grad_in = impl.to(torch.randn(x5.shape, generator=gen))
    opcheck(impl, "batch_stats_backward", (gm, gv, x5.detach(), mean, channels, grad_in))


@pytest.mark.cuda
def test_runs_on_the_current_stream_and_the_device_of_x(gen):
    x5 = torch.randn(2, 4, 16, 9, 9, generator=gen)
    check_runs_on_the_current_stream_and_device(lambda x5: ops.batch_stats(x5, 12), x5)


def _frames_in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, T, C, H, W) ``t``'s values, laid out as named (pixel-major frames: channels_last)."""
    if layout == "channels_last":
        return t.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, t.shape[:2])
    if layout == "every other frame":  # a view into a tensor of twice the frames
        base = torch.full((t.shape[0], 2 * t.shape[1], *t.shape[2:]), 7.0, dtype=t.dtype)
        base[:, ::2] = t
        return base[:, ::2]
    return t.contiguous()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "x_layout,grad_layout",
    [("contiguous", "contiguous"), ("channels_last", "channels_last"), ("contiguous", "channels_last"),
     ("channels_last", "contiguous"), ("contiguous", "every other frame")],
)
def test_in_place_backward_writes_the_out_of_place_result_into_grad_x(impl, dtype, x_layout, grad_layout, gen):
    # batch_stats_backward_ (the training node's) adds the statistics' gradient into grad_x:
    # the bits of batch_stats_backward with grad_in = grad_x, in grad_x's own memory and
    # strides, whether the kernels write it directly (grad_x laid out as their output) or
    # through a copy; the channels without statistics (6 of 8 have them) keep grad_x's values.
    shape = (2, 3, 8, 5, 6)
    x = _frames_in_layout((torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype), x_layout)
    grad = _frames_in_layout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype), grad_layout)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gm, gv = torch.randn(6, generator=gen, dtype=acc), torch.randn(6, generator=gen, dtype=acc)
    mean, _ = impl.batch_stats(impl.to(x), 6)
    expected = impl.ops.batch_stats_backward(impl.to(gm), impl.to(gv), impl.to(x), mean, 6, impl.to(grad)).cpu()
    target = impl.to(grad)
    before = target.clone()
    address, strides = target.data_ptr(), target.stride()
    assert impl.ops.batch_stats_backward_(impl.to(gm), impl.to(gv), impl.to(x), mean, 6, target) is None
    assert (target.data_ptr(), target.stride()) == (address, strides)
    assert not torch.equal(target[:, :, :6], before[:, :, :6])
    assert torch.equal(target.cpu(), expected)
    assert torch.equal(target[:, :, 6:], before[:, :, 6:])
    if grad_layout == "every other frame" and target._base is not None:  # (a GPU's .to copied the view)
        # the frames between, which the view skips, are not touched
        assert torch.all(target._base[:, 1::2] == 7)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_in_place_backward_errors(impl, gen):
    x = impl.to(torch.randn(2, 3, 8, 4, 5, generator=gen))
    gm, gv, mean = (impl.to(torch.randn(6, generator=gen)) for _ in range(3))
    with pytest.raises(ValueError, match=r"^batch_stats_backward_: grad_x must not share memory with x"):
        impl.ops.batch_stats_backward_(gm, gv, x, mean, 6, x)
    with pytest.raises(ValueError, match=r"^batch_stats_backward_: grad_x must have the shape of x"):
        impl.ops.batch_stats_backward_(gm, gv, x, mean, 6, impl.to(torch.randn(2, 3, 8, 4, 4)))
    with pytest.raises(TypeError, match=r"^batch_stats_backward_: grad_x must have the dtype of x"):
        impl.ops.batch_stats_backward_(gm, gv, x, mean, 6, x.double())
    with pytest.raises(ValueError, match=r"^batch_stats_backward_: channels must be in \[1, C = 8\], got 9"):
        impl.ops.batch_stats_backward_(gm, gv, x, mean, 9, torch.empty_like(x))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_in_place_backward_opcheck(impl, gen):
    # The schema declares the mutation of grad_x (and nothing else), and the fake kernel
    # traces it (torch.compile of the training node's backward).
    x5 = impl.to(torch.randn(2, 3, 8, 4, 5, generator=gen))
    mean, _ = impl.batch_stats(x5, 6)
    gm, gv = impl.to(torch.randn(6, generator=gen)), impl.to(torch.randn(6, generator=gen))
    args = (gm, gv, x5, mean, 6, impl.to(torch.randn(x5.shape, generator=gen)))
    torch.library.opcheck(getattr(impl.ops, "batch_stats_backward_").default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
