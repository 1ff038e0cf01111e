// The Gate-Shift-Fuse ops (GSF, DESIGN.md section 2): argument checks, params
// structs and one checked entry each, shared by every backend (ops/backend.h).
// GSF's gates and shifts are GSM's, so its params hold GSM's.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

#include "gate_shift.h"

namespace gateshift {

struct GateShiftFuseForwardParams {
  GateShiftForwardParams gate;  // gate.out is GSF's output
  at::Tensor fuse_weight;       // (2, 2, 3, 3), contiguous, x's dtype
  at::Tensor fuse_bias;         // (2), contiguous, x's dtype
  at::Tensor fusion;            // (B, T, 3, P), contiguous, accumulation dtype: ym, rm, f
  at::ScalarType scalar_type() const {
    return gate.scalar_type();
  }
};

struct GateShiftFuseBackwardParams {
  GateShiftBackwardParams gate;
  at::Tensor fusion;            // (B, T, 3, P) of the forward, contiguous
  at::Tensor fuse_weight;       // (2, 2, 3, 3), contiguous
  at::Tensor grad_fuse_weight;  // fuse_weight's dtype
  at::Tensor grad_fuse_bias;
  at::ScalarType scalar_type() const {
    return gate.scalar_type();
  }
};

namespace ops {

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_shift_fuse_forward(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale, const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight, const at::Tensor& fuse_bias, int64_t channels, bool interleaved) {
  constexpr const char* op = "gate_shift_fuse_forward";
  Backend backend(op, x);
  GateShiftFuseForwardParams p;
  p.gate = set_gate_shift_forward_params(backend, op, {x, weight, bias, bn_scale, bn_shift, channels, interleaved});
  check_parameter(op, "fuse_weight", fuse_weight, {2, 2, 3, 3}, x);
  check_parameter(op, "fuse_bias", fuse_bias, {2}, x);
  p.fuse_weight = contiguous(backend.input(fuse_weight));
  p.fuse_bias = contiguous(backend.input(fuse_bias));
  const GateShiftSizes& n = p.gate.n;
  p.fusion = empty(backend, {n.B, n.T, 3, n.P}, p.gate.gates.options());
  if (p.gate.x.numel() != 0) {
    backend.run(p);
  }
  return {p.gate.out, p.gate.gates, p.fusion};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gate_shift_fuse_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gates, const at::Tensor& fusion,
    const at::Tensor& weight, const std::optional<at::Tensor>& bn_scale, const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight, int64_t channels, bool interleaved) {
  constexpr const char* op = "gate_shift_fuse_backward";
  Backend backend(op, x);
  GateShiftFuseBackwardParams p;
  p.gate = set_gate_shift_backward_params(
      backend, op, {x, weight, std::nullopt, bn_scale, bn_shift, channels, interleaved}, grad_out, gates);
  check_parameter(op, "fuse_weight", fuse_weight, {2, 2, 3, 3}, x);
  const GateShiftSizes& n = p.gate.n;
  check_accumulation_table(op, "fusion", fusion, std::vector<int64_t>{n.B, n.T, 3, n.P}, x);
  p.fusion = contiguous(backend.input(fusion));
  p.fuse_weight = contiguous(backend.input(fuse_weight));
  p.grad_fuse_weight = empty(backend, {2, 2, 3, 3}, fuse_weight.options());
  p.grad_fuse_bias = empty(backend, {2}, fuse_weight.options());
  const GateShiftBackwardParams& g = p.gate;
  if (g.x.numel() != 0) {
    backend.run(p);
  } else {  // nothing to sum: the parameter gradients are zero
    for (const at::Tensor& t :
         {g.grad_weight, g.grad_bias, g.grad_bn_scale, g.grad_bn_shift, p.grad_fuse_weight, p.grad_fuse_bias}) {
      t.zero_();
    }
  }
  return {g.grad_x, g.grad_weight, g.grad_bias, g.grad_bn_scale, g.grad_bn_shift, p.grad_fuse_weight,
          p.grad_fuse_bias};
}

}  // namespace ops
}  // namespace gateshift
