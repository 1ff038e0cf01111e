// CUDA kernel of TSM's temporal shift (schemas.h: temporal_shift). Device code
// only: built by nvcc and, for the tests, under the CPU emulator.
//
// One thread per output element, consecutive threads along W (coalesced): a read
// of the source frame's element (or zero at a clip end) and a write, the 8-byte
// floor per element in float32 in both directions.
#pragma once

#include <cstdint>

#include "../portability.h"
#include "gate_shift_kernel.cuh"

namespace gateshift::cuda {

constexpr int kShiftThreads = 256;

template <typename scalar_t>
struct TemporalShiftParams {
  const scalar_t* x;
  Strides xs;
  scalar_t* out;
  Strides os;
  int64_t B, T, C, HW, fold;
  int64_t first;  // frame step of the first fold: +1 (forward) or -1 (reverse, the adjoint)
};

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kShiftThreads) temporal_shift_kernel(const TemporalShiftParams<scalar_t> p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kShiftThreads + threadIdx.x;
  if (e >= p.B * p.T * p.C * p.HW) {
    return;
  }
  const int64_t i = e % p.HW, plane = e / p.HW;
  const int64_t c = plane % p.C, t = (plane / p.C) % p.T, b = plane / (p.C * p.T);
  const int64_t step = c < p.fold ? p.first : (c < 2 * p.fold ? -p.first : 0);
  const int64_t ts = t + step;
  p.out[p.os.plane(b, t, c) + i] = ts >= 0 && ts < p.T ? p.x[p.xs.plane(b, ts, c) + i] : scalar_t(0);
}

}  // namespace gateshift::cuda
