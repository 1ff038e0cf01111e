// CUDA kernel of TSM's temporal shift (ops/temporal_shift.h). Device code
// only: built by nvcc and, for the tests, under the CPU emulator.
//
// One thread per output element, consecutive threads along W (coalesced): a read
// of the source frame's element (or zero at a clip end) and a write, the 8-byte
// floor per element in float32 in both directions.
#pragma once

#include <cstdint>

#include "../common/dtypes.h"
#include "../common/compile_target.h"
#include "../common/layout.h"

namespace gateshift::cuda {

constexpr int kShiftThreads = 256;

template <typename scalar_t>
struct TemporalShiftKernelParams {
  PlaneTensor<const scalar_t> x;
  PlaneTensor<scalar_t> out;
  PlaneGrid n;
  int64_t fold;
  int64_t first;  // frame step of the first fold: +1 (forward) or -1 (reverse, the adjoint)
};

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kShiftThreads) temporal_shift_kernel(const TemporalShiftKernelParams<scalar_t> p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kShiftThreads + threadIdx.x;
  if (e >= p.n.B * p.n.T * p.n.C * p.n.HW) {
    return;
  }
  const int64_t i = e % p.n.HW, plane = e / p.n.HW;
  const int64_t c = plane % p.n.C, t = (plane / p.n.C) % p.n.T, b = plane / (p.n.C * p.n.T);
  const int64_t step = c < p.fold ? p.first : (c < 2 * p.fold ? -p.first : 0);
  const int64_t ts = t + step;
  p.out.plane(b, t, c)[i] = ts >= 0 && ts < p.n.T ? p.x.plane(b, ts, c)[i] : scalar_t(0);
}

}  // namespace gateshift::cuda
