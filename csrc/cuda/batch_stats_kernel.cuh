// CUDA kernels of the per-channel batch statistics behind the GSM module's
// training-mode BatchNorm (ops/batch_stats.h).
//
// Device code only, like gate_shift_kernel.cuh: built by nvcc and, for the tests,
// by the host compiler under the CPU emulator.
//
// Statistics, in two launches whose order of summation depends on the shape
// alone (reproducible bits): batch_stats_partials_kernel splits each channel's
// B*T*H*W elements into runs of kStatsRun, one block per (channel, run), so
// the whole GPU reads x once; each thread sums (x - K) and (x - K)^2 in the
// accumulation type around K, the channel's first element, so that a large mean
// does not cancel the variance away, and the block combines its threads' sums in
// double in a fixed tree. batch_stats_finish_kernel, one block per channel, sums
// the runs' partials in run order and writes the mean and variance.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../common/dtypes.h"
#include "../common/compile_target.h"
#include "../common/layout.h"
#include "element_cursor.cuh"

namespace gateshift::cuda {

constexpr int kStatsThreads = 256;

// Elements of a channel per block of batch_stats_partials_kernel: 32 per thread.
constexpr int64_t kStatsRun = int64_t(32) * kStatsThreads;

template <typename scalar_t>
struct BatchStatsKernelParams {
  using acc_t = acc_type<scalar_t>;
  DevicePlanes<const scalar_t> x;  // (B, T, C, H, W), contiguous planes
  PlaneGrid n;
  int64_t runs;       // runs of kStatsRun elements per channel
  device_ptr<double> partials;   // (channels, runs, 2): the runs' sums of (x - K) and (x - K)^2
  device_ptr<acc_t> mean;        // (channels)
  device_ptr<acc_t> var;
};

// The block's sums of every thread's (sum, squares), added in a fixed tree; they are
// left in shared[0] and shared[kStatsThreads].
GATESHIFT_DEVICE void sum_stats_over_block(device_ptr<double> shared, int tid, double sum, double squares) {
  shared[tid] = sum;
  shared[kStatsThreads + tid] = squares;
  __syncthreads();
  for (int half = kStatsThreads / 2; half > 0; half /= 2) {
    if (tid < half) {
      shared[tid] += shared[tid + half];
      shared[kStatsThreads + tid] += shared[kStatsThreads + tid + half];
    }
    __syncthreads();
  }
}

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kStatsThreads)
    batch_stats_partials_kernel(const BatchStatsKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(double, shared);  // [2][kStatsThreads]
  const int64_t block = blockIdx.x;
  const int64_t c = block / p.runs, run = block % p.runs;
  const int tid = threadIdx.x;
  // The channel's elements as a (B, T, 1, HW) grid, this block's run of it.
  const PlaneGrid channel{p.n.B, p.n.T, 1, p.n.HW};
  const int64_t count = channel.B * channel.T * channel.HW;
  const int64_t end = count < (run + 1) * kStatsRun ? count : (run + 1) * kStatsRun;
  const acc_t k = static_cast<acc_t>(p.x.plane(0, 0, c)[0]);
  acc_t sum = acc_t(0), squares = acc_t(0);
  int64_t e = run * kStatsRun + tid;
  ElementCursor at = ElementCursor::at(e, channel);
  const ElementCursor step = ElementCursor::at(kStatsThreads, channel);
  for (; e < end; e += kStatsThreads, at.advance(step, channel)) {
    const acc_t d = static_cast<acc_t>(p.x.plane(at.b, at.t, c)[at.i]) - k;
    sum += d;
    squares += d * d;
  }
  sum_stats_over_block(shared, tid, static_cast<double>(sum), static_cast<double>(squares));
  if (tid == 0) {
    p.partials[block * 2] = shared[0];
    p.partials[block * 2 + 1] = shared[kStatsThreads];
  }
}

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kStatsThreads)
    batch_stats_finish_kernel(const BatchStatsKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(double, shared);  // [2][kStatsThreads]
  const int64_t c = blockIdx.x;
  const int tid = threadIdx.x;
  double sum = 0.0, squares = 0.0;
  for (int64_t run = tid; run < p.runs; run += kStatsThreads) {
    sum += p.partials[(c * p.runs + run) * 2];
    squares += p.partials[(c * p.runs + run) * 2 + 1];
  }
  sum_stats_over_block(shared, tid, sum, squares);
  if (tid == 0) {
    const acc_t k = static_cast<acc_t>(p.x.plane(0, 0, c)[0]);
    const double n = static_cast<double>(p.n.B * p.n.T * p.n.HW);
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
  DevicePlanes<const scalar_t> x;
  DevicePlanes<const scalar_t> grad_in;  // the same, where has_grad_in
  DevicePlanes<scalar_t> grad_x;  // (B, T, C, H, W), contiguous planes
  PlaneGrid n;
  bool has_grad_in;
  int64_t channels;
  acc_t inv_count;  // 1 / N, rounded once on the host (a double division in the kernel spills on sm_86)
  device_ptr<const acc_t> grad_mean;
  device_ptr<const acc_t> grad_var;
  device_ptr<const acc_t> mean;
};

// grad_x = grad_in + grad_mean / N + grad_var * 2 (x - mean) / N on the first
// `channels` channels, grad_in on the others (grad_in = 0 without has_grad_in);
// plane-wise (element_cursor.cuh): the channel's constants once per plane.
template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kStatsThreads)
    batch_stats_backward_kernel(const BatchStatsBackwardKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  const acc_t inv_count = p.inv_count;
  for_each_plane_of_warp<kStatsThreads>(p.n, [&](const ElementCursor& at) {
    const bool gated = at.c < p.channels;
    // Grouped as the per-element formula was, for the same bits: (2 gv / N) (x - mean) + gm / N.
    const acc_t var_coef = gated ? acc_t(2) * p.grad_var[at.c] * inv_count : acc_t(0);
    const acc_t mean = gated ? p.mean[at.c] : acc_t(0);
    const acc_t mean_term = gated ? p.grad_mean[at.c] * inv_count : acc_t(0);
    const device_ptr<const scalar_t> x = p.x.plane(at.b, at.t, at.c);
    const device_ptr<const scalar_t> grad_in = p.has_grad_in ? p.grad_in.plane(at.b, at.t, at.c) : x;
    const device_ptr<scalar_t> grad_x = p.grad_x.plane(at.b, at.t, at.c);
    for_each_pixel_of_lane<acc_t>(
        p.n.HW,
        [&](int64_t i) {
          acc_t g = gated ? var_coef * (static_cast<acc_t>(x[i]) - mean) + mean_term : acc_t(0);
          if (p.has_grad_in) {
            g = static_cast<acc_t>(grad_in[i]) + g;
          }
          return g;
        },
        [&](int64_t i, acc_t g) { grad_x[i] = static_cast<scalar_t>(g); });
  });
}

}  // namespace gateshift::cuda
