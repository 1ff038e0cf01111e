// From the batch statistics' params (ops/batch_stats.h) to launches of their
// kernels, for the real CUDA backend (batch_stats.cu) and the CPU emulator; see
// gate_shift_launch.h for what a Device provides.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/dtypes.h"
#include "../common/checks.h"
#include "../ops/backend.h"
#include "../ops/batch_stats.h"
#include "batch_stats_kernel.cuh"
#include "launch_helpers.h"

namespace gateshift::cuda {

template <typename scalar_t, class Device>
void launch(Device& device, const BatchStatsParams& s) {
  using acc_t = acc_type<scalar_t>;
  const at::Tensor& x = s.x;
  BatchStatsKernelParams<scalar_t> p;
  p.x = device_planes<const scalar_t>(x);
  p.n = plane_grid(x);
  p.runs = (p.n.B * p.n.T * p.n.HW + kStatsRun - 1) / kStatsRun;
  const at::Tensor partials = ops::empty(device, {s.channels, p.runs, 2}, x.options().dtype(at::kDouble));
  p.partials = partials.mutable_data_ptr<double>();
  p.mean = s.mean.mutable_data_ptr<acc_t>();
  p.var = s.var.mutable_data_ptr<acc_t>();
  const size_t shared = 2 * kStatsThreads * sizeof(double);
  const int64_t blocks = s.channels * p.runs;
  check_grid(blocks, "batch_stats");
  device.launch_kernel(batch_stats_partials_kernel<scalar_t>, blocks, kStatsThreads, shared, p);
  device.launch_kernel(batch_stats_finish_kernel<scalar_t>, s.channels, kStatsThreads, shared, p);
}

template <typename scalar_t, class Device>
void launch(Device& device, const BatchStatsBackwardParams& s) {
  using acc_t = acc_type<scalar_t>;
  const at::Tensor& x = s.x;
  BatchStatsBackwardKernelParams<scalar_t> p;
  p.x = device_planes<const scalar_t>(x);
  p.grad_x = device_planes<scalar_t>(s.grad_x);
  p.has_grad_in = s.grad_in.defined();
  if (p.has_grad_in) {
    p.grad_in = device_planes<const scalar_t>(s.grad_in);
  }
  p.n = plane_grid(x);
  p.channels = s.channels;
  p.inv_count = acc_t(1) / static_cast<acc_t>(s.count);
  p.grad_mean = s.grad_mean.const_data_ptr<acc_t>();
  p.grad_var = s.grad_var.const_data_ptr<acc_t>();
  p.mean = s.mean.const_data_ptr<acc_t>();
  device.launch_kernel(
      batch_stats_backward_kernel<scalar_t>,
      grid_for(plane_warps(p.n) * 32, kStatsThreads, "batch_stats_backward"),
      kStatsThreads, 0, p);
}

}  // namespace gateshift::cuda
