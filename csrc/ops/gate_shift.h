// The Gate-Shift ops (GSM, DESIGN.md section 1): their argument checks, params
// structs and one checked entry each, shared by every backend (ops/backend.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../common/dtypes.h"
#include "../common/checks.h"
#include "../common/layout.h"
#include "backend.h"

namespace gateshift {

// The gate-shift forward's arguments as the op receives them (GSF's include them).
struct GateShiftArgs {
  const at::Tensor& x;
  const at::Tensor& weight;
  const std::optional<at::Tensor>& bias;
  const std::optional<at::Tensor>& bn_scale;
  const std::optional<at::Tensor>& bn_shift;
  int64_t channels;
  bool interleaved;
};

struct GateShiftForwardParams {
  GateShiftSizes n;
  at::Tensor x;                          // (B, T, C, H, W), as frames_input gave it
  at::Tensor weight;                     // (2, P/2, 3, 3, 3), contiguous, x's dtype
  std::optional<at::Tensor> bias;        // (2), contiguous, x's dtype
  std::optional<at::Tensor> bn_scale;    // (P), contiguous, accumulation dtype
  std::optional<at::Tensor> bn_shift;    // (P), as bn_scale
  at::Tensor out;                        // x's sizes, output_strides(x)
  at::Tensor gates;                      // (B, T, 2, H, W), contiguous, accumulation dtype
  at::ScalarType scalar_type() const {  // the data's dtype, which picks the kernels
    return x.scalar_type();
  }
};

struct GateShiftBackwardParams {
  GateShiftSizes n;
  at::Tensor grad_out;                   // x's sizes, as frames_input gave it
  at::Tensor x;                          // (B, T, C, H, W), as frames_input gave it
  at::Tensor gates;                      // (B, T, 2, H, W), contiguous, accumulation dtype
  at::Tensor weight;                     // (2, P/2, 3, 3, 3), contiguous
  std::optional<at::Tensor> bn_scale;    // (P), contiguous, accumulation dtype
  std::optional<at::Tensor> bn_shift;
  at::Tensor grad_x;                     // x's sizes, output_strides(x)
  at::Tensor grad_weight, grad_bias;     // weight's dtype
  at::Tensor grad_bn_scale, grad_bn_shift;  // (P) in the dtype bn_scale came in; (0) without it
  // Set by Gate-Shift-Fuse's backward only (ops/gate_shift_fuse.h), undefined for GSM:
  // the (B, T, 4, P) table turning the output gradient dz of channel c at frame t into
  // the gradients of its residual (a_r dz + b_r, rows 0 and 1) and of its shifted part
  // (a_y dz + b_y, rows 2 and 3); GSM is a = 1, b = 0.
  at::Tensor fuse_coef;
  // CUDA only: GSF's per-clip partial sums of the fusion convolution's parameter
  // gradients (B, 20), summed into grad_fuse_weight/grad_fuse_bias by the same
  // kernel that sums the gate-shift partials.
  at::Tensor fuse_partials, grad_fuse_weight, grad_fuse_bias;
  at::ScalarType scalar_type() const {
    return x.scalar_type();
  }
};

// Checks the gate-shift arguments of any op that takes them; returns the sizes.
inline GateShiftSizes check_gate_shift_args(const char* op, const GateShiftArgs& a) {
  const at::Tensor& x = a.x;
  check_x(op, x);
  const GateShiftSizes n{x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), a.channels, a.interleaved};
  TORCH_CHECK_VALUE(
      a.channels >= 2 && a.channels % 2 == 0 && a.channels <= n.C, op,
      ": channels must be even, positive and at most C = ", n.C, ", got ", a.channels);
  TORCH_CHECK_VALUE(
      !a.interleaved || a.channels % 4 == 0, op,
      ": the interleaved channel order needs channels % 4 == 0, got channels = ", a.channels);
  check_parameter(op, "weight", a.weight, {2, a.channels / 2, 3, 3, 3}, x);
  if (a.bias.has_value()) {
    check_parameter(op, "bias", *a.bias, {2}, x);
  }
  TORCH_CHECK_VALUE(a.bn_scale.has_value() == a.bn_shift.has_value(), op,
                    ": bn_scale and bn_shift must be given together");
  if (a.bn_scale.has_value()) {
    check_parameter(op, "bn_scale", *a.bn_scale, {a.channels}, x, /*allow_accumulation_dtype=*/true);
    check_parameter(op, "bn_shift", *a.bn_shift, {a.channels}, x, /*allow_accumulation_dtype=*/true);
    TORCH_CHECK_TYPE(
        a.bn_scale->scalar_type() == a.bn_shift->scalar_type(), op, ": bn_scale (", a.bn_scale->scalar_type(),
        ") and bn_shift (", a.bn_shift->scalar_type(), ") must have the same dtype");
  }
  return n;
}

namespace ops {

template <class Backend>
GateShiftForwardParams set_gate_shift_forward_params(Backend& backend, const char* op, const GateShiftArgs& a) {
  GateShiftForwardParams p;
  p.n = check_gate_shift_args(op, a);
  p.x = frames_input(backend, a.x);
  p.weight = contiguous(backend.input(a.weight));
  p.bias = contiguous(input(backend, a.bias));
  p.bn_scale = in_accumulation_dtype(input(backend, a.bn_scale), a.x);
  p.bn_shift = in_accumulation_dtype(input(backend, a.bn_shift), a.x);
  p.out = empty_output_like(backend, p.x);
  p.gates = empty(backend, {p.n.B, p.n.T, 2, p.n.H, p.n.W}, a.x.options().dtype(accumulation_dtype(a.x.scalar_type())));
  return p;
}

// The gate-shift backward's params, from the forward's arguments (without the
// bias, which backward does not need) and what backward receives besides.
template <class Backend>
GateShiftBackwardParams set_gate_shift_backward_params(
    Backend& backend, const char* op, const GateShiftArgs& a, const at::Tensor& grad_out, const at::Tensor& gates) {
  GateShiftBackwardParams p;
  p.n = check_gate_shift_args(op, a);
  check_like_x(op, "grad_out", grad_out, a.x);
  check_accumulation_table(op, "gates", gates, std::vector<int64_t>{p.n.B, p.n.T, 2, p.n.H, p.n.W}, a.x);
  p.grad_out = frames_input(backend, grad_out);
  p.x = frames_input(backend, a.x);
  p.gates = contiguous(backend.input(gates));
  p.weight = contiguous(backend.input(a.weight));
  p.bn_scale = in_accumulation_dtype(input(backend, a.bn_scale), a.x);
  p.bn_shift = in_accumulation_dtype(input(backend, a.bn_shift), a.x);
  p.grad_x = empty_output_like(backend, p.x);
  p.grad_weight = empty(backend, a.weight.sizes(), a.weight.options());
  p.grad_bias = empty(backend, {2}, a.weight.options());
  const int64_t affine_size = a.bn_scale.has_value() ? p.n.P : 0;
  const at::TensorOptions affine = a.bn_scale.has_value() ? a.bn_scale->options() : a.weight.options();
  p.grad_bn_scale = empty(backend, {affine_size}, affine);
  p.grad_bn_shift = empty(backend, {affine_size}, affine);
  return p;
}

// The op signatures are ops/op_table.h's schemas.

template <class Backend>
std::tuple<at::Tensor, at::Tensor> gate_shift_forward(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale, const std::optional<at::Tensor>& bn_shift, int64_t channels,
    bool interleaved) {
  constexpr const char* op = "gate_shift_forward";
  Backend backend(op, x);
  const GateShiftForwardParams p =
      set_gate_shift_forward_params(backend, op, {x, weight, bias, bn_scale, bn_shift, channels, interleaved});
  if (p.x.numel() != 0) {
    backend.run(p);
  }
  return {p.out, p.gates};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gates, const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale, const std::optional<at::Tensor>& bn_shift, int64_t channels,
    bool interleaved) {
  constexpr const char* op = "gate_shift_backward";
  Backend backend(op, x);
  const GateShiftBackwardParams p = set_gate_shift_backward_params(
      backend, op, {x, weight, std::nullopt, bn_scale, bn_shift, channels, interleaved}, grad_out, gates);
  if (p.x.numel() != 0) {
    backend.run(p);
  } else {  // nothing to sum: the parameter gradients are zero
    for (const at::Tensor& t : {p.grad_weight, p.grad_bias, p.grad_bn_scale, p.grad_bn_shift}) {
      t.zero_();
    }
  }
  return {p.grad_x, p.grad_weight, p.grad_bias, p.grad_bn_scale, p.grad_bn_shift};
}

}  // namespace ops
}  // namespace gateshift
