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
// into the pixel-major output when the frame is done. A frame is small at the
// published networks' placements (200 KB at 64 x 28 x 28 fp32), so a thread's
// window of frames (up to 8, in the backward) stays in or near its core's L2, and
// the staged planes are bitwise the values of a copy: every result equals the
// contiguous input's, bit for bit. Where neither side needs planes, kernels read and
// write the pixels directly (GSM's output pass, TSM, the batch statistics' gradient).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
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

// One 8 x 8 block of 4-byte values: dst row j (dst_stride apart) is src column j.
// GCC/Clang vector extensions, so the compiler picks the shuffles of each target.
GATESHIFT_ALWAYS_INLINE void transpose_8x8(const uint32_t* src, int64_t src_stride, uint32_t* dst, int64_t dst_stride) {
  typedef uint32_t v8 __attribute__((vector_size(32)));
#if defined(__clang__)
#define GATESHIFT_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
  typedef int32_t mask8 __attribute__((vector_size(32)));
#define GATESHIFT_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shuffle(a, b, mask8{i0, i1, i2, i3, i4, i5, i6, i7})
#endif
  v8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) {
    std::memcpy(&r[i], src + i * src_stride, sizeof(v8));
  }
  for (int i = 0; i < 8; i += 2) {  // t[i] = r[i][0] r[i+1][0] r[i][1] r[i+1][1] | the same of lanes 4, 5
    t[i] = GATESHIFT_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = GATESHIFT_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // u[i + q]: column q (and q + 4) of rows i .. i + 3
    u[i + 0] = GATESHIFT_SHUFFLE8(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = GATESHIFT_SHUFFLE8(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = GATESHIFT_SHUFFLE8(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = GATESHIFT_SHUFFLE8(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int q = 0; q < 4; ++q) {  // columns q and q + 4 of all eight rows
    const v8 low = GATESHIFT_SHUFFLE8(u[q], u[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const v8 high = GATESHIFT_SHUFFLE8(u[q], u[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(dst + q * dst_stride, &low, sizeof(v8));
    std::memcpy(dst + (q + 4) * dst_stride, &high, sizeof(v8));
  }
#undef GATESHIFT_SHUFFLE8
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: eight
// rows of eight 4-byte values at a time in vector registers (unpack, then 64-bit
// and 128-bit interleaves: 24 shuffles per 64 values), the edges and other value
// sizes element by element in blocks that stay in L1.
template <typename T>
GATESHIFT_CPU_MULTIVERSION void transpose(const T* __restrict src, int64_t rows, int64_t cols, int64_t src_stride,
                                          T* __restrict dst, int64_t dst_stride) {
  int64_t rows8 = 0, cols8 = 0;
  if constexpr (sizeof(T) == 4) {
    rows8 = rows / 8 * 8;
    cols8 = cols / 8 * 8;
    for (int64_t i0 = 0; i0 < rows8; i0 += 8) {
      for (int64_t j0 = 0; j0 < cols8; j0 += 8) {
        transpose_8x8(reinterpret_cast<const uint32_t*>(src) + i0 * src_stride + j0, src_stride,
                      reinterpret_cast<uint32_t*>(dst) + j0 * dst_stride + i0, dst_stride);
      }
    }
  }
  // What the 8 x 8 blocks left: columns [cols8, cols) of rows [0, rows8), then rows [rows8, rows).
  const auto block = [&](int64_t i_begin, int64_t i_end, int64_t j_begin, int64_t j_end) GATESHIFT_INLINE_LAMBDA {
    constexpr int64_t kBlock = 16;
    for (int64_t i0 = i_begin; i0 < i_end; i0 += kBlock) {
      const int64_t i1 = std::min(i_end, i0 + kBlock);
      for (int64_t j0 = j_begin; j0 < j_end; j0 += kBlock) {
        const int64_t j1 = std::min(j_end, j0 + kBlock);
        for (int64_t j = j0; j < j1; ++j) {
          for (int64_t i = i0; i < i1; ++i) {
            dst[j * dst_stride + i] = src[i * src_stride + j];
          }
        }
      }
    }
  };
  block(0, rows8, cols8, cols);
  block(rows8, rows, 0, cols);
}

// The planes of a Frames tensor, for reading: the tensor's own planes, or a
// pixel-major frame's planes staged in this reader's slots (C planes of HW values,
// HW apart). The kernels slide forward through frames and use at most `slots`
// consecutive ones (b * T + t) at a time; once every slot is taken, a new frame
// replaces the one farthest from it, which is outside that window.
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
