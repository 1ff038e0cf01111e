"""GSM and GSF in training mode, batch statistics and fused op as ONE autograd node.

Composed from separate autograd nodes (``batch_stats``, the fold of the statistics
into the gate input's ``(scale, shift)``, the fused op), the training backward would
write two gradients of ``x``'s size, the op's and the statistics' (a per-channel
affine of ``x``), and autograd would add them: a fresh full-size tensor and two more
passes over ``x``'s size, which cost as much as the op's own backward on a CPU. Here
one node runs the op's backward, differentiates the fold per channel by hand, and adds
the statistics' gradient into the op's ``grad_x`` in place.

The math is ``folded_batch_norm``'s (gateshift.modules), which every other mode uses
(eval, SyncBatchNorm, torch.func transforms, forward-mode AD).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ops import accumulation_dtype, ops


def fold_batch_norm(mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None):
    """BatchNorm with statistics ``(mean, invstd)`` and the affine ``(weight, bias)`` (either
    may be None) as one per-channel affine of its input: ``(scale, shift)``."""
    scale = invstd if weight is None else invstd * weight
    # bias - mean * scale in one op: the fold runs on every module call, where each
    # small op from Python costs microseconds next to a sub-millisecond kernel.
    return scale, -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)


class GateShiftWithBatchStats(torch.autograd.Function):
    """``op(x, weight, bias, scale, shift, *fuse_params)`` with ``(scale, shift)`` the
    batch-statistics BatchNorm of ``x``'s first ``channels`` channels, folded.

    Inputs: ``x5`` ``(B, T, C, H, W)`` (the module's input, in its own dtype), the
    ``op_dtype`` the op runs in (autocast's, else ``x5``'s), the BN's ``weight``,
    ``bias`` (or None) and ``eps``, ``channels``, and the op's parameters: ``(weight,
    bias)`` for GSM, ``(weight, bias, fuse_weight, fuse_bias)`` for GSF.

    Outputs: the op's output, and the batch ``mean`` and biased ``var`` (no gradient
    flows back through those two: they update the running statistics).
    """

    @staticmethod
    def forward(ctx, x5: Tensor, op_dtype: torch.dtype, bn_weight, bn_bias, eps: float, channels: int, *params):
        mean, var = ops.batch_stats(x5, channels)
        invstd = torch.rsqrt(var + eps)
        scale, shift = fold_batch_norm(mean, invstd, bn_weight, bn_bias)
        acc = accumulation_dtype(op_dtype)
        if scale.dtype != acc:  # a half-precision BN's parameters
            scale, shift = scale.to(acc), shift.to(acc)
        x_op = x5 if x5.dtype == op_dtype else x5.to(op_dtype)  # autocast
        weight, bias, *fuse_params = params
        fuse = bool(fuse_params)
        forward_op = ops.gate_shift_fuse_forward if fuse else ops.gate_shift_forward
        out, gates, *fusion = forward_op(x_op, weight, bias, scale, shift, *fuse_params, channels, True)
        ctx.save_for_backward(
            x5, x_op, gates, fusion[0] if fuse else None, weight, fuse_params[0] if fuse else None,
            scale, shift, mean, invstd, bn_weight,
        )
        ctx.mark_non_differentiable(mean, var)
        ctx.fuse = fuse
        ctx.channels = channels
        ctx.has_bias = bias is not None
        ctx.bn_bias_dtype = None if bn_bias is None else bn_bias.dtype
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x5, x_op, gates, fusion, weight, fuse_weight, scale, shift, mean, invstd, bn_weight = ctx.saved_tensors
        p = ctx.channels
        if ctx.fuse:
            grad_x, grad_w, grad_b, g_scale, g_shift, grad_fw, grad_fb = ops.gate_shift_fuse_backward(
                grad_out, x_op, gates, fusion, weight, scale, shift, fuse_weight, p, True
            )
            fuse_grads = (grad_fw, grad_fb)
        else:
            grad_x, grad_w, grad_b, g_scale, g_shift = ops.gate_shift_backward(
                grad_out, x_op, gates, weight, scale, shift, p, True
            )
            fuse_grads = ()
        # shift = bias - mean * scale and scale = invstd * weight, per channel:
        g_scale, g_shift = (g if g.dtype == mean.dtype else g.to(mean.dtype) for g in (g_scale, g_shift))
        g_scale_total = torch.addcmul(g_scale, mean, g_shift, value=-1)
        g_invstd = g_scale_total if bn_weight is None else g_scale_total * bn_weight
        g_var = -0.5 * g_invstd * invstd.pow(3)
        g_mean = -g_shift * scale  # scale = invstd * weight, in mean's dtype already
        grad_x5 = None
        if ctx.needs_input_grad[0]:
            # grad_x plus the statistics' gradient, g_mean / n + 2 g_var (x - mean) / n, in
            # one pass of the batch_stats_backward_ op: in the accumulation dtype around the
            # mean, rounded once to x's dtype (rounding grad + slope * x to half precision
            # before subtracting slope * mean would cancel away the digits that matter).
            # In place: grad_x is this node's own, and a second tensor of x's size would
            # be fresh memory every step (on a CPU, page faults and cache misses that cost
            # more than the pass itself).
            grad_x5 = grad_x.to(x5.dtype) if grad_x.dtype != x5.dtype else grad_x  # autocast
            ops.batch_stats_backward_(g_mean, g_var, x5, mean, p, grad_x5)
        g_bn_weight = None if bn_weight is None else (g_scale_total * invstd).to(bn_weight.dtype)
        g_bn_bias = None if ctx.bn_bias_dtype is None else g_shift.to(ctx.bn_bias_dtype)
        return (
            grad_x5,
            None,
            g_bn_weight,
            g_bn_bias,
            None,
            None,
            grad_w,
            grad_b if ctx.has_bias else None,
            *fuse_grads,
        )
