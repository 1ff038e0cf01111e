// The position of an element, or of a plane, in a (B, T, C, H*W) grid, moved in
// fixed steps without dividing. Device code only.
//
// Kernels that walk a grid in steps of the whole launch (blocks x threads, or
// blocks x warps) split their first index into (b, t, c, pixel) once, and the
// step once, and then add the step digit by digit with carries (each digit plus the
// step's digit plus a carry stays below twice its radix, so one subtraction
// normalises it) instead of four 64-bit divisions per step, dozens of instructions
// each on a GPU.
#pragma once

#include <cstdint>

#include "../common/compile_target.h"
#include "../common/layout.h"

namespace gateshift::cuda {

struct ElementCursor {
  int64_t b, t, c, i;  // clip, frame, channel, pixel of the plane

  // The element at flat row-major index e >= 0 of grid n (b may pass B: a step
  // longer than the grid is split too).
  GATESHIFT_DEVICE static ElementCursor at(int64_t e, const PlaneGrid& n) {
    ElementCursor p;
    p.i = e % n.HW;
    e /= n.HW;
    p.c = e % n.C;
    e /= n.C;
    p.t = e % n.T;
    p.b = e / n.T;
    return p;
  }

  // Moves by `step`, given as ElementCursor::at(step, n).
  GATESHIFT_DEVICE void advance(const ElementCursor& step, const PlaneGrid& n) {
    i += step.i;
    int64_t carry = i >= n.HW ? 1 : 0;
    i -= carry * n.HW;
    c += step.c + carry;
    carry = c >= n.C ? 1 : 0;
    c -= carry * n.C;
    t += step.t + carry;
    carry = t >= n.T ? 1 : 0;
    t -= carry * n.T;
    b += step.b + carry;
  }
};

// ---------------------------------------------------------------------------
// Plane-wise element kernels (the temporal shift, GSF's combine, the batch
// statistics' gradient): a warp takes a (clip, frame, channel) plane at a time, planes
// a grid of warps apart, works out what is the same for the whole plane once (source
// planes, per-channel constants, the output channel) and its lanes then stream the
// plane's HW pixels, consecutive lanes on consecutive pixels (coalesced). Per element
// that leaves a load or two, the arithmetic and a store: the same kernels written per
// element (a position split and stepped for every element, both 5-D tensors
// addressed from it) spent 72-87 SASS instructions per element on sm_90.
// ---------------------------------------------------------------------------

// Pixels each lane loads before it stores any: the stores go through pointers the
// compiler cannot prove apart from the loads', so it would not move a later load
// above an earlier store.
constexpr int kPlaneBatch = 4;

// The warps a plane-wise launch over n takes: one per plane.
inline int64_t plane_warps(const PlaneGrid& n) {
  return n.B * n.T * n.C;
}

// body(at) for every plane of n this warp owns (at.i is 0); the whole warp calls it.
template <int kBlockThreads, class Body>
GATESHIFT_DEVICE void for_each_plane_of_warp(const PlaneGrid& n, Body body) {
  static_assert(kBlockThreads % 32 == 0, "whole warps");
  const PlaneGrid planes{n.B, n.T, n.C, 1};  // the planes as a grid of one-element planes
  const int64_t count = n.B * n.T * n.C;
  const int64_t step = static_cast<int64_t>(gridDim.x) * (kBlockThreads / 32);
  int64_t plane = static_cast<int64_t>(blockIdx.x) * (kBlockThreads / 32) + threadIdx.x / 32;
  if (plane >= count) {
    return;
  }
  ElementCursor at = ElementCursor::at(plane, planes);
  const ElementCursor stride = ElementCursor::at(step, planes);
  for (; plane < count; plane += step, at.advance(stride, planes)) {
    body(at);
  }
}

// This lane's pixels i of a plane of HW: value = load(i) for kPlaneBatch of them,
// then store(i, value) for each.
template <typename V, class Load, class Store>
GATESHIFT_DEVICE void for_each_pixel_of_lane(int64_t HW, Load load, Store store) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int64_t i0 = lane; i0 < HW; i0 += 32 * kPlaneBatch) {
    V value[kPlaneBatch];
#pragma unroll
    for (int k = 0; k < kPlaneBatch; ++k) {
      const int64_t i = i0 + 32 * k;
      if (i < HW) {
        value[k] = load(i);
      }
    }
#pragma unroll
    for (int k = 0; k < kPlaneBatch; ++k) {
      const int64_t i = i0 + 32 * k;
      if (i < HW) {
        store(i, value[k]);
      }
    }
  }
}

}  // namespace gateshift::cuda
