// Every operator of the gateshift library, once: its name and schema.
//
// GATESHIFT_FOR_EACH_OP(X) expands X(name, schema) for each op. library.cpp
// defines the `gateshift` library from it and the CUDA emulator (emulator/
// library.cpp) the identical `gateshift_emulated` library; each backend registers
// the op's checked entry (ops/<op>.h) for its dispatch key.
//
// Tensors named x are the 5-D (B, T, C, H, W) view described in common/layout.h.
#pragma once

// GSM (DESIGN.md section 1). Returns the output (x's layout) and the gates
// (B, T, 2, H, W) in the accumulation dtype, which backward needs.
// The backward's grad_bn_scale/grad_bn_shift are empty when bn_scale/bn_shift are absent.
#define GATESHIFT_GATE_SHIFT_OPS(X)                                                                         \
  X(gate_shift_forward,                                                                                      \
    "gate_shift_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_scale, Tensor? bn_shift, "         \
    "int channels, bool interleaved) -> (Tensor out, Tensor gates)")                                         \
  X(gate_shift_backward,                                                                                     \
    "gate_shift_backward(Tensor grad_out, Tensor x, Tensor gates, Tensor weight, Tensor? bn_scale, "         \
    "Tensor? bn_shift, int channels, bool interleaved) -> (Tensor grad_x, Tensor grad_weight, "              \
    "Tensor grad_bias, Tensor grad_bn_scale, Tensor grad_bn_shift)")

// Gate-Shift-Fuse (DESIGN.md section 2). fuse_weight (2, 2, 3, 3) and fuse_bias (2)
// are the two groups' channel convolutions. Returns the output, the gates and the
// fusion table (B, T, 3, P) in the accumulation dtype: the spatial means of the
// shifted part and of the residual, and the fusion weight f, which backward needs.
#define GATESHIFT_GATE_SHIFT_FUSE_OPS(X)                                                                    \
  X(gate_shift_fuse_forward,                                                                                 \
    "gate_shift_fuse_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_scale, Tensor? bn_shift, "    \
    "Tensor fuse_weight, Tensor fuse_bias, int channels, bool interleaved) -> "                              \
    "(Tensor out, Tensor gates, Tensor fusion)")                                                             \
  X(gate_shift_fuse_backward,                                                                                \
    "gate_shift_fuse_backward(Tensor grad_out, Tensor x, Tensor gates, Tensor fusion, Tensor weight, "       \
    "Tensor? bn_scale, Tensor? bn_shift, Tensor fuse_weight, int channels, bool interleaved) -> "            \
    "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_bn_scale, Tensor grad_bn_shift, "     \
    "Tensor grad_fuse_weight, Tensor grad_fuse_bias)")

// TSM's temporal shift: channels [0, fold) take the next frame's values, [fold,
// min(2 fold, C)) the previous frame's, zero at the clip ends; the rest are copied.
// reverse = true swaps the directions: the shift's adjoint, which is its backward.
#define GATESHIFT_TEMPORAL_SHIFT_OPS(X) \
  X(temporal_shift, "temporal_shift(Tensor x, int fold, bool reverse) -> Tensor")

// Per-channel batch statistics of the first `channels` channels over (B, T, H, W):
// mean and biased variance in the accumulation dtype (the GSM/GSF modules'
// training-mode BatchNorm folds them into bn_scale/bn_shift), and their gradient:
// grad_mean / N + grad_var * 2 (x - mean) / N for those channels, zero for the rest,
// plus grad_in where given (the rest of x's gradient, added before the one rounding
// to x's dtype: the training node's whole grad_x in one pass). batch_stats_backward_
// adds that gradient into grad_x in place, with the same bits as batch_stats_backward
// with grad_in = grad_x: the training node's backward, which owns the op's grad_x,
// needs no second tensor of x's size.
#define GATESHIFT_BATCH_STATS_OPS(X)                                                  \
  X(batch_stats, "batch_stats(Tensor x, int channels) -> (Tensor mean, Tensor var)") \
  X(batch_stats_backward,                                                            \
    "batch_stats_backward(Tensor grad_mean, Tensor grad_var, Tensor x, Tensor mean, int channels, "  \
    "Tensor? grad_in=None) -> Tensor grad_x")                                        \
  X(batch_stats_backward_,                                                           \
    "batch_stats_backward_(Tensor grad_mean, Tensor grad_var, Tensor x, Tensor mean, int channels, " \
    "Tensor(a!) grad_x) -> ()")

#define GATESHIFT_FOR_EACH_OP(X)   \
  GATESHIFT_GATE_SHIFT_OPS(X)      \
  GATESHIFT_GATE_SHIFT_FUSE_OPS(X) \
  GATESHIFT_TEMPORAL_SHIFT_OPS(X)  \
  GATESHIFT_BATCH_STATS_OPS(X)
