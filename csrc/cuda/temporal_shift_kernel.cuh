// CUDA kernel of TSM's temporal shift (ops/temporal_shift.h). Device code
// only: built by nvcc and, for the tests, under the CPU emulator.
//
// Plane-wise (element_cursor.cuh): a warp per (clip, frame, channel) plane at a
// time, its source, the shifted frame's plane or zeros at a clip end, found once per
// plane; the lanes copy the plane's pixels. The 8-byte floor per element in
// float32, in both directions.
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
  for_each_plane_of_warp<kShiftThreads>(p.n, [&](const ElementCursor& at) {
    const int64_t shift = at.c < p.fold ? p.first : (at.c < 2 * p.fold ? -p.first : 0);
    const int64_t ts = at.t + shift;
    const bool inside = ts >= 0 && ts < p.n.T;
    const device_ptr<const scalar_t> src = p.x.plane(at.b, inside ? ts : at.t, at.c);
    const device_ptr<scalar_t> dst = p.out.plane(at.b, at.t, at.c);
    for_each_pixel_of_lane<scalar_t>(
        p.n.HW, [&](int64_t i) { return inside ? src[i] : scalar_t(0); },
        [&](int64_t i, scalar_t v) { dst[i] = v; });
  });
}

}  // namespace gateshift::cuda
