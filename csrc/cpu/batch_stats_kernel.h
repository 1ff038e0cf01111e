// CPU kernels of the per-channel batch statistics that training-mode BatchNorm
// needs (the GSM and GSF modules fold them into the gate input's affine).
//
// Two passes per channel, mean first, then the sum of squared deviations, both
// summed per (H, W) plane in the accumulation type and across planes in double:
// no E[x^2] - E[x]^2 cancellation. Each sum runs in an order fixed by the shape,
// so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "../common/dtypes.h"
#include "../common/layout.h"

namespace gateshift::cpu {

// sum of f(x) over channel c's B * T planes: per plane in acc_t, across planes in double.
template <typename scalar_t, typename F>
double sum_over_planes(PlaneTensor<const scalar_t> x, const PlaneGrid& n, int64_t c, F f) {
  using acc_t = acc_type<scalar_t>;
  double total = 0;
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t t = 0; t < n.T; ++t) {
      const scalar_t* plane = x.plane(b, t, c);
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < n.HW; ++i) {
        sum += f(static_cast<acc_t>(plane[i]));
      }
      total += sum;
    }
  }
  return total;
}

// Mean and biased variance of channels [c_begin, c_end).
template <typename scalar_t>
void batch_stats_channels(PlaneTensor<const scalar_t> x, const PlaneGrid& n, int64_t c_begin, int64_t c_end,
                          acc_type<scalar_t>* mean, acc_type<scalar_t>* var) {
  using acc_t = acc_type<scalar_t>;
  const double count = static_cast<double>(n.B * n.T * n.HW);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const acc_t m = static_cast<acc_t>(sum_over_planes(x, n, c, [](acc_t v) { return v; }) / count);
    const double squares = sum_over_planes(x, n, c, [m](acc_t v) { return (v - m) * (v - m); });
    mean[c] = m;
    var[c] = static_cast<acc_t>(squares / count);
  }
}

// grad_x = grad_mean / N + grad_var * 2 (x - mean) / N on counted channels, else 0,
// for planes [plane_begin, plane_end) of the (B, T, C) planes.
template <typename scalar_t>
void batch_stats_backward_planes(
    PlaneTensor<const scalar_t> x, PlaneTensor<scalar_t> grad_x, const PlaneGrid& n, int64_t channels, int64_t count,
    const acc_type<scalar_t>* grad_mean, const acc_type<scalar_t>* grad_var, const acc_type<scalar_t>* mean,
    int64_t plane_begin, int64_t plane_end) {
  using acc_t = acc_type<scalar_t>;
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % n.C, t = (plane / n.C) % n.T, b = plane / (n.C * n.T);
    const scalar_t* xc = x.plane(b, t, c);
    scalar_t* gc = grad_x.plane(b, t, c);
    const bool counted = c < channels;
    const acc_t slope = counted ? acc_t(2) * grad_var[c] * inv_count : acc_t(0);
    const acc_t m = counted ? mean[c] : acc_t(0);
    const acc_t offset = counted ? grad_mean[c] * inv_count : acc_t(0);
#pragma omp simd
    for (int64_t i = 0; i < n.HW; ++i) {
      gc[i] = static_cast<scalar_t>(slope * (static_cast<acc_t>(xc[i]) - m) + offset);
    }
  }
}

}  // namespace gateshift::cpu
