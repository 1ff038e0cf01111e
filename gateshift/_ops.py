"""Loads the compiled ops and registers what the dispatcher needs from Python.

The schemas and the CPU/CUDA kernels live in ``csrc/``. Here, once per op:

* a fake (meta) implementation, so ``torch.compile`` and ``torch.export`` trace
  the ops without running them;
* autograd: each forward op is differentiated by its ``*_backward`` op, a
  registered op of its own; double backward raises a clear error.

The ops' autograd is reverse mode (``torch.library.register_autograd`` serves
neither forward-mode AD nor torch.func transforms): the public functions of
``gateshift.functional`` run the plain-PyTorch reference in those modes.
"""

from __future__ import annotations

import contextvars
import functools
import warnings

import torch
from torch import Tensor

from . import _C  # noqa: F401  (importing the library registers torch.ops.gateshift)

ops = torch.ops.gateshift


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in and store the gates in: float64 or float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def has_pixel_major_frames(t: Tensor) -> bool:
    """Mirrors ``has_pixel_major_frames`` in csrc/common/checks.cpp: each frame of the
    (..., C, H, W) tensor ``t`` is a dense (H, W, C) block with C innermost
    (``channels_last``), and its planes are not contiguous."""
    c, h, w = t.shape[-3:]
    if _has_contiguous_planes(t):
        return False
    return (c <= 1 or t.stride(-3) == 1) and (w <= 1 or t.stride(-1) == c) and (h <= 1 or t.stride(-2) == w * c)


def _has_contiguous_planes(t: Tensor) -> bool:
    h, w = t.shape[-2:]
    return (w <= 1 or t.stride(-1) == 1) and (h <= 1 or t.stride(-2) == w)


def _is_non_overlapping_and_dense(t: Tensor) -> bool:
    """As ATen's ``is_non_overlapping_and_dense``: the dimensions, ordered by stride
    (those of size 1 left out), tile memory without gaps or overlaps."""
    expected = 1
    for d in sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=lambda d: t.stride(d)):
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


# Whether the CPU kernels being traced read pixel-major frames in place: the CPU
# library's do (cpu::Backend::kPixelMajorFrames); the emulated CUDA kernels, which also
# run on CPU tensors, copy them as the CUDA backend does (register_fake_and_autograd).
_cpu_reads_pixel_major_frames: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gateshift_cpu_reads_pixel_major_frames", default=True
)


def frames_input(t: Tensor, *, warn: bool = True) -> Tensor:
    """Mirrors ``ops::frames_input`` in csrc/ops/backend.h: the kernels read ``t`` as
    it is when each (H, W) plane is contiguous, and on the CPU also when its frames
    are pixel-major (``channels_last``, read in place); else a contiguous copy,
    announced once per process (``warn``: unless only shapes are being traced) unless
    ``t`` is broadcast."""
    in_place = t.device.type == "cpu" and _cpu_reads_pixel_major_frames.get()
    if _has_contiguous_planes(t) or (in_place and has_pixel_major_frames(t)):
        return t
    if warn and not _is_broadcast(t):  # a broadcast tensor is materialised by any kernel: see checks.cpp
        _warn_plane_copy_once(t)
    return t.contiguous()


def _is_broadcast(t: Tensor) -> bool:
    """Mirrors ``is_broadcast`` in csrc/common/checks.cpp: a zero stride where the size is > 1."""
    return any(size > 1 and stride == 0 for size, stride in zip(t.shape, t.stride()))


_plane_copy_warned = False


def _warn_plane_copy_once(t: Tensor) -> None:
    global _plane_copy_warned
    if _plane_copy_warned:
        return
    _plane_copy_warned = True
    warnings.warn(
        f"gateshift: an input of shape {tuple(t.shape)} and strides {t.stride()} has (H, W) planes that are not "
        "contiguous (channels_last on CUDA, a channel slice of it, say): the fused ops copy it to contiguous planes "
        "first, one extra read and write of its size. (Shown once.)",
        UserWarning,
        stacklevel=4,
    )


def empty_output_like(x: Tensor) -> Tensor:
    """Mirrors ``ops::empty_output_like`` in csrc/ops/backend.h: a tensor of the
    5-D ``x``'s sizes that the kernels can write, no element shared, in the layout
    the kernels read ``x`` in (``frames_input``). ``x``'s own strides when it is
    non-overlapping and dense (``channels_last`` stays so on the CPU); else
    (overlapping or gapped views) dense strides with the planes innermost and B, T, C
    in the order of ``x``'s strides."""
    x = frames_input(x, warn=False)
    if x.is_contiguous() or (has_pixel_major_frames(x) and _is_non_overlapping_and_dense(x)):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    # For any other non-overlapping and dense x this reproduces x's own strides (up to
    # those of size-1 dimensions, which do not matter).
    order = sorted(range(3), key=lambda d: -x.stride(d))  # stable: ties keep B, T, C order
    strides = [0, 0, 0, max(x.shape[4], 1), 1]
    step = strides[3] * max(x.shape[3], 1)
    for d in reversed(order):
        strides[d] = step
        step = step * max(x.shape[d], 1)
    return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------
# Fake implementations: output metadata only, matching the C++ kernels exactly.
# ---------------------------------------------------------------------------


def _gate_shift_forward_fake(x, weight, bias, bn_scale, bn_shift, channels, interleaved):
    b, t, _, h, w = x.shape
    out = empty_output_like(x)
    gates = x.new_empty((b, t, 2, h, w), dtype=accumulation_dtype(x.dtype))
    return out, gates


def _gate_shift_backward_fake(grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved):
    grad_x = empty_output_like(x)
    grad_weight = weight.new_empty(weight.shape)
    grad_bias = weight.new_empty((2,))
    if bn_scale is None:
        return grad_x, grad_weight, grad_bias, weight.new_empty((0,)), weight.new_empty((0,))
    return grad_x, grad_weight, grad_bias, bn_scale.new_empty((channels,)), bn_shift.new_empty((channels,))


def _gate_shift_fuse_forward_fake(x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, channels, interleaved):
    out, gates = _gate_shift_forward_fake(x, weight, bias, bn_scale, bn_shift, channels, interleaved)
    b, t = x.shape[:2]
    return out, gates, x.new_empty((b, t, 3, channels), dtype=accumulation_dtype(x.dtype))


def _gate_shift_fuse_backward_fake(
    grad_out, x, gates, fusion, weight, bn_scale, bn_shift, fuse_weight, channels, interleaved
):
    grads = _gate_shift_backward_fake(grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved)
    return (*grads, fuse_weight.new_empty((2, 2, 3, 3)), fuse_weight.new_empty((2,)))


def _temporal_shift_fake(x, fold, reverse):
    return empty_output_like(x)


def _batch_stats_fake(x, channels):
    acc = accumulation_dtype(x.dtype)
    return x.new_empty((channels,), dtype=acc), x.new_empty((channels,), dtype=acc)


def _batch_stats_backward_fake(grad_mean, grad_var, x, mean, channels, grad_in=None):
    return empty_output_like(x)


def _batch_stats_backward_inplace_fake(grad_mean, grad_var, x, mean, channels, grad_x):
    return None


# ---------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------


def _forward_setup_context(ctx, inputs, output):
    x, weight, bias, bn_scale, bn_shift, channels, interleaved = inputs
    _, gates = output
    # Only x (alive anyway as the previous layer's output) and the 2-plane gates
    # are kept: nothing else of x's size.
    ctx.save_for_backward(x, gates, weight, bn_scale, bn_shift)
    ctx.channels = channels
    ctx.interleaved = interleaved
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(gates)


def _gate_shift_input_grads(ctx, grads, bn_scale) -> tuple:
    """The gradients of (x, weight, bias, bn_scale, bn_shift) from a gate-shift backward
    op's first five outputs, None for the inputs that were None."""
    grad_x, grad_weight, grad_bias, grad_scale, grad_shift = grads[:5]
    has_affine = bn_scale is not None
    return (
        grad_x,
        grad_weight,
        grad_bias if ctx.has_bias else None,
        grad_scale if has_affine else None,
        grad_shift if has_affine else None,
    )


def _make_forward_backward(backward_op):
    def backward(ctx, grad_out, _grad_gates):
        x, gates, weight, bn_scale, bn_shift = ctx.saved_tensors
        grads = backward_op(grad_out, x, gates, weight, bn_scale, bn_shift, ctx.channels, ctx.interleaved)
        return (*_gate_shift_input_grads(ctx, grads, bn_scale), None, None)

    return backward


def _fuse_setup_context(ctx, inputs, output):
    x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, channels, interleaved = inputs
    _, gates, fusion = output
    # x, the 2-plane gates and the (B, T, 3, P) fusion table: nothing else of x's size.
    ctx.save_for_backward(x, gates, fusion, weight, bn_scale, bn_shift, fuse_weight)
    ctx.channels = channels
    ctx.interleaved = interleaved
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(gates, fusion)


def _make_fuse_backward(backward_op):
    def backward(ctx, grad_out, _grad_gates, _grad_fusion):
        x, gates, fusion, weight, bn_scale, bn_shift, fuse_weight = ctx.saved_tensors
        grads = backward_op(
            grad_out, x, gates, fusion, weight, bn_scale, bn_shift, fuse_weight, ctx.channels, ctx.interleaved
        )
        grad_fuse_weight, grad_fuse_bias = grads[5:]
        return (*_gate_shift_input_grads(ctx, grads, bn_scale), grad_fuse_weight, grad_fuse_bias, None, None)

    return backward


def _batch_stats_setup_context(ctx, inputs, output):
    x, channels = inputs
    mean, _ = output
    ctx.save_for_backward(x, mean)
    ctx.channels = channels


def _make_batch_stats_backward(backward_op):
    def backward(ctx, grad_mean, grad_var):
        x, mean = ctx.saved_tensors
        return backward_op(grad_mean, grad_var, x, mean, ctx.channels), None

    return backward


def _temporal_shift_setup_context(ctx, inputs, output):
    _, ctx.fold, ctx.reverse = inputs


def _make_temporal_shift_backward(op):
    # The shift is linear and its adjoint is the shift in the other direction: the
    # backward is the op itself, so gradients of gradients work too.
    def backward(ctx, grad_out):
        return op(grad_out, ctx.fold, not ctx.reverse), None, None

    return backward


def _no_setup_context(ctx, inputs, output):
    pass


def _double_backward(ctx, *grads):
    raise NotImplementedError(
        "gateshift ops do not support double backward (gradients of their gradients); "
        "use gateshift.reference where second derivatives are needed"
    )


# Every op of the library: its fake kernel, and how autograd differentiates it, as
# (make_backward, the op make_backward calls, setup_context). The ops that compute
# backward passes have no derivatives of their own: None.
_FAKE_KERNELS = {
    "gate_shift_forward": _gate_shift_forward_fake,
    "gate_shift_backward": _gate_shift_backward_fake,
    "gate_shift_fuse_forward": _gate_shift_fuse_forward_fake,
    "gate_shift_fuse_backward": _gate_shift_fuse_backward_fake,
    "temporal_shift": _temporal_shift_fake,
    "batch_stats": _batch_stats_fake,
    "batch_stats_backward": _batch_stats_backward_fake,
    "batch_stats_backward_": _batch_stats_backward_inplace_fake,
}
_AUTOGRAD = {
    "gate_shift_forward": (_make_forward_backward, "gate_shift_backward", _forward_setup_context),
    "gate_shift_backward": None,
    "gate_shift_fuse_forward": (_make_fuse_backward, "gate_shift_fuse_backward", _fuse_setup_context),
    "gate_shift_fuse_backward": None,
    # The shift's backward is the shift itself, reversed: second derivatives work too.
    "temporal_shift": (_make_temporal_shift_backward, "temporal_shift", _temporal_shift_setup_context),
    "batch_stats": (_make_batch_stats_backward, "batch_stats_backward", _batch_stats_setup_context),
    "batch_stats_backward": None,
}
# Ops that write into an argument: torch.library's autograd takes functional ops only,
# and these run inside backward passes (the training node's), where nothing
# differentiates them: a fake kernel, no autograd.
_IN_PLACE_OPS = ("batch_stats_backward_",)


def _copying_pixel_major_frames(fake):
    """``fake`` as it predicts kernels that copy pixel-major frames to contiguous planes."""

    @functools.wraps(fake)
    def wrapped(*args):
        token = _cpu_reads_pixel_major_frames.set(False)
        try:
            return fake(*args)
        finally:
            _cpu_reads_pixel_major_frames.reset(token)

    return wrapped


def register_fake_and_autograd(namespace: str, *, pixel_major_frames: bool = True) -> None:
    """Fake kernels and autograd for every op of ``<namespace>``.

    Used for the ``gateshift`` library and for the emulated CUDA library of
    ``gateshift.testing.cuda_emulator``, which declares the same schemas; its kernels,
    like the CUDA ones, copy channels_last CPU input (``pixel_major_frames=False``).
    """
    library = getattr(torch.ops, namespace)
    for name, fake in _FAKE_KERNELS.items():
        fake = fake if pixel_major_frames else _copying_pixel_major_frames(fake)
        torch.library.register_fake(f"{namespace}::{name}")(fake)
        if name in _IN_PLACE_OPS:
            continue
        if _AUTOGRAD[name] is None:
            torch.library.register_autograd(f"{namespace}::{name}", _double_backward, setup_context=_no_setup_context)
        else:
            make_backward, backward_op, setup_context = _AUTOGRAD[name]
            backward = make_backward(getattr(library, backward_op))
            torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup_context)


register_fake_and_autograd("gateshift")
