// The temporal shift's planes over the CPU threads.
#pragma once

#include <ATen/Parallel.h>

#include "../common/checks.h"
#include "../ops/temporal_shift.h"
#include "backend.h"
#include "temporal_shift_kernel.h"

namespace gateshift::cpu {

template <typename scalar_t>
void launch(Backend& /*cpu*/, const TemporalShiftParams& p) {
  const at::Tensor& x = p.x;
  const int64_t T = x.size(1), C = x.size(2), HW = x.size(3) * x.size(4);
  at::parallel_for(0, x.size(0) * T * C, 64, [&](int64_t begin, int64_t end) {
    shift_planes<scalar_t>(
        plane_tensor<const scalar_t>(x), plane_tensor<scalar_t>(p.out), T, C, HW, p.fold, p.reverse ? -1 : 1, begin, end);
  });
}

}  // namespace gateshift::cpu
