// Operator schemas, as strings, so that the gateshift library (library.cpp) and
// the emulated CUDA library of the tests (emulator/) declare identical ops.
#pragma once

namespace gateshift::schemas {

// Returns the output (same layout as x) and the gates (B, T, 2, H, W) in the
// accumulation dtype (float32 for half types), which backward needs.
inline constexpr const char* kGateShiftForward =
    "gate_shift_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_scale, "
    "Tensor? bn_shift, int channels, bool interleaved) -> (Tensor out, Tensor gates)";

// grad_bn_scale/grad_bn_shift are empty when bn_scale/bn_shift are absent.
inline constexpr const char* kGateShiftBackward =
    "gate_shift_backward(Tensor grad_out, Tensor x, Tensor gates, Tensor weight, "
    "Tensor? bn_scale, Tensor? bn_shift, int channels, bool interleaved) -> "
    "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_bn_scale, "
    "Tensor grad_bn_shift)";

// Per-channel batch statistics of the first `channels` channels of x (B, T, C, H, W)
// over (B, T, H, W): mean and biased variance, in the accumulation dtype. The
// training-mode BatchNorm of the GSM module folds them into bn_scale/bn_shift.
inline constexpr const char* kBatchStats = "batch_stats(Tensor x, int channels) -> (Tensor mean, Tensor var)";

// d/dx of (mean, var): grad_mean / N + grad_var * 2 (x - mean) / N for the first
// `channels` channels, zero for the rest.
inline constexpr const char* kBatchStatsBackward =
    "batch_stats_backward(Tensor grad_mean, Tensor grad_var, Tensor x, Tensor mean, "
    "int channels) -> Tensor grad_x";

// Gate-Shift-Fuse (DESIGN.md section 2). fuse_weight (2, 2, 3, 3) and fuse_bias (2)
// are the two groups' channel convolutions. Returns the output, the gates and the
// fusion table (B, T, 3, P) in the accumulation dtype: the spatial means of the
// shifted part and of the residual, and the fusion weight f, which backward needs.
inline constexpr const char* kGateShiftFuseForward =
    "gate_shift_fuse_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_scale, "
    "Tensor? bn_shift, Tensor fuse_weight, Tensor fuse_bias, int channels, bool interleaved) -> "
    "(Tensor out, Tensor gates, Tensor fusion)";

inline constexpr const char* kGateShiftFuseBackward =
    "gate_shift_fuse_backward(Tensor grad_out, Tensor x, Tensor gates, Tensor fusion, Tensor weight, "
    "Tensor? bn_scale, Tensor? bn_shift, Tensor fuse_weight, int channels, bool interleaved) -> "
    "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_bn_scale, Tensor grad_bn_shift, "
    "Tensor grad_fuse_weight, Tensor grad_fuse_bias)";

// TSM's temporal shift of x (B, T, C, H, W): channels [0, fold) take the next
// frame's values, [fold, min(2 fold, C)) the previous frame's, zero at the clip ends;
// the rest are copied. reverse = true swaps the directions: the shift's adjoint, its
// backward.
inline constexpr const char* kTemporalShift = "temporal_shift(Tensor x, int fold, bool reverse) -> Tensor";

}  // namespace gateshift::schemas
