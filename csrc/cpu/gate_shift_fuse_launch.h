// Gate-Shift-Fuse's passes (gate_shift_fuse_kernel.h) over the CPU threads.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>

#include <vector>

#include "../common/checks.h"
#include "../ops/gate_shift_fuse.h"
#include "gate_shift_fuse_kernel.h"
#include "gate_shift_launch.h"

namespace gateshift::cpu {

template <typename acc_t, typename scalar_t>
std::vector<acc_t> to_acc_vector(const at::Tensor& contiguous) {
  const std::vector<scalar_t> v = to_vector<scalar_t>(contiguous);
  return std::vector<acc_t>(v.begin(), v.end());
}

template <typename scalar_t>
void launch(Backend& cpu, const GateShiftFuseForwardParams& f) {
  using acc_t = acc_type<scalar_t>;
  const GateShiftForwardParams& g = f.gate;
  const Problem<scalar_t> p = make_problem<scalar_t>(g.n, g.x, g.weight, g.bias, g.bn_scale, g.bn_shift);
  if (needs_contiguous_copies(p.tiles(), {g.x, g.out})) {
    GateShiftFuseForwardParams copies = f;
    copies.gate.x = g.x.contiguous();
    copies.gate.out = at::empty_like(g.out, at::MemoryFormat::Contiguous);
    launch<scalar_t>(cpu, copies);
    g.out.copy_(copies.gate.out);
    return;
  }
  acc_t* const fz = f.fusion.mutable_data_ptr<acc_t>();
  const acc_t* const gates = g.gates.const_data_ptr<acc_t>();
  launch_forward_tasks<scalar_t, ForwardMode::kFuseMeans>(
      p, ForwardOutputs<scalar_t>{Frames<scalar_t>{}, g.gates.mutable_data_ptr<acc_t>(), fz});
  const std::vector<acc_t> V = to_acc_vector<acc_t, scalar_t>(f.fuse_weight);
  const std::vector<acc_t> e = to_acc_vector<acc_t, scalar_t>(f.fuse_bias);
  at::parallel_for(0, p.B * p.P, 16, [&](int64_t begin, int64_t end) {
    fusion_weight_rows(fz, V.data(), e.data(), p.T, p.P, begin, end);
  });
  const Frames<scalar_t> out = frames<scalar_t>(g.out);
  if (p.x.pixel_major && out.pixel_major) {
    at::parallel_for(0, p.B * p.T, 1, [&](int64_t begin, int64_t end) {
      combine_pixel_major_frames<scalar_t>(p, gates, fz, out, begin, end);
    });
    return;
  }
  // A pixel-major output is written a whole frame at a time (FrameWriter).
  const int64_t planes_per_step = out.pixel_major ? p.C : 1;
  at::parallel_for(0, p.B * p.T * p.C / planes_per_step, out.pixel_major ? 1 : 16, [&](int64_t begin, int64_t end) {
    combine_planes<scalar_t>(p, gates, fz, out, begin * planes_per_step, end * planes_per_step);
  });
}

// Backward passes (1) and (2): writes the fusion convolution's parameter gradients
// and returns the (B, T, 4, P) coefficient table for the gate-shift backward.
template <typename scalar_t>
at::Tensor fuse_backward_coefficients(const GateShiftFuseBackwardParams& f) {
  using acc_t = acc_type<scalar_t>;
  const GateShiftBackwardParams& g = f.gate;
  const Problem<scalar_t> p = make_problem<scalar_t>(g.n, g.x, g.weight, std::nullopt, std::nullopt, std::nullopt);
  const int64_t B = p.B, T = p.T, P = p.P;
  const at::TensorOptions acc_options = g.gates.options();
  const at::Tensor ds_table = at::empty({B, T, 1, P}, acc_options);
  acc_t* const ds = ds_table.mutable_data_ptr<acc_t>();
  const acc_t* const fz = f.fusion.const_data_ptr<acc_t>();
  at::parallel_for(0, B * T * P, 16, [&](int64_t begin, int64_t end) {
    fusion_gradient_planes<scalar_t>(
        p, frames<const scalar_t>(g.grad_out), g.gates.const_data_ptr<acc_t>(), ds,
        begin, end);
  });
  std::vector<acc_t> dV(36, acc_t(0)), de(2, acc_t(0));
  fusion_parameter_gradients(ds, fz, B, T, P, dV.data(), de.data());
  f.grad_fuse_weight.copy_(at::from_blob(dV.data(), {2, 2, 3, 3}, acc_options));  // to fuse_weight's dtype
  f.grad_fuse_bias.copy_(at::from_blob(de.data(), {2}, acc_options));
  const std::vector<acc_t> V = to_acc_vector<acc_t, scalar_t>(f.fuse_weight);
  at::Tensor coef = at::empty({B, T, 4, P}, acc_options);
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    fusion_coefficient_rows(ds, fz, V.data(), T, P, p.H * p.W, coef.mutable_data_ptr<acc_t>(), begin, end);
  });
  return coef;
}

// Gate-Shift-Fuse's whole backward: passes (1) and (2), then GSM's backward tasks
// with the coefficients (pass (3)).
template <typename scalar_t>
void launch(Backend& backend, const GateShiftFuseBackwardParams& f) {
  const GateShiftBackwardParams& g = f.gate;
  const Problem<scalar_t> p = make_problem<scalar_t>(g.n, g.x, g.weight, std::nullopt, std::nullopt, std::nullopt);
  if (needs_contiguous_copies(p.tiles(), {g.x, g.grad_out, g.grad_x})) {
    GateShiftFuseBackwardParams copies = f;
    copies.gate.x = g.x.contiguous();
    copies.gate.grad_out = g.grad_out.contiguous();
    copies.gate.grad_x = at::empty_like(g.grad_x, at::MemoryFormat::Contiguous);
    launch<scalar_t>(backend, copies);
    g.grad_x.copy_(copies.gate.grad_x);
    return;
  }
  GateShiftBackwardParams gate = f.gate;
  gate.fuse_coef = fuse_backward_coefficients<scalar_t>(f);
  launch<scalar_t>(backend, gate);
}

}  // namespace gateshift::cpu
