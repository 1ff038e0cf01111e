// From the temporal shift's params (ops/temporal_shift.h) to a launch of its
// kernel, for the real CUDA backend (temporal_shift.cu) and the CPU emulator; see
// gate_shift_launch.h for what a Device provides.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/checks.h"
#include "../ops/temporal_shift.h"
#include "launch_helpers.h"
#include "temporal_shift_kernel.cuh"

namespace gateshift::cuda {

template <typename scalar_t, class Device>
void launch(Device& device, const TemporalShiftParams& s) {
  const at::Tensor& x = s.x;
  TemporalShiftKernelParams<scalar_t> p;
  p.x = device_planes<const scalar_t>(x);
  p.out = device_planes<scalar_t>(s.out);
  p.n = plane_grid(x);
  p.fold = s.fold;
  p.first = s.reverse ? -1 : 1;
  device.launch_kernel(
      temporal_shift_kernel<scalar_t>, grid_for(plane_warps(p.n) * 32, kShiftThreads, "temporal_shift"),
      kShiftThreads, 0, p);
}

}  // namespace gateshift::cuda
