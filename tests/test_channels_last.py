"""channels_last read and written in place by the CPU kernels (csrc/cpu/frame_staging.h).

The kernels stage a pixel-major frame's planes per thread instead of copying x, so
every result must equal the contiguous input's bit for bit (the same planes, summed
in the same order), the output must keep x's layout, and no copy of x's size may
happen anywhere: in the ops, the modules (batch statistics included) and backward."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import Case, fuse_inputs, restored_after_test
from torch.profiler import ProfilerActivity, profile

import gateshift

ops = torch.ops.gateshift
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.fixture
def scratch_limit():
    yield from restored_after_test(ops._set_cpu_scratch_limit)


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def channels_last(x5: torch.Tensor) -> torch.Tensor:
    """The (B, T, C, H, W) x5 with each frame pixel-major, as a channels_last (B*T, C, H, W)
    activation viewed as clips."""
    return x5.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x5.shape[:2])


def is_pixel_major(t: torch.Tensor) -> bool:
    return t.flatten(0, 1).is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def x_sized_copies(fn, shape) -> int:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::copy_" and e.input_shapes and
               torch.Size(e.input_shapes[0]).numel() == torch.Size(shape).numel())


def raw_gate_shift(fuse: bool, x5, grad, params, channels, interleaved):
    """Forward and backward of the raw GSM or GSF op: every output of both."""
    weight, bias, scale, shift, fuse_weight, fuse_bias = params
    if fuse:
        out, gates, fusion = ops.gate_shift_fuse_forward(x5, weight, bias, scale, shift, fuse_weight, fuse_bias,
                                                         channels, interleaved)
        back = ops.gate_shift_fuse_backward(grad, x5, gates, fusion, weight, scale, shift, fuse_weight, channels,
                                            interleaved)
        return [out, gates, fusion, *back]
    out, gates = ops.gate_shift_forward(x5, weight, bias, scale, shift, channels, interleaved)
    back = ops.gate_shift_backward(grad, x5, gates, weight, scale, shift, channels, interleaved)
    return [out, gates, *back]


def assert_bitwise_equal(actual, expected, what):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{what}: output {i}"
        assert torch.equal(a, e) or torch.equal(a.isnan(), e.isnan()) and torch.equal(a.nan_to_num(), e.nan_to_num()), \
            f"{what}: output {i} differs by {(a.double() - e.double()).abs().max()}"


# Shapes that move the frame window through its cases: several clips per task (B * T =
# 15 frames: tasks of 10 and 5 on 2 threads), one and two frames per clip, a plane of
# one row, pass-through channels, and 7x7 planes. Clips cut between tasks: below.
CASES = [
    Case(3, 5, 8, 6, 7, P=8),
    Case(2, 4, 12, 5, 5, P=8),
    Case(4, 1, 8, 4, 3, P=4),
    Case(2, 2, 8, 1, 9, P=8),
    Case(1, 8, 16, 7, 7, P=16, order="grouped"),
]


@pytest.mark.parametrize("fuse", [False, True], ids=["gsm", "gsf"])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gate_shift_ops_read_channels_last_in_place(fuse, case, dtype, gen, threads):
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen, dtype=dtype)
    x5 = x.unflatten(0, (case.B, case.T))
    grad = torch.randn(x5.shape, generator=gen, dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    params = (weight, bias, scale.to(acc), shift.to(acc), fuse_weight, fuse_bias)
    interleaved = case.order == "interleaved"
    threads(2)
    expected = raw_gate_shift(fuse, x5, grad, params, case.gated, interleaved)
    for x_in, grad_in in [(channels_last(x5), channels_last(grad)), (channels_last(x5), grad),
                          (x5, channels_last(grad))]:
        for n in (1, 2):
            threads(n)
            actual = raw_gate_shift(fuse, x_in, grad_in, params, case.gated, interleaved)
            assert_bitwise_equal(actual, expected, f"x pixel-major {is_pixel_major(x_in)}, "
                                                   f"grad {is_pixel_major(grad_in)}, {n} threads")
            # The output and dx keep x's layout.
            grad_x = actual[3] if fuse else actual[2]
            assert is_pixel_major(actual[0]) == is_pixel_major(x_in)
            assert is_pixel_major(grad_x) == is_pixel_major(x_in)


@pytest.mark.parametrize("fuse", [False, True], ids=["gsm", "gsf"])
@pytest.mark.parametrize("case", [Case(1, 9, 16, 12, 12, P=8), Case(2, 6, 16, 12, 12, P=8)], ids=str)
def test_tasks_that_cut_clips(fuse, case, gen, threads):
    # 12x12 planes of 16 channels make groups of one frame, so 3 threads cut the clips
    # (tasks of frames 0-2, 3-5, 6-8; or of 4 frames, the second spanning both clips):
    # the window starts and ends inside clips, where gate frames are recomputed.
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen, dtype=torch.float32)
    x5 = x.unflatten(0, (case.B, case.T))
    grad = torch.randn(x5.shape, generator=gen)
    params = (weight, bias, scale.float(), shift.float(), fuse_weight, fuse_bias)
    threads(1)
    expected = raw_gate_shift(fuse, x5, grad, params, 8, True)
    for n in (3, 4):
        threads(n)
        actual = raw_gate_shift(fuse, channels_last(x5), channels_last(grad), params, 8, True)
        assert_bitwise_equal(actual, expected, f"{n} threads")


@pytest.mark.parametrize("fuse", [False, True], ids=["gsm", "gsf"])
def test_every_other_frame_of_a_channels_last_tensor(fuse, gen):
    # Pixel-major frames that are not dense together: read in place, the output (dense,
    # contiguous planes: output_strides) written through the plane path.
    case = Case(2, 3, 8, 5, 6)
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen, dtype=torch.float32)
    x5 = x.unflatten(0, (2, 3))
    grad = torch.randn(x5.shape, generator=gen)
    params = (weight, bias, scale.float(), shift.float(), fuse_weight, fuse_bias)
    spread = channels_last(torch.randn(2, 6, 8, 5, 6, generator=gen))
    spread[:, ::2] = x5
    x_view = spread[:, ::2]
    assert not is_pixel_major(x_view) and x_view.stride(2) == 1  # frames pixel-major, 2 frames apart
    expected = raw_gate_shift(fuse, x5, grad, params, 8, True)
    actual = raw_gate_shift(fuse, x_view, grad, params, 8, True)
    assert_bitwise_equal(actual, expected, "every other frame")


@pytest.mark.parametrize("fuse", [False, True], ids=["gsm", "gsf"])
def test_planes_too_large_for_one_tile_give_the_same_result(fuse, gen, scratch_limit):
    # A pixel-major output is written a whole frame at a time, so tiled planes run on
    # contiguous copies (gate_shift_launch.h): still the same numbers, in x's layout.
    case = Case(2, 3, 8, 12, 13, P=8)
    x, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen, dtype=torch.float32)
    x5 = x.unflatten(0, (2, 3))
    grad = torch.randn(x5.shape, generator=gen)
    params = (weight, bias, scale.float(), shift.float(), fuse_weight, fuse_bias)
    scratch_limit(4096)  # bytes per thread: 3-row bands of the 12 x 13 planes
    expected = raw_gate_shift(fuse, x5, grad, params, 8, True)
    actual = raw_gate_shift(fuse, channels_last(x5), channels_last(grad), params, 8, True)
    assert_bitwise_equal(actual, expected, "tiled")
    assert is_pixel_major(actual[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fold", [0, 2, 3, 5, 8], ids=lambda f: f"fold{f}")
def test_temporal_shift_reads_channels_last_in_place(dtype, fold, gen):
    x5 = torch.randn(2, 3, 8, 4, 5, generator=gen, dtype=torch.float64).to(dtype)
    spread = channels_last(torch.randn(2, 6, 8, 4, 5, generator=gen, dtype=torch.float64).to(dtype))
    spread[:, ::2] = x5
    for reverse in (False, True):
        expected = ops.temporal_shift(x5, fold, reverse)
        # Dense pixel-major frames (shifted pixel by pixel), and every other frame of a
        # pixel-major tensor (read through staged planes; its output has contiguous planes).
        for x_in, pixel_major_out in ((channels_last(x5), True), (spread[:, ::2], False)):
            actual = ops.temporal_shift(x_in, fold, reverse)
            assert torch.equal(actual, expected)
            assert is_pixel_major(actual) == pixel_major_out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [8, 5])
def test_batch_statistics_read_channels_last_in_place(dtype, channels, gen, threads):
    x5 = (torch.randn(3, 5, 8, 6, 7, generator=gen, dtype=torch.float64) * 2 + 3).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    grad_mean = torch.randn(channels, generator=gen, dtype=acc)
    grad_var = torch.randn(channels, generator=gen, dtype=acc)
    grad_in = torch.randn(x5.shape, generator=gen, dtype=torch.float64).to(dtype)
    mean, var = ops.batch_stats(x5, channels)
    expected = ops.batch_stats_backward(grad_mean, grad_var, x5, mean, channels, grad_in)
    for n in (1, 2):
        threads(n)
        m, v = ops.batch_stats(channels_last(x5), channels)
        assert torch.equal(m, mean) and torch.equal(v, var)
        for g_in in (grad_in, channels_last(grad_in), None):
            actual = ops.batch_stats_backward(grad_mean, grad_var, channels_last(x5), mean, channels, g_in)
            reference = expected if g_in is not None else ops.batch_stats_backward(grad_mean, grad_var, x5, mean,
                                                                                    channels, None)
            assert torch.equal(actual, reference) and is_pixel_major(actual)


@pytest.mark.parametrize("module", ["GSM", "GSF", "TemporalShift"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_modules_take_channels_last_without_copying_it(module, train, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    if module == "TemporalShift":
        m = gateshift.TemporalShift(n_segment=3, n_div=4)
    else:
        m = getattr(gateshift, module)(8, 3)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    m.train(train)
    x = torch.randn(6, 8, 5, 7, generator=gen)
    g = torch.randn(6, 8, 5, 7, generator=gen)
    xc = x.clone().requires_grad_()
    out_c = m(xc)
    dx_c = torch.autograd.grad(out_c, xc, g)[0]
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    gl = g.contiguous(memory_format=torch.channels_last)

    def forward_and_backward():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no copy announced
            out = m(xl)
            return out, torch.autograd.grad(out, xl, gl)[0]

    out_l, dx_l = forward_and_backward()
    assert torch.equal(out_l, out_c) and torch.equal(dx_l, dx_c)
    assert out_l.is_contiguous(memory_format=torch.channels_last)
    assert dx_l.is_contiguous(memory_format=torch.channels_last)
    assert x_sized_copies(forward_and_backward, x.shape) == 0


def test_bcthw_layout_reads_channels_last_3d_in_place(gen):
    case = Case(2, 4, 8, 5, 6)
    x, weight, bias, scale, shift = fuse_inputs(case, gen, dtype=torch.float32)[:5]
    x5 = x.unflatten(0, (2, 4)).transpose(1, 2).contiguous()  # (B, C, T, H, W)
    x5l = x5.contiguous(memory_format=torch.channels_last_3d)
    kwargs = dict(bn_scale=scale, bn_shift=shift, layout="BCTHW")
    expected = gateshift.gate_shift(x5, weight, bias, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actual = gateshift.gate_shift(x5l, weight, bias, **kwargs)
    assert torch.equal(actual, expected)
    assert actual.is_contiguous(memory_format=torch.channels_last_3d)


def test_emulated_cuda_kernels_fake_strides_predict_their_copy(gen):
    # The emulated CUDA ops run on CPU tensors but copy channels_last as the CUDA backend
    # does: their fake kernels must say so (register_fake_and_autograd).
    emulator = pytest.importorskip("gateshift.testing.cuda_emulator")
    x5 = channels_last(torch.randn(2, 3, 8, 5, 4, generator=gen))
    real = emulator.ops.temporal_shift(x5, 2, False)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = emulator.ops.temporal_shift(mode.from_tensor(x5), 2, False)
    assert fake.stride() == real.stride() and not is_pixel_major(real)
    assert is_pixel_major(ops.temporal_shift(x5, 2, False))  # the CPU library's


@pytest.mark.parametrize("op", ["gate_shift_forward", "temporal_shift", "batch_stats_backward"])
def test_fake_kernels_give_channels_last_outputs(op, gen):
    # torch.compile plans memory from the fake kernels: they must predict the pixel-major
    # outputs the CPU kernels return.
    x5 = channels_last(torch.randn(2, 3, 8, 5, 4, generator=gen))
    case = Case(2, 3, 8, 5, 4)
    weight, bias, scale, shift = fuse_inputs(case, gen, dtype=torch.float32)[1:5]
    args = {
        "gate_shift_forward": (x5, weight, bias, scale, shift, 8, True),
        "temporal_shift": (x5, 2, False),
        "batch_stats_backward": (torch.randn(8), torch.randn(8), x5, torch.randn(8), 8, channels_last(torch.randn(x5.shape))),
    }[op]
    real = getattr(ops, op)(*args)
    real = real if isinstance(real, tuple) else (real,)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = getattr(ops, op)(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    fake = fake if isinstance(fake, tuple) else (fake,)
    for r, f in zip(real, fake):
        assert (f.shape, f.stride()) == (r.shape, r.stride())
    assert is_pixel_major(real[0])
    torch.library.opcheck(getattr(ops, op).default, args)
