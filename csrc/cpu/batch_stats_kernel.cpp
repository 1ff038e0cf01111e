// CPU kernels of the per-channel batch statistics that training-mode BatchNorm
// needs (the GSM module folds them into the gate input's affine).
//
// Two passes per channel, mean first, then the sum of squared deviations, both
// summed per (H, W) plane in at::opmath_type and across planes in double: no
// E[x^2] - E[x]^2 cancellation. Channels run in parallel; each sum runs in an
// order fixed by the shape, so results do not depend on the thread count.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../gate_shift_checks.h"

namespace gateshift {
namespace {

// Strides of a 5-D (B, T, C, H, W) tensor whose planes are contiguous.
struct PlaneStrides {
  int64_t b, t, c;
  explicit PlaneStrides(const at::Tensor& t) : b(t.stride(0)), t(t.stride(1)), c(t.stride(2)) {}
};

template <typename scalar_t>
void batch_stats_channels(
    const scalar_t* x,
    PlaneStrides s,
    int64_t B,
    int64_t T,
    int64_t HW,
    int64_t c_begin,
    int64_t c_end,
    at::opmath_type<scalar_t>* mean,
    at::opmath_type<scalar_t>* var) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t count = B * T * HW;
  for (int64_t c = c_begin; c < c_end; ++c) {
    if (count == 0) {  // as torch.var_mean of an empty tensor
      mean[c] = var[c] = std::numeric_limits<acc_t>::quiet_NaN();
      continue;
    }
    double total = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* plane = x + b * s.b + t * s.t + c * s.c;
        acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < HW; ++i) {
          sum += static_cast<acc_t>(plane[i]);
        }
        total += sum;
      }
    }
    const acc_t m = static_cast<acc_t>(total / static_cast<double>(count));
    double squares = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* plane = x + b * s.b + t * s.t + c * s.c;
        acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t d = static_cast<acc_t>(plane[i]) - m;
          sum += d * d;
        }
        squares += sum;
      }
    }
    mean[c] = m;
    var[c] = static_cast<acc_t>(squares / static_cast<double>(count));
  }
}

// grad_x = grad_mean / N + grad_var * 2 (x - mean) / N on counted channels, else 0.
template <typename scalar_t>
void batch_stats_backward_planes(
    const scalar_t* x,
    PlaneStrides xs,
    scalar_t* grad_x,
    PlaneStrides gs,
    int64_t T,
    int64_t C,
    int64_t HW,
    int64_t channels,
    int64_t count,
    const at::opmath_type<scalar_t>* grad_mean,
    const at::opmath_type<scalar_t>* grad_var,
    const at::opmath_type<scalar_t>* mean,
    int64_t plane_begin,
    int64_t plane_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
    const scalar_t* xc = x + b * xs.b + t * xs.t + c * xs.c;
    scalar_t* gc = grad_x + b * gs.b + t * gs.t + c * gs.c;
    const bool counted = c < channels;
    const acc_t slope = counted ? acc_t(2) * grad_var[c] * inv_count : acc_t(0);
    const acc_t m = counted ? mean[c] : acc_t(0);
    const acc_t offset = counted ? grad_mean[c] * inv_count : acc_t(0);
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      gc[i] = static_cast<scalar_t>(slope * (static_cast<acc_t>(xc[i]) - m) + offset);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> batch_stats_cpu(const at::Tensor& x_in, int64_t channels) {
  check_batch_stats_args(x_in, channels);
  const at::Tensor x = with_contiguous_planes(x_in);
  const auto acc_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor mean = at::empty({channels}, acc_options);
  at::Tensor var = at::empty({channels}, acc_options);
  const int64_t B = x.size(0), T = x.size(1), HW = x.size(3) * x.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      batch_stats_channels<scalar_t>(
          x.const_data_ptr<scalar_t>(), PlaneStrides(x), B, T, HW, begin, end,
          mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>());
    });
  });
  return {mean, var};
}

at::Tensor batch_stats_backward_cpu(
    const at::Tensor& grad_mean_in,
    const at::Tensor& grad_var_in,
    const at::Tensor& x_in,
    const at::Tensor& mean_in,
    int64_t channels) {
  const int64_t count =
      check_batch_stats_backward_args(grad_mean_in, grad_var_in, x_in, mean_in, channels);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor grad_x = empty_output_like(x);
  if (x.numel() == 0) {
    return grad_x;
  }
  const at::Tensor grad_mean = grad_mean_in.contiguous();
  const at::Tensor grad_var = grad_var_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), HW = x.size(3) * x.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "batch_stats_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::parallel_for(0, B * T * C, 1, [&](int64_t begin, int64_t end) {
          batch_stats_backward_planes<scalar_t>(
              x.const_data_ptr<scalar_t>(), PlaneStrides(x), grad_x.mutable_data_ptr<scalar_t>(),
              PlaneStrides(grad_x), T, C, HW, channels, count,
              grad_mean.const_data_ptr<acc_t>(), grad_var.const_data_ptr<acc_t>(),
              mean.const_data_ptr<acc_t>(), begin, end);
        });
      });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("batch_stats", &batch_stats_cpu);
  m.impl("batch_stats_backward", &batch_stats_backward_cpu);
}

}  // namespace gateshift
