// The CPU backend of the ops' checked entries (ops/backend.h): host memory, and
// `run`, which launches an op's kernels (cpu/<op>_kernel.h) over the CPU threads
// (cpu/<op>_launch.h). cpu/<op>.cpp registers the op's entries for the CPU.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_strided.h>

#include <type_traits>

#include "../common/dtypes.h"
#include "../ops/backend.h"
#include "frame_staging.h"

namespace gateshift::cpu {

// A 5-D tensor that frames_input (ops/backend.h) or an output of its layout gave:
// contiguous planes, or pixel-major frames.
template <typename T>
Frames<T> frames(const at::Tensor& t) {
  T* data;
  if constexpr (std::is_const_v<T>) {
    data = t.const_data_ptr<std::remove_const_t<T>>();
  } else {
    data = t.mutable_data_ptr<T>();
  }
  return Frames<T>{data, plane_strides(t), has_pixel_major_frames(t), t.size(2), t.size(3) * t.size(4)};
}

class Backend {
 public:
  static constexpr bool kPixelMajorFrames = true;  // channels_last in place (frame_staging.h)

  Backend(const char* /*op*/, const at::Tensor& /*x*/) {}

  const at::Tensor& input(const at::Tensor& t) const {
    return t;
  }
  at::Tensor empty(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) const {
    return at::empty_strided(sizes, strides, options);
  }

  // Runs an op: launch<scalar_t>(*this, p) for the dtype of its data, found in the
  // op's cpu/<op>_launch.h (the TU that registers the op includes it).
  template <class Params>
  void run(const Params& p) {
    GATESHIFT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gateshift_cpu", [&] { launch<scalar_t>(*this, p); });
  }
};

}  // namespace gateshift::cpu
