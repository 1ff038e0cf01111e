// The gateshift operator library: every op's schema, defined once for all backends.
//
// Backends add kernels with TORCH_LIBRARY_IMPL in their own files (cpu/, cuda/);
// autograd and the fake (meta) implementations are registered from Python
// (gateshift/_ops.py).
//
// Both ops take x as a 5-D view (B, T, C, H, W). The Python layer builds that
// view from the user's (B*T, C, H, W) tensor, or from a (B, C, T, H, W) tensor by
// a permute, so one kernel serves both layouts without copies: kernels need only
// each (H, W) plane to be contiguous and use 64-bit strides for B, T and C.

#include <torch/library.h>

TORCH_LIBRARY(gateshift, m) {
  // Returns the output (same layout as x) and the gates (B, T, 2, H, W) in the
  // accumulation dtype (float32 for half types), which backward needs.
  m.def(
      "gate_shift_forward(Tensor x, Tensor weight, Tensor? bias, Tensor? bn_scale, "
      "Tensor? bn_shift, int channels, bool interleaved) -> (Tensor out, Tensor gates)",
      {at::Tag::pt2_compliant_tag});
  // grad_bn_scale/grad_bn_shift are empty when bn_scale/bn_shift are absent.
  m.def(
      "gate_shift_backward(Tensor grad_out, Tensor x, Tensor gates, Tensor weight, "
      "Tensor? bn_scale, Tensor? bn_shift, int channels, bool interleaved) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_bn_scale, "
      "Tensor grad_bn_shift)",
      {at::Tag::pt2_compliant_tag});

  // Per-channel batch statistics of the first `channels` channels of x (B, T, C, H, W)
  // over (B, T, H, W): mean and biased variance, in the accumulation dtype. The
  // training-mode BatchNorm of the GSM module folds them into bn_scale/bn_shift.
  m.def(
      "batch_stats(Tensor x, int channels) -> (Tensor mean, Tensor var)",
      {at::Tag::pt2_compliant_tag});
  // d/dx of (mean, var): grad_mean / N + grad_var * 2 (x - mean) / N for the
  // first `channels` channels, zero for the rest.
  m.def(
      "batch_stats_backward(Tensor grad_mean, Tensor grad_var, Tensor x, Tensor mean, "
      "int channels) -> Tensor grad_x",
      {at::Tag::pt2_compliant_tag});
}
