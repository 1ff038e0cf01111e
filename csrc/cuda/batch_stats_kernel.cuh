// CUDA kernels of the per-channel batch statistics behind the GSM module's
// training-mode BatchNorm (ops/batch_stats.h).
//
// Device code only, like gate_shift_kernel.cuh: built by nvcc and, for the tests,
// by the host compiler under the CPU emulator.
//
// Statistics: one block per channel reads the channel's B*T planes once. Each
// thread sums (x - K) and (x - K)^2 in the accumulation type around K, the
// channel's first element, so a large mean does not cancel the variance away;
// the threads' sums are combined in double in a fixed tree (reproducible bits).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../common/dtypes.h"
#include "../common/compile_target.h"
#include "../common/layout.h"

namespace gateshift::cuda {

constexpr int kStatsThreads = 256;

template <typename scalar_t>
struct BatchStatsKernelParams {
  using acc_t = acc_type<scalar_t>;
  PlaneTensor<const scalar_t> x;  // (B, T, C, H, W), contiguous planes
  PlaneGrid n;
  acc_t* mean;  // (channels)
  acc_t* var;
};

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kStatsThreads) batch_stats_kernel(const BatchStatsKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(double, shared);  // [2][kStatsThreads]
  const int64_t c = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t per_channel = p.n.B * p.n.T * p.n.HW;
  const acc_t k = static_cast<acc_t>(p.x.plane(0, 0, c)[0]);
  acc_t sum = acc_t(0), squares = acc_t(0);
  for (int64_t e = tid; e < per_channel; e += kStatsThreads) {
    const int64_t plane = e / p.n.HW, i = e % p.n.HW;
    const acc_t d = static_cast<acc_t>(p.x.plane(plane / p.n.T, plane % p.n.T, c)[i]) - k;
    sum += d;
    squares += d * d;
  }
  shared[tid] = static_cast<double>(sum);
  shared[kStatsThreads + tid] = static_cast<double>(squares);
  __syncthreads();
  for (int half = kStatsThreads / 2; half > 0; half /= 2) {
    if (tid < half) {
      shared[tid] += shared[tid + half];
      shared[kStatsThreads + tid] += shared[kStatsThreads + tid + half];
    }
    __syncthreads();
  }
  if (tid == 0) {
    const double n = static_cast<double>(per_channel);
    const double shifted_mean = shared[0] / n;
    p.mean[c] = static_cast<acc_t>(static_cast<double>(k) + shifted_mean);
    // Rounding may take a constant channel's variance a hair below zero; NaN stays NaN
    // (fmax would turn it into 0), as on the CPU.
    const double var = shared[kStatsThreads] / n - shifted_mean * shifted_mean;
    p.var[c] = static_cast<acc_t>(var < 0.0 ? 0.0 : var);
  }
}

template <typename scalar_t>
struct BatchStatsBackwardKernelParams {
  using acc_t = acc_type<scalar_t>;
  PlaneTensor<const scalar_t> x;
  PlaneTensor<scalar_t> grad_x;  // (B, T, C, H, W), contiguous planes
  PlaneGrid n;
  int64_t channels, count;
  const acc_t* grad_mean;
  const acc_t* grad_var;
  const acc_t* mean;
};

// grad_x = grad_mean / N + grad_var * 2 (x - mean) / N on the first `channels`
// channels, zero on the others; one thread per element.
template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kStatsThreads)
    batch_stats_backward_kernel(const BatchStatsBackwardKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kStatsThreads + threadIdx.x;
  if (e >= p.n.B * p.n.T * p.n.C * p.n.HW) {
    return;
  }
  const int64_t i = e % p.n.HW, plane = e / p.n.HW;
  const int64_t c = plane % p.n.C, t = (plane / p.n.C) % p.n.T, b = plane / (p.n.C * p.n.T);
  acc_t g = acc_t(0);
  if (c < p.channels) {
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(p.count);
    const acc_t xv = static_cast<acc_t>(p.x.plane(b, t, c)[i]);
    g = acc_t(2) * p.grad_var[c] * inv_count * (xv - p.mean[c]) + p.grad_mean[c] * inv_count;
  }
  p.grad_x.plane(b, t, c)[i] = static_cast<scalar_t>(g);
}

}  // namespace gateshift::cuda
