// What an op's checked entry (ops/<op>.h) needs from a backend.
//
// Each op has ONE entry, a function template over the backend: it checks the
// arguments, turns them into the op's params struct (the tensors as the kernels
// read them, and the outputs allocated), and hands the struct to the backend,
// which only launches. The backends are cpu::Backend (cpu/backend.h),
// cuda::Backend (cuda/backend.h) and, in the tests, the CUDA kernels run by the
// CPU emulator (emulator/backend.h). A Backend provides:
//
//   Backend(const char* op, const at::Tensor& x)   set up for x's device (CUDA: guard, stream)
//   at::Tensor input(const at::Tensor& t)          an input as the kernels will read it (t itself;
//                                                  the emulator copies it into NaN-guarded memory)
//   static constexpr bool kPixelMajorFrames        whether its kernels read and write pixel-major
//                                                  frames (channels_last) in place (the CPU's)
//   at::Tensor empty(sizes, strides, options)      outputs and workspaces
//   void run(const <Op>Params& p)                  launch the op's kernels; one overload per params
//                                                  struct, defined in the backend's <op>.cpp|.cu
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../common/checks.h"

namespace gateshift {

// The params struct of each op (ops/<op>.h), one run() overload per struct.
struct GateShiftForwardParams;
struct GateShiftBackwardParams;
struct GateShiftFuseForwardParams;
struct GateShiftFuseBackwardParams;
struct TemporalShiftParams;
struct BatchStatsParams;
struct BatchStatsBackwardParams;

namespace ops {

template <class Backend>
std::optional<at::Tensor> input(Backend& backend, const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(backend.input(*t)) : std::nullopt;
}

// An input of x's layout as the backend's kernels read it: as it is when its
// planes are contiguous, or when its frames are pixel-major (channels_last) and the
// backend reads those in place; otherwise copied to contiguous planes, with a
// warning shown once.
template <class Backend>
at::Tensor frames_input(Backend& backend, const at::Tensor& t) {
  if (Backend::kPixelMajorFrames && has_pixel_major_frames(t)) {
    return backend.input(t);
  }
  return with_contiguous_planes(backend.input(t));
}

// A contiguous tensor of `sizes`.
template <class Backend>
at::Tensor empty(Backend& backend, at::IntArrayRef sizes, const at::TensorOptions& options) {
  std::vector<int64_t> strides(sizes.size(), 1);
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 2; d >= 0; --d) {
    strides[d] = strides[d + 1] * std::max<int64_t>(sizes[d + 1], 1);
  }
  return backend.empty(sizes, strides, options);
}

// An output or gradient of x's sizes and options, in a layout the kernels can
// write (output_strides in common/checks.h).
template <class Backend>
at::Tensor empty_output_like(Backend& backend, const at::Tensor& x) {
  return backend.empty(x.sizes(), output_strides(x), x.options());
}

}  // namespace ops
}  // namespace gateshift
