// CPU implementation of the fused Gate-Shift (GSM) ops: DESIGN.md section 1, on
// the tasks of gate_shift_tasks.h (which explains the work split and layouts).

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../gate_shift_checks.h"
#include "gate_shift_ops.h"
#include "gate_shift_tasks.h"

namespace gateshift::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> gate_shift_forward_cpu(
    const at::Tensor& x_in,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s =
      check_forward_args(x_in, weight, bias, bn_scale, bn_shift, channels, interleaved);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor out = empty_output_like(x);
  at::Tensor gates = at::empty(
      {s.batch, s.frames, 2, s.height, s.width},
      x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (x.numel() == 0) {
    return {out, gates};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Problem<scalar_t> p =
            make_problem<scalar_t>(s, interleaved, x, weight, bias, bn_scale, bn_shift);
        const ForwardOutputs<scalar_t> y{
            out.mutable_data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2),
            gates.mutable_data_ptr<acc_t>()};
        at::parallel_for(0, p.B * p.tasks_per_clip(), 1, [&](int64_t begin, int64_t end) {
          forward_tasks<scalar_t>(p, y, begin, end);
        });
      });
  return {out, gates};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward_impl(
    const at::Tensor& grad_out_in,
    const at::Tensor& x_in,
    const at::Tensor& gates_in,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved,
    const at::Tensor& fuse_coef) {
  const GateShiftSizes s = check_backward_args(
      grad_out_in, x_in, gates_in, weight, bn_scale, bn_shift, channels, interleaved);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor grad_out = with_contiguous_planes(grad_out_in);
  const at::Tensor gates = gates_in.contiguous();
  at::Tensor grad_x = empty_output_like(x);
  const int64_t P = s.gated;
  const int64_t partial_stride = P * kTaps + 2 + 2 * P;
  const at::ScalarType acc_dtype = at::toOpMathType(x.scalar_type());
  at::Tensor totals = at::empty({partial_stride}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        acc_t* tot = totals.mutable_data_ptr<acc_t>();
        std::fill(tot, tot + partial_stride, acc_t(0));
        if (x.numel() == 0) {
          return;
        }
        Problem<scalar_t> p =
            make_problem<scalar_t>(s, interleaved, x, weight, std::nullopt, bn_scale, bn_shift);
        p.gates = gates.const_data_ptr<acc_t>();
        const int64_t groups = p.B * p.groups_per_clip();
        at::Tensor partials = at::empty({groups, partial_stride}, totals.options());
        BackwardBuffers<scalar_t> g{
            grad_out.const_data_ptr<scalar_t>(), grad_out.stride(0), grad_out.stride(1),
            grad_out.stride(2), grad_x.mutable_data_ptr<scalar_t>(), grad_x.stride(0),
            grad_x.stride(1), grad_x.stride(2), partials.mutable_data_ptr<acc_t>(), partial_stride};
        if (fuse_coef.defined()) {
          g.fuse_coef = fuse_coef.const_data_ptr<acc_t>();
        }
        at::parallel_for(0, p.B * p.tasks_per_clip(), 1, [&](int64_t begin, int64_t end) {
          backward_tasks<scalar_t>(p, g, begin, end);
        });
        // Sum the groups' partials in group order: reproducible bit for bit.
        const acc_t* part = partials.const_data_ptr<acc_t>();
        for (int64_t group = 0; group < groups; ++group) {
          const acc_t* row = part + group * partial_stride;
          for (int64_t j = 0; j < partial_stride; ++j) {
            tot[j] += row[j];
          }
        }
      });
  // Copies, never views of `totals`: an op's outputs must not alias each other.
  const auto take = [&](int64_t offset, int64_t size) {
    return totals.narrow(0, offset, size).to(weight.scalar_type(), false, /*copy=*/true);
  };
  const at::Tensor grad_weight = take(0, P * kTaps).view(weight.sizes());
  const at::Tensor grad_bias = take(P * kTaps, 2);
  at::Tensor grad_scale, grad_shift;
  if (bn_scale.has_value()) {
    // In bn_scale's dtype: float32 stays float32 for half-precision x.
    grad_scale = totals.narrow(0, P * kTaps + 2, P).to(bn_scale->scalar_type(), false, /*copy=*/true);
    grad_shift = totals.narrow(0, P * kTaps + 2 + P, P).to(bn_shift->scalar_type(), false, /*copy=*/true);
  } else {
    grad_scale = at::empty({0}, weight.options());
    grad_shift = at::empty({0}, weight.options());
  }
  return {grad_x, grad_weight, grad_bias, grad_scale, grad_shift};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward_cpu(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  return gate_shift_backward_impl(
      grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved, /*fuse_coef=*/at::Tensor());
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("gate_shift_forward", &gate_shift_forward_cpu);
  m.impl("gate_shift_backward", &gate_shift_backward_cpu);
}

}  // namespace gateshift::cpu
