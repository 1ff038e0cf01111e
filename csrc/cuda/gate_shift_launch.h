// From the gate-shift params (ops/gate_shift.h) to kernel launches
// (gate_shift_kernel.cuh), for the real CUDA backend (gate_shift.cu) and the CPU
// emulator alike: a Device provides num_sms() and launch() (cuda/backend.h), so
// both run the same launch configuration and kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <type_traits>

#include "../common/dtypes.h"
#include "../common/checks.h"
#include "../common/layout.h"
#include "../ops/backend.h"
#include "../ops/gate_shift.h"
#include "gate_shift_kernel.cuh"
#include "launch_config.h"
#include "launch_helpers.h"

namespace gateshift::cuda {

template <class Device, typename scalar_t>
LaunchConfig gate_shift_launch_config(Device& device, const GateShiftSizes& n, const char* op) {
  const LaunchConfig config = make_launch_config(
      n.B, n.T, n.C, n.H, n.W, n.P, device.num_sms(), sizeof(acc_type<scalar_t>), device.min_partials_bytes());
  check_grid(config.blocks, op);
  return config;
}

// The grid of the forward (one clip per block) or of the backward.
inline GridShape grid_shape(const LaunchConfig& c, bool backward) {
  return GridShape{c.tiles(), c.tiles_w, c.chunks, c.frames_per_chunk, backward ? c.clips_per_block : 1};
}

// The forward kernel's parameters but its outputs (out, or GSF's tile sums).
template <typename scalar_t>
GateShiftForwardKernelParams<scalar_t> forward_params(const GateShiftForwardParams& f, const LaunchConfig& config) {
  using acc_t = acc_type<scalar_t>;
  GateShiftForwardKernelParams<scalar_t> p;
  p.n = f.n;
  p.grid = grid_shape(config, /*backward=*/false);
  p.x = device_planes<const scalar_t>(f.x);
  p.out = DevicePlanes<scalar_t>{nullptr, PlaneStrides{}};  // set by the caller, or unused (GSF)
  p.gates = f.gates.mutable_data_ptr<acc_t>();
  p.weight = f.weight.const_data_ptr<scalar_t>();
  p.bias = data_or_null<scalar_t>(f.bias);
  p.scale = data_or_null<acc_t>(f.bn_scale);
  p.shift = data_or_null<acc_t>(f.bn_shift);
  return p;
}

template <typename scalar_t, class Device>
void launch(Device& device, const GateShiftForwardParams& f) {
  const LaunchConfig config = gate_shift_launch_config<Device, scalar_t>(device, f.n, "gate_shift_forward");
  GateShiftForwardKernelParams<scalar_t> p = forward_params<scalar_t>(f, config);
  p.out = device_planes<scalar_t>(f.out);
  device.launch_kernel(gate_shift_forward_kernel<scalar_t>, config.blocks, kThreads, config.forward_shared, p);
}

// The gate-shift backward of GSM, or with b.fuse_coef (and b.fuse_partials) the
// gate-and-shift part of Gate-Shift-Fuse's: one main launch writing dx and
// per-block partials, then one summing the partials in a fixed order.
template <typename scalar_t, class Device>
void launch(Device& device, const GateShiftBackwardParams& b) {
  using acc_t = acc_type<scalar_t>;
  const GateShiftSizes& n = b.n;
  const LaunchConfig config = gate_shift_launch_config<Device, scalar_t>(device, n, "gate_shift_backward");
  const PartialsLayout layout{n.P};
  const at::Tensor partials = ops::empty(device, {config.backward_blocks, layout.size()}, b.gates.options());
  GateShiftBackwardKernelParams<scalar_t> p;
  p.n = n;
  p.grid = grid_shape(config, /*backward=*/true);
  p.grad_out = device_planes<const scalar_t>(b.grad_out);
  p.x = device_planes<const scalar_t>(b.x);
  p.gates = b.gates.const_data_ptr<acc_t>();
  p.weight = b.weight.const_data_ptr<scalar_t>();
  p.scale = data_or_null<acc_t>(b.bn_scale);
  p.shift = data_or_null<acc_t>(b.bn_shift);
  p.grad_x = device_planes<scalar_t>(b.grad_x);
  p.partials = partials.mutable_data_ptr<acc_t>();
  p.fuse_coef = b.fuse_coef.defined() ? b.fuse_coef.const_data_ptr<acc_t>() : nullptr;
  device.launch_kernel(
      gate_shift_backward_kernel<scalar_t>, config.backward_blocks, kThreads, config.backward_shared, p);

  const bool affine = b.bn_scale.has_value();
  const int64_t fuse_params = b.fuse_partials.defined() ? b.fuse_partials.size(1) : 0;
  const int64_t finish_blocks = grid_for(layout.size() + fuse_params, kPartialColumns, "gate_shift_backward");
  // The affine's gradients come in the dtype the affine came in: x's, or the accumulation dtype.
  const auto finish = [&](auto* affine_type) {
    using affine_t = std::remove_pointer_t<decltype(affine_type)>;
    device.launch_kernel(
        sum_partials_kernel<scalar_t, affine_t>, finish_blocks, kThreads, kThreads * sizeof(acc_t),
        device_ptr<const acc_t>(p.partials),
        config.backward_blocks, n.P, b.grad_weight.mutable_data_ptr<scalar_t>(), b.grad_bias.mutable_data_ptr<scalar_t>(),
        affine ? b.grad_bn_scale.mutable_data_ptr<affine_t>() : nullptr,
        affine ? b.grad_bn_shift.mutable_data_ptr<affine_t>() : nullptr,
        fuse_params != 0 ? b.fuse_partials.const_data_ptr<acc_t>() : nullptr, n.B, fuse_params,
        data_or_null<scalar_t>(b.grad_fuse_weight), data_or_null<scalar_t>(b.grad_fuse_bias));
  };
  if (b.grad_bn_scale.scalar_type() == b.grad_weight.scalar_type()) {
    finish(static_cast<scalar_t*>(nullptr));
  } else {
    finish(static_cast<acc_t*>(nullptr));
  }
}

}  // namespace gateshift::cuda
