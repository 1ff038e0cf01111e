// From the Gate-Shift-Fuse params (ops/gate_shift_fuse.h) to the launches of
// gate_shift_fuse_kernel.cuh, for the real CUDA backend (gate_shift_fuse.cu) and
// the CPU emulator; see gate_shift_launch.h for what a Device provides. Three
// launches forward; backward two here, then the gate-shift backward's two.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/dtypes.h"
#include "../common/checks.h"
#include "../ops/backend.h"
#include "../ops/gate_shift_fuse.h"
#include "gate_shift_fuse_kernel.cuh"
#include "gate_shift_launch.h"
#include "launch_helpers.h"

namespace gateshift::cuda {

template <typename scalar_t, class Device>
void launch(Device& device, const GateShiftFuseForwardParams& f) {
  using acc_t = acc_type<scalar_t>;
  constexpr const char* op = "gate_shift_fuse_forward";
  const GateShiftForwardParams& g = f.gate;
  const GateShiftSizes& n = g.n;
  const LaunchConfig config = gate_shift_launch_config<Device, scalar_t>(device, n, op);
  const at::Tensor tile_sums = ops::empty(device, {n.B, n.T, config.tiles(), 2, n.P}, g.gates.options());
  GateShiftForwardKernelParams<scalar_t> gate_pass = forward_params<scalar_t>(g, config);
  gate_pass.tile_sums = tile_sums.mutable_data_ptr<acc_t>();
  device.launch_kernel(gate_shift_forward_kernel<scalar_t, true>, config.blocks, kThreads, config.forward_shared, gate_pass);

  FuseWeightsParams<scalar_t> weights_pass;
  weights_pass.T = n.T;
  weights_pass.P = n.P;
  weights_pass.tiles = config.tiles();
  weights_pass.HW = n.H * n.W;
  weights_pass.tile_sums = tile_sums.const_data_ptr<acc_t>();
  weights_pass.fusion = f.fusion.mutable_data_ptr<acc_t>();
  weights_pass.fuse_weight = f.fuse_weight.const_data_ptr<scalar_t>();
  weights_pass.fuse_bias = f.fuse_bias.const_data_ptr<scalar_t>();
  device.launch_kernel(
      fuse_weights_kernel<scalar_t>, grid_for(2 * n.B * kFuseThreads, kFuseThreads, op), kFuseThreads,
      (kFuseParams + 2 * kTileStrands * 32) * sizeof(acc_t), weights_pass);

  FuseCombineParams<scalar_t> combine_pass;
  combine_pass.n = n;
  combine_pass.x = device_planes<const scalar_t>(g.x);
  combine_pass.out = device_planes<scalar_t>(g.out);
  combine_pass.gates = g.gates.const_data_ptr<acc_t>();
  combine_pass.fusion = f.fusion.const_data_ptr<acc_t>();
  device.launch_kernel(
      fuse_combine_kernel<scalar_t>, grid_for(plane_warps(plane_grid(g.x)) * 32, kFuseThreads, op), kFuseThreads, 0,
      combine_pass);
}

// Backward passes (1) and (2): returns the gate-shift backward's params with GSF's
// coefficients and fusion partials set.
template <typename scalar_t, class Device>
GateShiftBackwardParams fuse_backward_coefficients(Device& device, const GateShiftFuseBackwardParams& f) {
  using acc_t = acc_type<scalar_t>;
  constexpr const char* op = "gate_shift_fuse_backward";
  GateShiftBackwardParams g = f.gate;
  const GateShiftSizes& n = g.n;
  const at::TensorOptions acc_options = g.gates.options();
  const at::Tensor ds = ops::empty(device, {n.B, n.T, 1, n.P}, acc_options);
  g.fuse_coef = ops::empty(device, {n.B, n.T, 4, n.P}, acc_options);
  g.fuse_partials = ops::empty(device, {n.B, kFuseParams}, acc_options);
  g.grad_fuse_weight = f.grad_fuse_weight;
  g.grad_fuse_bias = f.grad_fuse_bias;

  FuseGradientParams<scalar_t> gradient_pass;
  gradient_pass.n = n;
  gradient_pass.grad_out = device_planes<const scalar_t>(g.grad_out);
  gradient_pass.x = device_planes<const scalar_t>(g.x);
  gradient_pass.gates = g.gates.const_data_ptr<acc_t>();
  gradient_pass.df = ds.mutable_data_ptr<acc_t>();
  device.launch_kernel(
      fuse_gradient_kernel<scalar_t>, grid_for(n.B * n.T * n.P * 32, kFuseThreads, op), kFuseThreads, 0,
      gradient_pass);

  FuseBackwardParams<scalar_t> fuse_pass;
  fuse_pass.T = n.T;
  fuse_pass.P = n.P;
  fuse_pass.HW = n.H * n.W;
  fuse_pass.fusion = f.fusion.const_data_ptr<acc_t>();
  fuse_pass.ds = ds.mutable_data_ptr<acc_t>();
  fuse_pass.coef = g.fuse_coef.mutable_data_ptr<acc_t>();
  fuse_pass.fuse_weight = f.fuse_weight.const_data_ptr<scalar_t>();
  fuse_pass.fuse_partials = g.fuse_partials.mutable_data_ptr<acc_t>();
  device.launch_kernel(
      fuse_backward_kernel<scalar_t>, grid_for(2 * n.B * kFuseThreads, kFuseThreads, op), kFuseThreads,
      36 * sizeof(acc_t), fuse_pass);
  return g;
}

// Gate-Shift-Fuse's whole backward: its passes (1) and (2), then the gate-shift
// backward with their coefficients and partials, run by the device.
template <typename scalar_t, class Device>
void launch(Device& device, const GateShiftFuseBackwardParams& f) {
  device.run(fuse_backward_coefficients<scalar_t>(device, f));
}

}  // namespace gateshift::cuda
