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
#include <cmath>
#include <cstdint>

#include "../common/compile_target.h"
#include "../common/dtypes.h"
#include "../common/layout.h"
#include "element_conversion.h"
#include "frame_staging.h"

namespace gateshift::cpu {

// The sums of (x - k) and (x - k)^2 over one plane.
template <typename scalar_t, typename acc_t>
GATESHIFT_ALWAYS_INLINE void plane_moments(const scalar_t* plane, int64_t HW, acc_t k, acc_t& sum, acc_t& squares) {
  acc_t plane_sum = 0, plane_squares = 0;
#pragma omp simd reduction(+ : plane_sum, plane_squares)
  for (int64_t i = 0; i < HW; ++i) {
    const acc_t d = widen<acc_t>(plane[i]) - k;
    plane_sum += d;
    plane_squares += d * d;
  }
  sum = plane_sum;
  squares = plane_squares;
}

// A channel's mean and biased variance from the sums around k of its `count` values.
template <typename acc_t>
void finish_channel(acc_t k, double sum, double squares, double count, acc_t& mean, acc_t& var) {
  const double shifted_mean = sum / count;
  mean = static_cast<acc_t>(static_cast<double>(k) + shifted_mean);
  // Rounding may take a constant channel's variance a hair below zero; NaN stays NaN.
  // An explicit fma: the compiler contracts a * b - c where it may (the AVX2 and
  // AVX-512 clones), and both layouts' paths must round the same way.
  const double v = std::fma(-shifted_mean, shifted_mean, squares / count);
  var = static_cast<acc_t>(v < 0.0 ? 0.0 : v);
}

// Mean and biased variance of channels [c_begin, c_end) of x with contiguous planes.
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void batch_stats_channels(PlaneTensor<const scalar_t> x, const PlaneGrid& n,
                                                     int64_t c_begin, int64_t c_end, acc_type<scalar_t>* mean,
                                                     acc_type<scalar_t>* var) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const acc_t k = widen<acc_t>(x.plane(0, 0, c)[0]);
    double sum = 0, squares = 0;
    for (int64_t b = 0; b < n.B; ++b) {
      for (int64_t t = 0; t < n.T; ++t) {
        acc_t plane_sum, plane_squares;
        plane_moments(x.plane(b, t, c), n.HW, k, plane_sum, plane_squares);
        sum += plane_sum;
        squares += plane_squares;
      }
    }
    finish_channel(k, sum, squares, static_cast<double>(n.B * n.T * n.HW), mean[c], var[c]);
  }
}

// Pixel-major x (channels_last), in two steps with the same sums as above: the
// plane sums of frames [frame_begin, frame_end) (b * T + t), from staged planes,
// into `moments` ((B * T, channels, 2)); then, per channel, their sum in frame order.
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void batch_stats_plane_moments(
    const Frames<const scalar_t>& x, int64_t T, int64_t channels, acc_type<scalar_t>* moments,
    int64_t frame_begin, int64_t frame_end) {
  using acc_t = acc_type<scalar_t>;
  FrameReader<scalar_t> x_frames(x, T, 1);
  for (int64_t frame = frame_begin; frame < frame_end; ++frame) {
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t k = widen<acc_t>(x.data[c]);  // the channel's first element
      acc_t* m = moments + (frame * channels + c) * 2;
      plane_moments(x_frames.plane(frame / T, frame % T, c), x.HW, k, m[0], m[1]);
    }
  }
}

template <typename acc_t>
void batch_stats_from_moments(const acc_t* moments, const acc_t* first, const PlaneGrid& n, int64_t channels,
                              int64_t c_begin, int64_t c_end, acc_t* mean, acc_t* var) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    double sum = 0, squares = 0;
    for (int64_t frame = 0; frame < n.B * n.T; ++frame) {
      sum += moments[(frame * channels + c) * 2];
      squares += moments[(frame * channels + c) * 2 + 1];
    }
    finish_channel(first[c], sum, squares, static_cast<double>(n.B * n.T * n.HW), mean[c], var[c]);
  }
}

// One counted channel's plane of the gradient below: gc = gi + slope (xc - m) + offset.
template <typename scalar_t, typename acc_t>
GATESHIFT_ALWAYS_INLINE void batch_stats_backward_plane(
    const scalar_t* xc, const scalar_t* gi, scalar_t* gc, int64_t HW, acc_t slope, acc_t m, acc_t offset) {
  if (gi != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      store_rounded(gc[i], widen<acc_t>(gi[i]) + (slope * (widen<acc_t>(xc[i]) - m) + offset));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      store_rounded(gc[i], slope * (widen<acc_t>(xc[i]) - m) + offset);
    }
  }
}

// grad_x = grad_in + grad_mean / N + grad_var * 2 (x - mean) / N on counted channels,
// grad_in on the others (grad_in = 0 where there is none, null), for planes
// [plane_begin, plane_end) of the (B, T, C) planes: whole frames when grad_x is
// pixel-major (FrameWriter).
template <typename scalar_t>
void batch_stats_backward_planes(
    const Frames<const scalar_t>& x, const Frames<const scalar_t>* grad_in, const Frames<scalar_t>& grad_x,
    const PlaneGrid& n, int64_t channels, int64_t count, const acc_type<scalar_t>* grad_mean,
    const acc_type<scalar_t>* grad_var, const acc_type<scalar_t>* mean, int64_t plane_begin, int64_t plane_end) {
  using acc_t = acc_type<scalar_t>;
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(count);
  FrameReader<scalar_t> x_frames(x, n.T, 1);
  FrameReader<scalar_t> grad_in_frames(grad_in != nullptr ? *grad_in : x, n.T, 1);
  FrameWriter<scalar_t> grad_x_frames(grad_x);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % n.C, t = (plane / n.C) % n.T, b = plane / (n.C * n.T);
    const scalar_t* gi = grad_in != nullptr ? grad_in_frames.plane(b, t, c) : nullptr;
    scalar_t* gc = grad_x_frames.plane(b, t, c);
    if (c >= channels) {  // no statistics: grad_in as it is
      if (gc != gi) {  // in place (batch_stats_backward_), it is there already
        for (int64_t i = 0; i < n.HW; ++i) {
          gc[i] = gi != nullptr ? gi[i] : scalar_t(0);
        }
      }
    } else {
      batch_stats_backward_plane(x_frames.plane(b, t, c), gi, gc, n.HW, acc_t(2) * grad_var[c] * inv_count, mean[c],
                                 grad_mean[c] * inv_count);
    }
    if (c == n.C - 1) {
      grad_x_frames.finish(b, t);
    }
  }
}

// The same for frames [frame_begin, frame_end) (b * T + t) when x, grad_x and grad_in
// (if any) are all pixel-major: per pixel, a run over the channels, nothing staged.
// `slope`, `m` and `offset` are the per-channel factors of batch_stats_backward_plane,
// so every element is computed as there.
template <typename scalar_t>
void batch_stats_backward_pixel_major_frames(
    const Frames<const scalar_t>& x, const Frames<const scalar_t>* grad_in, const Frames<scalar_t>& grad_x,
    int64_t T, int64_t channels, const acc_type<scalar_t>* slope, const acc_type<scalar_t>* m,
    const acc_type<scalar_t>* offset, int64_t frame_begin, int64_t frame_end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = x.C;
  for (int64_t frame = frame_begin; frame < frame_end; ++frame) {
    const int64_t b = frame / T, t = frame % T;
    const scalar_t* xf = x.data + x.strides.plane(b, t, 0);
    const scalar_t* gf = grad_in != nullptr ? grad_in->data + grad_in->strides.plane(b, t, 0) : nullptr;
    scalar_t* of = grad_x.data + grad_x.strides.plane(b, t, 0);
    for (int64_t i = 0; i < x.HW; ++i) {
      const scalar_t* xp = xf + i * C;
      scalar_t* op = of + i * C;
      if (gf != nullptr) {
        const scalar_t* gp = gf + i * C;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          store_rounded(op[c], widen<acc_t>(gp[c]) + (slope[c] * (widen<acc_t>(xp[c]) - m[c]) + offset[c]));
        }
        if (gp != op) {  // in place (batch_stats_backward_): the rest is already there
          std::copy(gp + channels, gp + C, op + channels);
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          store_rounded(op[c], slope[c] * (widen<acc_t>(xp[c]) - m[c]) + offset[c]);
        }
        std::fill(op + channels, op + C, scalar_t(0));
      }
    }
  }
}

}  // namespace gateshift::cpu
