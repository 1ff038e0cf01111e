// CPU kernel of TSM's temporal shift: one plane copy (or zero fill) per
// (clip, frame, channel). Reversed, it is the shift's adjoint, its backward.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/layout.h"

namespace gateshift::cpu {

// Planes [plane_begin, plane_end) of the (B, T, C) planes of out, from x.
// `first` is the frame step of channels [0, fold): +1, or -1 reversed; channels
// [fold, 2 fold) step the other way, the rest are copied.
template <typename scalar_t>
void shift_planes(
    PlaneTensor<const scalar_t> x,
    PlaneTensor<scalar_t> out,
    int64_t T,
    int64_t C,
    int64_t HW,
    int64_t fold,
    int64_t first,
    int64_t plane_begin,
    int64_t plane_end) {
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
    const int64_t step = c < fold ? first : (c < 2 * fold ? -first : 0);
    scalar_t* o = out.plane(b, t, c);
    const int64_t ts = t + step;
    if (ts < 0 || ts >= T) {
      std::fill(o, o + HW, scalar_t(0));
    } else {
      const scalar_t* i = x.plane(b, ts, c);
      std::copy(i, i + HW, o);
    }
  }
}

}  // namespace gateshift::cpu
