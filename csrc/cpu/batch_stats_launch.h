// The batch statistics' channels (forward) and planes (backward) over the CPU threads.
#pragma once

#include <ATen/Parallel.h>

#include "../common/checks.h"
#include "../ops/batch_stats.h"
#include "backend.h"
#include "batch_stats_kernel.h"

namespace gateshift::cpu {

template <typename scalar_t>
void launch(Backend& /*cpu*/, const BatchStatsParams& p) {
  using acc_t = acc_type<scalar_t>;
  at::parallel_for(0, p.channels, 1, [&](int64_t begin, int64_t end) {
    batch_stats_channels<scalar_t>(
        plane_tensor<const scalar_t>(p.x), plane_grid(p.x), begin, end, p.mean.mutable_data_ptr<acc_t>(),
        p.var.mutable_data_ptr<acc_t>());
  });
}

template <typename scalar_t>
void launch(Backend& /*cpu*/, const BatchStatsBackwardParams& p) {
  using acc_t = acc_type<scalar_t>;
  const PlaneGrid n = plane_grid(p.x);
  const bool has_grad_in = p.grad_in.defined();
  const PlaneTensor<const scalar_t> grad_in = has_grad_in ? plane_tensor<const scalar_t>(p.grad_in)
                                                          : PlaneTensor<const scalar_t>{};
  at::parallel_for(0, n.B * n.T * n.C, 1, [&](int64_t begin, int64_t end) {
    batch_stats_backward_planes<scalar_t>(
        plane_tensor<const scalar_t>(p.x), has_grad_in ? &grad_in : nullptr, plane_tensor<scalar_t>(p.grad_x), n,
        p.channels, p.count,
        p.grad_mean.const_data_ptr<acc_t>(), p.grad_var.const_data_ptr<acc_t>(), p.mean.const_data_ptr<acc_t>(),
        begin, end);
  });
}

}  // namespace gateshift::cpu
