// The tensor layout every backend works on, device code included.
//
// The gate-shift ops take x as a 5-D (B, T, C, H, W) view: the Python layer makes
// it from a (B*T, C, H, W) tensor or, by a permute, from a (B, C, T, H, W) one, so
// one kernel serves both layouts without copies. Kernels need each (H, W) plane
// to be contiguous, and read B, T and C through 64-bit strides.
#pragma once

#include <cstdint>

#include "compile_target.h"

namespace gateshift {

// Sizes of one gate-shift problem.
struct GateShiftSizes {
  int64_t B;  // clips
  int64_t T;  // frames per clip
  int64_t C;  // all channels of x
  int64_t H, W;
  int64_t P;  // channels [0, P) are gated and shifted, [P, C) pass through
  bool interleaved;  // the published output channel order (channel_order.h)
};

// Strides of the B, T and C dimensions of a (B, T, C, H, W) tensor with contiguous planes.
struct PlaneStrides {
  int64_t b, t, c;
  GATESHIFT_HOST_DEVICE int64_t plane(int64_t bi, int64_t ti, int64_t ci) const {
    return bi * b + ti * t + ci * c;
  }
};

// A (B, T, C, H, W) tensor with contiguous planes, as kernels see it (CUDA kernels
// through device_ptr<T>: cuda/launch_helpers.h).
template <typename T, typename Pointer = T*>
struct PlaneTensor {
  Pointer data;
  PlaneStrides strides;
  GATESHIFT_HOST_DEVICE Pointer plane(int64_t b, int64_t t, int64_t c) const {
    return data + strides.plane(b, t, c);
  }
};

// The same as the CUDA kernels see it: device_ptr is a plain pointer for nvcc and a
// counting one under the emulator (common/compile_target.h).
template <typename T>
using DevicePlanes = PlaneTensor<T, device_ptr<T>>;

// The planes of a (B, T, C, H, W) tensor: B * T * C of HW elements each.
struct PlaneGrid {
  int64_t B, T, C, HW;
};

// The 3 x 3 x 3 weights of one gated channel of the gating convolution.
constexpr int kTaps = 27;

// Partial sums of the parameter gradients (one row per CUDA block, or per CPU
// group of frames), in the accumulation type, summed in row order afterwards:
// [dweight (P * 27) | dbias (2) | dbn_scale (P) | dbn_shift (P)].
struct PartialsLayout {
  int64_t P;
  GATESHIFT_HOST_DEVICE constexpr int64_t weight() const {
    return 0;
  }
  GATESHIFT_HOST_DEVICE constexpr int64_t bias() const {
    return P * kTaps;
  }
  GATESHIFT_HOST_DEVICE constexpr int64_t bn_scale() const {
    return bias() + 2;
  }
  GATESHIFT_HOST_DEVICE constexpr int64_t bn_shift() const {
    return bn_scale() + P;
  }
  GATESHIFT_HOST_DEVICE constexpr int64_t size() const {
    return bn_shift() + P;
  }
};

}  // namespace gateshift
