// Host helpers that every op's CUDA launch code (cuda/<op>_launch.h) uses.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "../common/checks.h"
#include "../common/layout.h"

namespace gateshift::cuda {

inline void check_grid(int64_t blocks, const char* op) {
  TORCH_CHECK(
      blocks <= std::numeric_limits<int32_t>::max(), op, ": the input needs ", blocks,
      " thread blocks, more than a CUDA grid holds");
}

// Blocks of a 1-D grid of `threads_per_block` threads covering `threads_needed`.
inline int64_t grid_for(int64_t threads_needed, int threads_per_block, const char* op) {
  const int64_t blocks = (threads_needed + threads_per_block - 1) / threads_per_block;
  check_grid(blocks, op);
  return blocks;
}

// t (5-D, contiguous planes) as a kernel reads it (T const) or writes it, through
// device_ptr (common/layout.h).
template <typename T>
DevicePlanes<T> device_planes(const at::Tensor& t) {
  const PlaneTensor<T> planes = plane_tensor<T>(t);
  return DevicePlanes<T>{planes.data, planes.strides};
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace gateshift::cuda
