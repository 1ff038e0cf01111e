"""The fused ops, as functions. See ``DESIGN.md`` for the exact math."""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import reference
from ._ops import accumulation_dtype, ops

__all__ = ["gate_shift", "gate_shift_fuse", "temporal_shift"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LAYOUTS = ("TSN", "BCTHW")
_CHANNEL_ORDERS = ("interleaved", "grouped")


def gate_shift(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    num_segments: int | None = None,
    bn_scale: Tensor | None = None,
    bn_shift: Tensor | None = None,
    channels: int | None = None,
    channel_order: str = "interleaved",
    layout: str = "TSN",
) -> Tensor:
    r"""Fused Gate-Shift: BN affine + ReLU, gating conv, tanh, gating, temporal shift, residual.

    One kernel forward and one backward; only ``x`` and the two gate planes are
    kept for backward. Differentiable in ``x``, ``weight``, ``bias``, ``bn_scale``
    and ``bn_shift``. Second derivatives are not supported.

    Args:
        x: features, ``(B*T, C, H, W)`` (``layout="TSN"``: row ``b*T + t`` is frame
            ``t`` of clip ``b``) or ``(B, C, T, H, W)`` (``layout="BCTHW"``).
        weight: ``(2, P/2, 3, 3, 3)``, the grouped gating conv
            (``nn.Conv3d(P, 2, 3, padding=1, groups=2).weight``).
        bias: ``(2,)`` or ``None``.
        num_segments: frames per clip ``T``; required for ``"TSN"``, implied by
            ``x.shape[2]`` for ``"BCTHW"``.
        bn_scale, bn_shift: ``(P,)`` each, or both ``None``. The gate input is
            ``relu(bn_scale * x + bn_shift)`` (a folded BatchNorm), else ``x``.
            In ``x``'s dtype, or float32 when ``x`` is float16/bfloat16 (what
            :class:`gateshift.GSM` passes: their gradients then stay float32).
        channels: ``P``, the number of gated channels (even, ``<= C``); channels
            ``P..C-1`` pass through. ``None`` means ``C``.
        channel_order: ``"interleaved"`` (the published GSM module's order, needs
            ``P % 4 == 0``) or ``"grouped"`` (the paper's equations).
        layout: ``"TSN"`` or ``"BCTHW"``, as above.

    Memory formats: ``x`` is read through its strides in the batch, frame and channel
    dimensions (channel slices, strided frames and the ``(B, C, T, H, W)`` layout cost no
    copy). On the CPU, ``channels_last`` (``channels_last_3d`` in the BCTHW layout) is read
    in place as well, and the output keeps it; a channel slice of it is not. Otherwise the kernels walk each ``H x W``
    plane row by row, so an ``x`` whose planes are not contiguous (``channels_last`` on
    CUDA, transposed planes) is first copied to contiguous planes, one extra read and write
    of ``x`` (a ``UserWarning`` says so, once per process), and the output is contiguous in
    the given layout.

    Returns:
        A tensor of the shape, dtype and device of ``x`` (the autocast dtype under
        ``torch.autocast``, with the BN affine kept in float32).
    """
    return _gate_shift(
        ops,
        x,
        weight,
        bias,
        num_segments=num_segments,
        bn_scale=bn_scale,
        bn_shift=bn_shift,
        channels=channels,
        channel_order=channel_order,
        layout=layout,
    )


def _gate_shift(
    library,
    x,
    weight,
    bias=None,
    *,
    num_segments=None,
    bn_scale=None,
    bn_shift=None,
    channels=None,
    channel_order="interleaved",
    layout="TSN",
) -> Tensor:
    """:func:`gate_shift` on the ops of ``library`` (``torch.ops.gateshift``, or the
    emulated CUDA kernels' ``torch.ops.gateshift_emulated`` in gateshift.testing)."""
    x, (weight, bias), (bn_scale, bn_shift) = _autocast(x, (weight, bias), (bn_scale, bn_shift))
    x5 = _five_d_view(x, num_segments, layout)
    p = _check_args(x, x5.shape[2], weight, bias, bn_scale, bn_shift, channels, channel_order)
    if _unfused_autograd_mode(x, weight, bias, bn_scale, bn_shift):
        out5 = _on_clips(reference.gate_shift, x5, weight, bias, **_reference_kwargs(x, bn_scale, bn_shift, p, channel_order))
    else:
        out5, _ = library.gate_shift_forward(x5, weight, bias, bn_scale, bn_shift, p, channel_order == "interleaved")
    return out5.flatten(0, 1) if layout == "TSN" else out5.transpose(1, 2)


_standard_ops = threading.local()


@contextlib.contextmanager
def standard_ops():
    """Within this context every gateshift op runs as its plain-PyTorch reference
    (``gateshift.reference``: the same math in standard ATen operations), so that a trace
    of the model holds nothing but standard operators. ``gateshift.onnx.export`` uses it."""
    depth = getattr(_standard_ops, "depth", 0)
    _standard_ops.depth = depth + 1
    try:
        yield
    finally:
        _standard_ops.depth = depth


def _unfused_autograd_mode(*tensors) -> bool:
    """True under torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, vmap, ...) and when
    an argument carries a forward-mode tangent (torch.autograd.forward_ad). The fused ops'
    autograd is reverse mode, registered with torch.library, which serves neither; there
    the ops run their plain-PyTorch reference (gateshift.reference, the same math, unfused),
    which every autograd mode differentiates. True as well inside :func:`standard_ops`."""
    if torch._C._are_functorch_transforms_active() or getattr(_standard_ops, "depth", 0):
        return True
    # Tangents exist only inside a dual level; outside one (nearly every call) the
    # per-tensor query below, a few microseconds a call, can be skipped.
    if fwAD._current_level < 0:
        return False
    return any(isinstance(t, Tensor) and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _on_clips(reference_op, x5: Tensor, *args, **kwargs) -> Tensor:
    """``reference_op`` (which takes ``(B*T, C, H, W)``) on the ``(B, T, C, H, W)`` view ``x5``."""
    return reference_op(x5.flatten(0, 1), *args, num_segments=x5.shape[1], **kwargs).unflatten(0, x5.shape[:2])


def _reference_kwargs(x, bn_scale, bn_shift, channels, channel_order) -> dict:
    # The reference computes in x's dtype: the affine may be float32 for half-precision x.
    def cast(t):
        return None if t is None else t.to(x.dtype)

    return dict(bn_scale=cast(bn_scale), bn_shift=cast(bn_shift), channels=channels, channel_order=channel_order)


def _autocast_enabled(x: Tensor) -> bool:
    """Whether ``torch.autocast`` is on for x's device."""
    device = x.device.type
    # "meta" and other devices without autocast raise on the second query
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _autocast(x, params: tuple, affine: tuple):
    """Under ``torch.autocast`` for x's device, the op runs in the autocast dtype: x and
    the convolution parameters are cast to it (accumulation stays float32 in the kernels)
    and the folded BatchNorm affine goes to float32, as autocast keeps normalisation in
    float32. float64 is left alone, as autocast leaves it."""
    if not isinstance(x, Tensor) or not _autocast_enabled(x):
        return x, params, affine
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return x, params, affine
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t, to):
        return t.to(to) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t

    return cast(x, dtype), tuple(cast(t, dtype) for t in params), tuple(cast(t, torch.float32) for t in affine)


def _five_d_view(x, num_segments, layout: str) -> Tensor:
    """The (B, T, C, H, W) view of the user's x that the ops take (no copy)."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if layout == "TSN":
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D (B*T, C, H, W) tensor for layout='TSN', got shape {tuple(x.shape)}")
        if num_segments is None:
            raise TypeError("num_segments is required for layout='TSN'")
        _check_int("num_segments", num_segments, minimum=1)
        if x.shape[0] % num_segments != 0:
            raise ValueError(
                f"x.shape[0] = {x.shape[0]} must be a multiple of num_segments = {num_segments} (B*T rows)"
            )
        x5 = x.unflatten(0, (x.shape[0] // num_segments, num_segments))
    else:
        if x.dim() != 5:
            raise ValueError(f"x must be a 5-D (B, C, T, H, W) tensor for layout='BCTHW', got shape {tuple(x.shape)}")
        if num_segments is not None:
            _check_int("num_segments", num_segments, minimum=1)
            if num_segments != x.shape[2]:
                raise ValueError(f"num_segments = {num_segments} disagrees with x.shape[2] = {x.shape[2]}")
        x5 = x.transpose(1, 2)
    return x5


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_tensor(name: str, t, shape: tuple, x: Tensor, dtypes: tuple | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if dtypes is None and t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = " or ".join(str(d) for d in dict.fromkeys(dtypes))
        raise TypeError(f"{name} must be {allowed} for x of dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")


def _check_args(x, c, weight, bias, bn_scale, bn_shift, channels, channel_order) -> int:
    """Validates the user's arguments; returns the number of gated channels P."""
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if channel_order not in _CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {_CHANNEL_ORDERS}, got {channel_order!r}")
    p = c if channels is None else channels
    _check_int("channels", p, minimum=2)
    if p % 2 != 0 or p > c:
        raise ValueError(f"channels must be even and at most C = {c}, got {p}")
    if channel_order == "interleaved" and p % 4 != 0:
        raise ValueError(
            f"channel_order='interleaved' needs channels % 4 == 0, got channels = {p} "
            "(use channel_order='grouped')"
        )
    _check_tensor("weight", weight, (2, p // 2, 3, 3, 3), x)
    if bias is not None:
        _check_tensor("bias", bias, (2,), x)
    if (bn_scale is None) != (bn_shift is None):
        raise ValueError("bn_scale and bn_shift must be given together (or both be None)")
    if bn_scale is not None:
        # The folded BN affine may be float32 for half-precision x: its gradients,
        # sums over all of B*T*H*W, then stay in float32 too.
        affine_dtypes = (x.dtype, accumulation_dtype(x.dtype))
        _check_tensor("bn_scale", bn_scale, (p,), x, affine_dtypes)
        _check_tensor("bn_shift", bn_shift, (p,), x, affine_dtypes)
        if bn_scale.dtype != bn_shift.dtype:
            raise TypeError(f"bn_scale ({bn_scale.dtype}) and bn_shift ({bn_shift.dtype}) must have the same dtype")
    return p


def gate_shift_fuse(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    *,
    num_segments: int | None = None,
    bn_scale: Tensor | None = None,
    bn_shift: Tensor | None = None,
    channels: int | None = None,
    channel_order: str = "interleaved",
    layout: str = "TSN",
) -> Tensor:
    r"""Fused Gate-Shift-Fuse (DESIGN.md section 2): :func:`gate_shift`'s gates and shifts,
    with the residual add replaced by a learned per-channel-and-frame fusion.

    For each group, the spatial means of the shifted part ``ys`` and of the residual
    ``r`` form a 2-channel (in-group channel x frame) image; a 3x3 convolution and a
    sigmoid give the fusion weight ``f``, and the output is ``f * ys + (1 - f) * r``.
    Three passes forward (gates and means; the tiny convolution; the combine) and
    three backward; only ``x``, the gates and the ``(B, T, 3, P)`` means/weights table
    are kept for backward.

    Args:
        x, weight, bias, num_segments, bn_scale, bn_shift, channels, channel_order,
            layout: as for :func:`gate_shift`.
        fuse_weight: ``(2, 2, 3, 3)``, the groups' channel convolutions stacked
            (``channel_conv1.weight``, ``channel_conv2.weight`` of the published module;
            input channel 0 takes the shifted part's means, 1 the residual's).
        fuse_bias: ``(2,)``, their biases.
    """
    return _gate_shift_fuse(
        ops, x, weight, bias, fuse_weight, fuse_bias, num_segments=num_segments,
        bn_scale=bn_scale, bn_shift=bn_shift, channels=channels, channel_order=channel_order, layout=layout,
    )


def _gate_shift_fuse(
    library, x, weight, bias, fuse_weight, fuse_bias, *, num_segments=None, bn_scale=None, bn_shift=None,
    channels=None, channel_order="interleaved", layout="TSN",
) -> Tensor:
    """:func:`gate_shift_fuse` on the ops of ``library`` (see :func:`_gate_shift`)."""
    x, (weight, bias, fuse_weight, fuse_bias), (bn_scale, bn_shift) = _autocast(
        x, (weight, bias, fuse_weight, fuse_bias), (bn_scale, bn_shift)
    )
    x5 = _five_d_view(x, num_segments, layout)
    p = _check_args(x, x5.shape[2], weight, bias, bn_scale, bn_shift, channels, channel_order)
    _check_tensor("fuse_weight", fuse_weight, (2, 2, 3, 3), x)
    _check_tensor("fuse_bias", fuse_bias, (2,), x)
    if _unfused_autograd_mode(x, weight, bias, fuse_weight, fuse_bias, bn_scale, bn_shift):
        kwargs = _reference_kwargs(x, bn_scale, bn_shift, p, channel_order)
        out5 = _on_clips(reference.gate_shift_fuse, x5, weight, bias, fuse_weight, fuse_bias, **kwargs)
    else:
        out5, _, _ = library.gate_shift_fuse_forward(
            x5, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, p, channel_order == "interleaved"
        )
    return out5.flatten(0, 1) if layout == "TSN" else out5.transpose(1, 2)


def temporal_shift(x: Tensor, num_segments: int | None = None, fold_div: int = 8, *, layout: str = "TSN") -> Tensor:
    """TSM's temporal shift, fused: one pass forward, one (its adjoint) backward.

    Of ``C`` channels the first ``C // fold_div`` take the next frame's values, the
    next ``C // fold_div`` the previous frame's, the rest are unchanged; zeros at the
    clip ends (the published TSM semantics). Differentiable, twice too.

    Args:
        x: ``(B*T, C, H, W)`` (``layout="TSN"``) or ``(B, C, T, H, W)`` (``"BCTHW"``).
        num_segments: frames per clip ``T``; required for ``"TSN"``.
        fold_div: ``C // fold_div`` channels shift each way (``1``: all take the next
            frame's values, as in the published code).

    Floating tensors run the fused kernels; integer and bool tensors (no gradients) are
    shifted by plain indexing, as the published code shifts them.
    """
    return _temporal_shift(ops, x, num_segments, fold_div, layout=layout)


def _temporal_shift(library, x, num_segments=None, fold_div=8, *, layout="TSN") -> Tensor:
    """:func:`temporal_shift` on the ops of ``library`` (see :func:`_gate_shift`)."""
    x5 = _five_d_view(x, num_segments, layout)
    _check_int("fold_div", fold_div, minimum=1)
    if x.is_complex():
        raise TypeError(f"x must be a real floating, integer or bool tensor, got {x.dtype}")
    # Integer and bool tensors (which the published shift takes too) move by plain indexing.
    if x.dtype not in _FLOAT_DTYPES or _unfused_autograd_mode(x):
        out5 = _on_clips(reference.temporal_shift, x5, fold_div=fold_div)
    else:
        out5 = library.temporal_shift(x5, x5.shape[2] // fold_div, False)
    return out5.flatten(0, 1) if layout == "TSN" else out5.transpose(1, 2)
