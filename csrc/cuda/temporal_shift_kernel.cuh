// CUDA kernel of TSM's temporal shift (ops/temporal_shift.h). Device code
// only: built by nvcc and, for the tests, under the CPU emulator.
//
// kElementsPerThread output elements per thread, a grid apart (element_cursor.cuh),
// consecutive threads on consecutive pixels (coalesced): for each, a read
// of the source frame's element (or zero at a clip end) and a write, the 8-byte
// floor per element in float32 in both directions.
#pragma once

#include <cstdint>

#include "../common/dtypes.h"
#include "../common/compile_target.h"
#include "../common/layout.h"
#include "element_cursor.cuh"

namespace gateshift::cuda {

constexpr int kShiftThreads = 256;

template <typename scalar_t>
struct TemporalShiftKernelParams {
  DevicePlanes<const scalar_t> x;
  DevicePlanes<scalar_t> out;
  PlaneGrid n;
  int64_t fold;
  int64_t first;  // frame step of the first fold: +1 (forward) or -1 (reverse, the adjoint)
};

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kShiftThreads) temporal_shift_kernel(const TemporalShiftKernelParams<scalar_t> p) {
  const int64_t numel = p.n.B * p.n.T * p.n.C * p.n.HW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kShiftThreads;
  int64_t e = static_cast<int64_t>(blockIdx.x) * kShiftThreads + threadIdx.x;
  if (e >= numel) {
    return;
  }
  ElementCursor at = ElementCursor::at(e, p.n);
  const ElementCursor step = ElementCursor::at(stride, p.n);
  for (; e < numel; e += stride, at.advance(step, p.n)) {
    const int64_t shift = at.c < p.fold ? p.first : (at.c < 2 * p.fold ? -p.first : 0);
    const int64_t ts = at.t + shift;
    p.out.plane(at.b, at.t, at.c)[at.i] = ts >= 0 && ts < p.n.T ? p.x.plane(at.b, ts, at.c)[at.i] : scalar_t(0);
  }
}

}  // namespace gateshift::cuda
