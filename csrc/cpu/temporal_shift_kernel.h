// CPU kernels of TSM's temporal shift: one plane copy (or zero fill) per
// (clip, frame, channel), or for pixel-major frames (channels_last) three runs of
// channels per pixel. Reversed, it is the shift's adjoint, its backward.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/layout.h"
#include "frame_staging.h"

namespace gateshift::cpu {

// The frame step of channel c: `first` for channels [0, fold) (+1, or -1
// reversed), -first for [fold, 2 fold), 0 for the rest.
inline int64_t shift_step(int64_t c, int64_t fold, int64_t first) {
  return c < fold ? first : (c < 2 * fold ? -first : 0);
}

// Planes [plane_begin, plane_end) of the (B, T, C) planes of out (contiguous
// planes), from x's planes as they are or staged (FrameReader).
template <typename scalar_t>
void shift_planes(
    const Frames<const scalar_t>& x,
    const Frames<scalar_t>& out,
    int64_t T,
    int64_t fold,
    int64_t first,
    int64_t plane_begin,
    int64_t plane_end) {
  const int64_t C = x.C, HW = x.HW;
  FrameReader<scalar_t> x_frames(x, T, 3);  // frames t - 1 .. t + 1
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
    scalar_t* o = out.data + out.strides.plane(b, t, c);
    const int64_t ts = t + shift_step(c, fold, first);
    if (ts < 0 || ts >= T) {
      std::fill(o, o + HW, scalar_t(0));
    } else {
      const scalar_t* i = x_frames.plane(b, ts, c);
      std::copy(i, i + HW, o);
    }
  }
}

// Frames [frame_begin, frame_end) of the B * T frames of out, from x, both
// pixel-major: per pixel, the three runs of channels that share a frame step.
template <typename scalar_t>
void shift_pixel_major_frames(
    const Frames<const scalar_t>& x,
    const Frames<scalar_t>& out,
    int64_t T,
    int64_t fold,
    int64_t first,
    int64_t frame_begin,
    int64_t frame_end) {
  const int64_t C = x.C, HW = x.HW;
  const int64_t bounds[4] = {0, std::min(fold, C), std::min(2 * fold, C), C};
  for (int64_t frame = frame_begin; frame < frame_end; ++frame) {
    const int64_t b = frame / T, t = frame % T;
    scalar_t* o = out.data + out.strides.plane(b, t, 0);
    const scalar_t* source[3];  // of each run's channels, null past the clip
    for (int r = 0; r < 3; ++r) {
      const int64_t ts = t + shift_step(bounds[r], fold, first);
      source[r] = ts >= 0 && ts < T ? x.data + x.strides.plane(b, ts, 0) : nullptr;
    }
    for (int64_t i = 0; i < HW; ++i) {
      for (int r = 0; r < 3; ++r) {
        scalar_t* run = o + i * C + bounds[r];
        const int64_t len = bounds[r + 1] - bounds[r];
        if (source[r] == nullptr) {
          std::fill(run, run + len, scalar_t(0));
        } else {
          std::copy(source[r] + i * C + bounds[r], source[r] + i * C + bounds[r + 1], run);
        }
      }
    }
  }
}

}  // namespace gateshift::cpu
