// CPU kernels of the per-channel batch statistics that training-mode BatchNorm
// needs (the GSM and GSF modules fold them into the gate input's affine).
//
// One pass per channel, as the CUDA kernel: the sums of (x - K) and (x - K)^2
// around K, the channel's first element, so that a large mean does not cancel the
// variance away (K is within the data's spread), summed per (H, W) plane in the
// accumulation type and across planes in double. Each sum runs in an order fixed
// by the shape, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/compile_target.h"
#include "../common/dtypes.h"
#include "../common/layout.h"

namespace gateshift::cpu {

// Mean and biased variance of channels [c_begin, c_end).
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void batch_stats_channels(PlaneTensor<const scalar_t> x, const PlaneGrid& n,
                                                     int64_t c_begin, int64_t c_end, acc_type<scalar_t>* mean,
                                                     acc_type<scalar_t>* var) {
  using acc_t = acc_type<scalar_t>;
  const double count = static_cast<double>(n.B * n.T * n.HW);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const acc_t k = static_cast<acc_t>(x.plane(0, 0, c)[0]);
    double sum = 0, squares = 0;
    for (int64_t b = 0; b < n.B; ++b) {
      for (int64_t t = 0; t < n.T; ++t) {
        const scalar_t* plane = x.plane(b, t, c);
        acc_t plane_sum = 0, plane_squares = 0;
#pragma omp simd reduction(+ : plane_sum, plane_squares)
        for (int64_t i = 0; i < n.HW; ++i) {
          const acc_t d = static_cast<acc_t>(plane[i]) - k;
          plane_sum += d;
          plane_squares += d * d;
        }
        sum += plane_sum;
        squares += plane_squares;
      }
    }
    const double shifted_mean = sum / count;
    mean[c] = static_cast<acc_t>(static_cast<double>(k) + shifted_mean);
    // Rounding may take a constant channel's variance a hair below zero; NaN stays NaN.
    const double v = squares / count - shifted_mean * shifted_mean;
    var[c] = static_cast<acc_t>(v < 0.0 ? 0.0 : v);
  }
}

// grad_x = grad_in + grad_mean / N + grad_var * 2 (x - mean) / N on counted channels,
// grad_in on the others (grad_in = 0 where there is none, null), for planes
// [plane_begin, plane_end) of the (B, T, C) planes.
template <typename scalar_t>
void batch_stats_backward_planes(
    PlaneTensor<const scalar_t> x, const PlaneTensor<const scalar_t>* grad_in, PlaneTensor<scalar_t> grad_x,
    const PlaneGrid& n, int64_t channels, int64_t count, const acc_type<scalar_t>* grad_mean,
    const acc_type<scalar_t>* grad_var, const acc_type<scalar_t>* mean, int64_t plane_begin, int64_t plane_end) {
  using acc_t = acc_type<scalar_t>;
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % n.C, t = (plane / n.C) % n.T, b = plane / (n.C * n.T);
    const scalar_t* xc = x.plane(b, t, c);
    const scalar_t* gi = grad_in != nullptr ? grad_in->plane(b, t, c) : nullptr;
    scalar_t* gc = grad_x.plane(b, t, c);
    if (c >= channels) {  // no statistics: grad_in as it is
      for (int64_t i = 0; i < n.HW; ++i) {
        gc[i] = gi != nullptr ? gi[i] : scalar_t(0);
      }
      continue;
    }
    const acc_t slope = acc_t(2) * grad_var[c] * inv_count, m = mean[c], offset = grad_mean[c] * inv_count;
    if (gi != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < n.HW; ++i) {
        gc[i] = static_cast<scalar_t>(static_cast<acc_t>(gi[i]) + (slope * (static_cast<acc_t>(xc[i]) - m) + offset));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n.HW; ++i) {
        gc[i] = static_cast<scalar_t>(slope * (static_cast<acc_t>(xc[i]) - m) + offset);
      }
    }
  }
}

}  // namespace gateshift::cpu
