// channels_last read and written in place by the CPU kernels.
//
// The kernels walk (H, W) planes row by row (gate_shift_kernel.h). A tensor whose
// frames are pixel-major instead, each frame a dense (H, W, C) block with C
// innermost (channels_last, as oneDNN's convolutions around the op produce it, or
// channels_last_3d in the (B, C, T, H, W) layout), has no contiguous planes. Rather
// than copying the whole tensor to contiguous planes first (one more read and write
// of it, and a transposing one: 4.4x a plain copy's time in torch at 16x64x28x28),
// the kernels stage what they need a frame at a time: FrameReader transposes a
// frame (C x HW values) into per-thread planes when a kernel first asks for one of
// its planes, and FrameWriter collects a frame's output planes and transposes them
// into the pixel-major output when the frame is done. A frame is small next to a
// core's L2 at the published networks' placements (200 KB at 64 x 28 x 28 fp32),
// so the transposes run from cache, and the staged planes are bitwise the values
// of a copy: every result equals the contiguous input's, bit for bit.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/compile_target.h"
#include "../common/layout.h"

namespace gateshift::cpu {

// A (B, T, C, H, W) tensor as the CPU kernels take it: contiguous (H, W) planes
// (`strides` gives each plane's offset), or pixel-major frames (`strides.c` is 1,
// and frame (b, t) is the dense HW x C block at strides.plane(b, t, 0)).
template <typename T>
struct Frames {
  T* data;
  PlaneStrides strides;
  bool pixel_major;
  int64_t C, HW;
};

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols, in
// blocks that stay in L1 on both sides.
template <typename T>
GATESHIFT_CPU_MULTIVERSION void transpose(const T* __restrict src, int64_t rows, int64_t cols, int64_t src_stride,
                                          T* __restrict dst, int64_t dst_stride) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(rows, i0 + kBlock);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) {
          dst[j * dst_stride + i] = src[i * src_stride + j];
        }
      }
    }
  }
}

// The planes of a Frames tensor, for reading: the tensor's own planes, or a
// pixel-major frame's planes staged in this reader's slots (C planes of HW values,
// HW apart). The kernels slide through frames and use at most `slots` consecutive
// ones (b * T + t) at a time; once every slot is taken, a new frame replaces the
// one farthest from it, which is outside that window (a frame left behind, or one
// of an earlier tile's pass ahead).
template <typename T>
class FrameReader {
 public:
  FrameReader(const Frames<const T>& frames, int64_t frames_per_clip, int slots)
      : f_(frames), T_(frames_per_clip), slots_(f_.pixel_major ? slots : 0) {}

  const T* plane(int64_t b, int64_t t, int64_t c) {
    if (!f_.pixel_major) {
      return f_.data + f_.strides.plane(b, t, c);
    }
    return staged(b * T_ + t, f_.data + f_.strides.plane(b, t, 0)) + c * f_.HW;
  }

 private:
  struct Slot {
    int64_t frame = -1;
    std::vector<T> planes;
  };
  static int64_t distance(int64_t slot_frame, int64_t frame) {  // a free slot (-1) is farthest
    return slot_frame < 0 ? std::numeric_limits<int64_t>::max() : (slot_frame > frame ? slot_frame - frame : frame - slot_frame);
  }
  const T* staged(int64_t frame, const T* pixels) {
    Slot* target = nullptr;
    for (Slot& s : slots_) {
      if (s.frame == frame) {
        return s.planes.data();
      }
      if (target == nullptr || distance(s.frame, frame) > distance(target->frame, frame)) {
        target = &s;
      }
    }
    if (target->planes.empty()) {  // allocated on first use: a short task stages few frames
      target->planes.resize(static_cast<size_t>(f_.C * f_.HW));
    }
    transpose(pixels, f_.HW, f_.C, f_.C, target->planes.data(), f_.HW);
    target->frame = frame;
    return target->planes.data();
  }

  Frames<const T> f_;
  int64_t T_;
  std::vector<Slot> slots_;
};

// The planes of a Frames tensor, for writing one frame at a time: the tensor's own
// planes, or (pixel-major) a staging frame that finish(b, t) transposes into the
// tensor. Every plane of the frame is written between two finish calls.
template <typename T>
class FrameWriter {
 public:
  explicit FrameWriter(const Frames<T>& frames) : f_(frames) {}

  T* plane(int64_t b, int64_t t, int64_t c) {
    if (!f_.pixel_major) {
      return f_.data + f_.strides.plane(b, t, c);
    }
    if (staging_.empty()) {
      staging_.resize(static_cast<size_t>(f_.C * f_.HW));
    }
    return staging_.data() + c * f_.HW;
  }
  void finish(int64_t b, int64_t t) {
    if (f_.pixel_major && !staging_.empty()) {
      transpose<T>(staging_.data(), f_.C, f_.HW, f_.HW, f_.data + f_.strides.plane(b, t, 0), f_.C);
    }
  }

 private:
  Frames<T> f_;
  std::vector<T> staging_;
};

}  // namespace gateshift::cpu
