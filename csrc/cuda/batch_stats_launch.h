// From tensors to launches of the batch-statistics kernels, for the real CUDA
// backend (batch_stats_cuda.cu) and the CPU emulator; see gate_shift_launch.h for
// what a Backend provides.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>

#include <limits>
#include <tuple>

#include "../gate_shift_checks.h"
#include "batch_stats_kernel.cuh"
#include "gate_shift_launch.h"

namespace gateshift::cuda {

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> batch_stats(Backend& backend, const at::Tensor& x_in, int64_t channels) {
  check_batch_stats_args(x_in, channels);
  const at::Tensor x = with_contiguous_planes(x_in);
  const auto options = x.options().dtype(accumulation_dtype(x));
  at::Tensor mean = backend.empty({channels}, options);
  at::Tensor var = backend.empty({channels}, options);
  if (x.numel() == 0) {  // as torch.var_mean of an empty tensor
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_stats_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    BatchStatsParams<scalar_t> p;
    p.x = x.const_data_ptr<scalar_t>();
    p.xs = strides_of(x);
    p.B = x.size(0);
    p.T = x.size(1);
    p.HW = x.size(3) * x.size(4);
    p.mean = mean.mutable_data_ptr<acc_t>();
    p.var = var.mutable_data_ptr<acc_t>();
    backend.launch(batch_stats_kernel<scalar_t>, channels, kStatsThreads, 2 * kStatsThreads * sizeof(double), p);
  });
  return {mean, var};
}

template <typename Backend>
at::Tensor batch_stats_backward(
    Backend& backend,
    const at::Tensor& grad_mean_in,
    const at::Tensor& grad_var_in,
    const at::Tensor& x_in,
    const at::Tensor& mean_in,
    int64_t channels) {
  const int64_t count = check_batch_stats_backward_args(grad_mean_in, grad_var_in, x_in, mean_in, channels);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor grad_x = backend.empty_output_like(x);
  if (x.numel() == 0) {
    return grad_x;
  }
  const at::Tensor grad_mean = grad_mean_in.contiguous(), grad_var = grad_var_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const int64_t blocks = (x.numel() + kStatsThreads - 1) / kStatsThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "batch_stats_backward: input too large for one grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_stats_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    BatchStatsBackwardParams<scalar_t> p;
    p.x = x.const_data_ptr<scalar_t>();
    p.xs = strides_of(x);
    p.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    p.gs = strides_of(grad_x);
    p.B = x.size(0);
    p.T = x.size(1);
    p.C = x.size(2);
    p.HW = x.size(3) * x.size(4);
    p.channels = channels;
    p.count = count;
    p.grad_mean = grad_mean.const_data_ptr<acc_t>();
    p.grad_var = grad_var.const_data_ptr<acc_t>();
    p.mean = mean.const_data_ptr<acc_t>();
    backend.launch(batch_stats_backward_kernel<scalar_t>, blocks, kStatsThreads, 0, p);
  });
  return grad_x;
}

}  // namespace gateshift::cuda
