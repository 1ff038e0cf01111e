"""Property-based tests (hypothesis) of every op: over shapes, dtypes, channel counts,
layouts and arguments, valid or not, the fused ops either match the reference or raise the
documented ValueError/TypeError, never crash or return garbage.

Which arguments are valid is decided here from the documented rules alone (the
functional docstrings; for the raw batch_stats op, its schema's comment), not from the
implementation's checks. They run on the CPU kernels and on the GPU's; the emulated CUDA
kernels, at up to a second per emulated block, run their random configurations in the
op files instead of 150 examples here.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import implementations, low_precision_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateshift import reference
from gateshift.testing.compare import compare_to_reference

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@st.composite
def problems(draw):
    """A gate-shift call: sizes, gated channels, order, layout, optional BN and bias, dtype,
    sometimes invalid (odd or too many channels, frames not a multiple of T, ...)."""
    clips, frames = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    # Mostly valid channel counts (multiples of 4), sometimes any count.
    c = draw(st.one_of(st.integers(1, 6).map(lambda k: 4 * k), st.integers(1, 24)))
    fours = st.integers(1, c // 4).map(lambda k: 4 * k) if c >= 4 else st.none()
    return dict(
        clips=clips,
        frames=frames,
        # The declared num_segments: usually the true frame count, sometimes one that
        # does not divide B*T (or disagrees with the 5-D x's T).
        num_segments=draw(st.sampled_from([frames] * 5 + [frames + 1])),
        c=c,
        h=draw(st.integers(1, 6)),
        w=draw(st.integers(1, 6)),
        channels=draw(st.one_of(st.none(), fours, st.integers(0, c + 2))),
        order=draw(st.sampled_from(["interleaved"] * 4 + ["grouped"] * 3 + ["bogus"])),
        layout=draw(st.sampled_from(["TSN", "BCTHW"])),
        affine=draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def documented_error(pr) -> bool:
    """Whether the docstrings' rules reject this call."""
    p = pr["c"] if pr["channels"] is None else pr["channels"]
    if pr["order"] not in ("interleaved", "grouped"):
        return True
    if p < 2 or p % 2 or p > pr["c"] or (pr["order"] == "interleaved" and p % 4):
        return True
    if pr["layout"] == "TSN":
        return (pr["clips"] * pr["frames"]) % pr["num_segments"] != 0
    return pr["num_segments"] != pr["frames"]


def make_call(pr, fuse: bool):
    """Random tensors for the problem (float64 masters) and the keyword arguments."""
    gen = torch.Generator().manual_seed(pr["seed"])
    p = pr["c"] if pr["channels"] is None else pr["channels"]
    half = max(p // 2, 1)
    tensors = dict(
        x=torch.randn(pr["clips"] * pr["frames"], pr["c"], pr["h"], pr["w"], generator=gen, dtype=torch.float64),
        weight=torch.randn(2, half, 3, 3, 3, generator=gen, dtype=torch.float64) * (1.5 / (13.5 * half) ** 0.5),
        bias=torch.randn(2, generator=gen, dtype=torch.float64) * 0.5 if pr["bias"] else None,
        bn_scale=torch.rand(max(p, 1), generator=gen, dtype=torch.float64) + 0.5 if pr["affine"] else None,
        bn_shift=torch.randn(max(p, 1), generator=gen, dtype=torch.float64) * 0.5 if pr["affine"] else None,
    )
    if fuse:
        tensors["fuse_weight"] = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5
        tensors["fuse_bias"] = torch.randn(2, generator=gen, dtype=torch.float64) * 0.5
    kwargs = dict(num_segments=pr["num_segments"], channels=pr["channels"], channel_order=pr["order"])
    return tensors, kwargs


def to_layout(x, pr):
    """x (B*T, C, H, W) as the layout's tensor (a strided view, as a 3D-CNN would hold it)."""
    if pr["layout"] == "TSN":
        return x
    return x.unflatten(0, (pr["clips"], pr["frames"])).transpose(1, 2)


def from_layout(out, pr):
    return out if pr["layout"] == "TSN" else out.transpose(1, 2).flatten(0, 1)


def call(fn, tensors, kwargs, pr, dtype, float32_affine=True, device="cpu"):
    """``fn`` on tensors cast to ``dtype`` (the BN affine float32 for half types, as the
    modules pass it, unless not ``float32_affine``) on ``device``, in the problem's layout;
    returns the output in (B*T, C, H, W)."""
    half = dtype in (torch.float16, torch.bfloat16)
    affine_dtype = torch.float32 if half and float32_affine else dtype
    args = {
        name: None if t is None else t.to(device=device, dtype=affine_dtype if name.startswith("bn_") else dtype)
        for name, t in tensors.items()
    }
    x = args.pop("x")
    positional = [args.pop("weight"), args.pop("bias")]
    if "fuse_weight" in args:
        positional += [args.pop("fuse_weight"), args.pop("fuse_bias")]
    layout_kwargs = dict(kwargs)
    if pr["layout"] == "BCTHW":
        layout_kwargs["layout"] = "BCTHW"
    return from_layout(fn(to_layout(x, pr), *positional, **args, **layout_kwargs), pr)


def check_property(pr, impl, fused_fn, reference_fn, fuse: bool):
    tensors, kwargs = make_call(pr, fuse)
    dtype = pr["dtype"]
    if documented_error(pr):
        with pytest.raises((ValueError, TypeError)):
            call(fused_fn, tensors, kwargs, pr, dtype, device=impl.device)
        return
    ref_kwargs = kwargs  # a num_segments that divides B*T is a valid (different) clip length
    exact = call(reference_fn, tensors, ref_kwargs, dict(pr, layout="TSN"), torch.float64)
    if dtype == torch.float64:
        # Forward and every gradient, against the reference's autograd.
        leaves = {k: None if t is None else impl.to(t).requires_grad_() for k, t in tensors.items()}
        ref_leaves = {k: None if t is None else t.clone().requires_grad_() for k, t in tensors.items()}
        out = call(fused_fn, leaves, kwargs, pr, dtype, device=impl.device)
        ref = call(reference_fn, ref_leaves, ref_kwargs, dict(pr, layout="TSN"), dtype)
        assert out.device.type == impl.device
        torch.testing.assert_close(out.cpu(), ref, **TOLERANCE[dtype])
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(pr["seed"] + 1), dtype=dtype)
        names = [k for k, t in leaves.items() if t is not None]
        grads = torch.autograd.grad(out, [leaves[k] for k in names], impl.to(g))
        ref_grads = torch.autograd.grad(ref, [ref_leaves[k] for k in names], g)
        for name, a, b in zip(names, grads, ref_grads):
            torch.testing.assert_close(a.cpu(), b, **TOLERANCE[dtype], msg=lambda m: f"grad {name}: {m}")
    else:
        out = call(fused_fn, tensors, kwargs, pr, dtype, device=impl.device)
        assert out.dtype == dtype and out.shape == exact.shape and out.device.type == impl.device
        with low_precision_reference():  # oneDNN's, with an odd channel count per group, can be NaN
            low = call(reference_fn, tensors, ref_kwargs, dict(pr, layout="TSN"), dtype, float32_affine=False)
        c = compare_to_reference(out, exact, low)
        assert c.ok, f"{dtype}: error {c.error:.3g} > bound {c.bound:.3g}"


IMPLEMENTATIONS = implementations("cpu", "cuda")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@SETTINGS
@given(problems())
def test_gate_shift_matches_reference_or_raises(impl, pr):
    check_property(pr, impl, impl.gate_shift, reference.gate_shift, fuse=False)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@SETTINGS
@given(problems())
def test_gate_shift_fuse_matches_reference_or_raises(impl, pr):
    check_property(pr, impl, impl.gate_shift_fuse, reference.gate_shift_fuse, fuse=True)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@SETTINGS
@given(
    clips=st.integers(1, 3),
    frames=st.integers(1, 5),
    c=st.integers(1, 20),
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    fold_div=st.integers(-1, 24),
    layout=st.sampled_from(["TSN", "BCTHW"]),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.int32, torch.bool, torch.complex64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_temporal_shift_matches_reference_or_raises(impl, clips, frames, c, hw, fold_div, layout, dtype, seed):
    # Floating tensors run the fused kernels; integer and bool ones are shifted by
    # indexing, as the published shift does; complex ones are refused.
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(clips * frames, c, *hw, generator=gen) * 10).to(dtype)
    pr = dict(layout=layout, clips=clips, frames=frames)
    kwargs = dict(num_segments=frames, layout="BCTHW") if layout == "BCTHW" else dict(num_segments=frames)
    if fold_div < 1 or dtype.is_complex:
        with pytest.raises((ValueError, TypeError)):
            impl.temporal_shift(to_layout(impl.to(x), pr), fold_div=fold_div, **kwargs)
        return
    out = from_layout(impl.temporal_shift(to_layout(impl.to(x), pr), fold_div=fold_div, **kwargs), pr)
    assert out.dtype == dtype and out.device.type == impl.device
    assert torch.equal(out.cpu(), reference.temporal_shift(x, frames, fold_div))  # a shift is exact


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@SETTINGS
@given(
    shape=st.tuples(st.integers(0, 3), st.integers(1, 4), st.integers(1, 12), st.integers(1, 5), st.integers(1, 5)),
    channels=st.integers(-1, 14),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_batch_stats_matches_var_mean_or_raises(impl, shape, channels, dtype, seed):
    # The raw op's rule (its schema's comment): the statistics of the first `channels`
    # channels, 1 <= channels <= C, over (B, T, H, W), in the accumulation dtype; NaN
    # for an empty batch, as torch.var_mean.
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 3).to(dtype)
    if not 1 <= channels <= shape[2]:
        with pytest.raises(ValueError, match="^batch_stats: channels must be in"):
            impl.batch_stats(impl.to(x), channels)
        return
    mean, var = impl.batch_stats(impl.to(x), channels)
    assert mean.dtype == var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    with warnings.catch_warnings():  # an empty batch: NaN, with a warning about it
        warnings.simplefilter("ignore")
        var_r, mean_r = torch.var_mean(x.double()[:, :, :channels], dim=(0, 1, 3, 4), correction=0)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mean.cpu().double(), mean_r, rtol=rtol, atol=rtol, equal_nan=True)
    torch.testing.assert_close(var.cpu().double(), var_r, rtol=rtol, atol=rtol, equal_nan=True)
