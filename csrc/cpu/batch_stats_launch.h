// The batch statistics' channels (forward) and planes (backward) over the CPU threads.
#pragma once

#include <ATen/Parallel.h>

#include <vector>

#include "../common/checks.h"
#include "../ops/batch_stats.h"
#include "backend.h"
#include "batch_stats_kernel.h"

namespace gateshift::cpu {

template <typename scalar_t>
void launch(Backend& /*cpu*/, const BatchStatsParams& p) {
  using acc_t = acc_type<scalar_t>;
  const PlaneGrid n = plane_grid(p.x);
  acc_t* const mean = p.mean.mutable_data_ptr<acc_t>();
  acc_t* const var = p.var.mutable_data_ptr<acc_t>();
  const Frames<const scalar_t> x = frames<const scalar_t>(p.x);
  if (!x.pixel_major) {
    at::parallel_for(0, p.channels, 1, [&](int64_t begin, int64_t end) {
      batch_stats_channels<scalar_t>(plane_tensor<const scalar_t>(p.x), n, begin, end, mean, var);
    });
    return;
  }
  // Pixel-major: the plane sums frame by frame, then per channel (batch_stats_kernel.h).
  std::vector<acc_t> moments(static_cast<size_t>(n.B * n.T * p.channels * 2));
  std::vector<acc_t> first(static_cast<size_t>(p.channels));
  for (int64_t c = 0; c < p.channels; ++c) {
    first[c] = static_cast<acc_t>(x.data[c]);
  }
  at::parallel_for(0, n.B * n.T, 1, [&](int64_t begin, int64_t end) {
    batch_stats_plane_moments<scalar_t>(x, n.T, p.channels, moments.data(), begin, end);
  });
  at::parallel_for(0, p.channels, 16, [&](int64_t begin, int64_t end) {
    batch_stats_from_moments(moments.data(), first.data(), n, p.channels, begin, end, mean, var);
  });
}

template <typename scalar_t>
void launch(Backend& /*cpu*/, const BatchStatsBackwardParams& p) {
  using acc_t = acc_type<scalar_t>;
  const PlaneGrid n = plane_grid(p.x);
  const bool has_grad_in = p.grad_in.defined();
  const Frames<const scalar_t> grad_in = has_grad_in ? frames<const scalar_t>(p.grad_in) : Frames<const scalar_t>{};
  const Frames<scalar_t> grad_x = frames<scalar_t>(p.grad_x);
  const Frames<const scalar_t> x = frames<const scalar_t>(p.x);
  if (x.pixel_major && grad_x.pixel_major && (!has_grad_in || grad_in.pixel_major)) {
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(p.count);
    const acc_t* grad_mean = p.grad_mean.const_data_ptr<acc_t>();
    const acc_t* grad_var = p.grad_var.const_data_ptr<acc_t>();
    std::vector<acc_t> slope(p.channels), offset(p.channels);
    for (int64_t c = 0; c < p.channels; ++c) {
      slope[c] = acc_t(2) * grad_var[c] * inv_count;
      offset[c] = grad_mean[c] * inv_count;
    }
    at::parallel_for(0, n.B * n.T, 1, [&](int64_t begin, int64_t end) {
      batch_stats_backward_pixel_major_frames<scalar_t>(
          x, has_grad_in ? &grad_in : nullptr, grad_x, n.T, p.channels, slope.data(), p.mean.const_data_ptr<acc_t>(),
          offset.data(), begin, end);
    });
    return;
  }
  // A pixel-major grad_x is written a whole frame at a time (FrameWriter).
  const int64_t planes_per_step = grad_x.pixel_major ? n.C : 1;
  at::parallel_for(0, n.B * n.T * n.C / planes_per_step, 1, [&](int64_t begin, int64_t end) {
    batch_stats_backward_planes<scalar_t>(
        x, has_grad_in ? &grad_in : nullptr, grad_x, n, p.channels, p.count,
        p.grad_mean.const_data_ptr<acc_t>(), p.grad_var.const_data_ptr<acc_t>(), p.mean.const_data_ptr<acc_t>(),
        begin * planes_per_step, end * planes_per_step);
  });
}

}  // namespace gateshift::cpu
