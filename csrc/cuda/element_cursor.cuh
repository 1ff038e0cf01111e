// The position of a thread's element in a (B, T, C, H*W) grid, moved in fixed
// steps without dividing. Device code only.
//
// The element-wise kernels take several elements per thread, a grid-sized step
// apart (consecutive threads on consecutive pixels: coalesced). Splitting every
// flat index into (b, t, c, pixel) would cost four 64-bit divisions per element,
// dozens of instructions each on a GPU; instead a thread splits its first index
// and the step once, and adds the step digit by digit with carries (each digit
// plus the step's digit plus a carry stays below twice its radix, so one
// subtraction normalises it).
#pragma once

#include <cstdint>

#include "../common/compile_target.h"
#include "../common/layout.h"

namespace gateshift::cuda {

// Elements per thread of the element-wise kernels (their grids are sized for it):
// enough to amortise the first split, few enough to keep every SM busy.
constexpr int kElementsPerThread = 4;

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

}  // namespace gateshift::cuda
