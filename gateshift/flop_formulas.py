"""FLOP formulas for the fused ops, so ``torch.utils.flop_counter.FlopCounterMode``
counts a network built from gateshift's modules as it counts the published one.

The counter counts convolutions and matrix products (2 FLOPs per multiply-add) and
nothing element-wise. The published GSM's only such layer is its gating ``Conv3d``
(``2 * (P/2) * 27`` multiply-adds per position); GSF adds its two fusion ``Conv2d``
over ``(P/2, T)`` planes of two channels (18 multiply-adds per output, one output per
channel pair and frame). A backward counts twice its forward, as the counter's
convolution backward does (input gradient and weight gradient).
"""

from __future__ import annotations

import math

from torch.utils.flop_counter import register_flop_formula

from ._ops import ops


def _gate_conv_flops(x_shape, channels: int) -> int:
    b, t, _, h, w = x_shape  # the ops' (B, T, C, H, W) view
    return 2 * b * t * h * w * channels * 27


def _fusion_conv_flops(x_shape, channels: int) -> int:
    b, t = x_shape[:2]
    return 2 * b * t * channels * 18  # two groups of P/2 channels, 2 inputs x 3 x 3 each


@register_flop_formula(ops.gate_shift_forward)
def _gate_shift_forward_flops(x, weight, bias, bn_scale, bn_shift, channels, interleaved, *, out_shape=None, **_):
    return _gate_conv_flops(x, channels)


@register_flop_formula(ops.gate_shift_backward)
def _gate_shift_backward_flops(grad_out, x, *args, out_shape=None, **_):
    channels = math.prod(args[1]) // 27  # weight (2, P/2, 3, 3, 3)
    return 2 * _gate_conv_flops(x, channels)


@register_flop_formula(ops.gate_shift_fuse_forward)
def _gate_shift_fuse_forward_flops(x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, channels, interleaved,
                                   *, out_shape=None, **_):
    return _gate_conv_flops(x, channels) + _fusion_conv_flops(x, channels)


@register_flop_formula(ops.gate_shift_fuse_backward)
def _gate_shift_fuse_backward_flops(grad_out, x, gates, fusion, weight, *args, out_shape=None, **_):
    channels = math.prod(weight) // 27
    return 2 * (_gate_conv_flops(x, channels) + _fusion_conv_flops(x, channels))
