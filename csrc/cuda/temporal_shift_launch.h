// From tensors to a launch of the temporal-shift kernel, for the real CUDA backend
// (temporal_shift_cuda.cu) and the CPU emulator; see gate_shift_launch.h for what a
// Backend provides.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>

#include <limits>

#include "../gate_shift_checks.h"
#include "gate_shift_launch.h"
#include "temporal_shift_kernel.cuh"

namespace gateshift::cuda {

template <typename Backend>
at::Tensor temporal_shift(Backend& backend, const at::Tensor& x_in, int64_t fold, bool reverse) {
  check_temporal_shift_args(x_in, fold);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor out = backend.empty_output_like(x);
  if (x.numel() == 0) {
    return out;
  }
  const int64_t blocks = (x.numel() + kShiftThreads - 1) / kShiftThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "temporal_shift: input too large for one grid");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_shift_cuda", [&] {
    TemporalShiftParams<scalar_t> p;
    p.x = x.const_data_ptr<scalar_t>();
    p.xs = strides_of(x);
    p.out = out.mutable_data_ptr<scalar_t>();
    p.os = strides_of(out);
    p.B = x.size(0);
    p.T = x.size(1);
    p.C = x.size(2);
    p.HW = x.size(3) * x.size(4);
    p.fold = fold;
    p.first = reverse ? -1 : 1;
    backend.launch(temporal_shift_kernel<scalar_t>, blocks, kShiftThreads, 0, p);
  });
  return out;
}

}  // namespace gateshift::cuda
