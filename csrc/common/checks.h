// Argument checks shared by the ops' checked entries (csrc/ops/), and the layout
// rules for the tensors the kernels read and write.
//
// Every message starts with the name of the op that was called and names the
// argument and what was expected. The public Python API validates the user's
// arguments first (with ValueError/TypeError); these checks guard direct calls of
// torch.ops.gateshift.* and keep the kernels safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "layout.h"

namespace gateshift {

// x: a 5-D (B, T, C, H, W) tensor of a floating dtype the kernels support.
void check_x(const char* op, const at::Tensor& x);

// A parameter of the shape `shape`, on x's device, in x's dtype (or, with
// allow_accumulation_dtype, in the accumulation dtype: the folded BatchNorm
// affine, whose gradients are sums over B*T*H*W elements, may stay float32 for
// half-precision x).
void check_parameter(const char* op, const char* name, const at::Tensor& p, at::IntArrayRef shape,
                     const at::Tensor& x, bool allow_accumulation_dtype = false);

// A tensor of x's shape, dtype and device (an output gradient).
void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x);

// A tensor of the shape `shape` in the accumulation dtype, on x's device: a table
// that a forward op returned for its backward (gates, fusion table, statistics).
void check_accumulation_table(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                              const at::Tensor& x);

// True when each (H, W) plane of a 5-D tensor is contiguous in memory: the only
// layout the kernels require (B, T and C may have any strides).
bool has_contiguous_planes(const at::Tensor& t);

// True when t repeats values along a dimension (a zero stride where the size is > 1),
// as expand() makes them.
bool is_broadcast(const at::Tensor& t);

// t itself when its planes are contiguous, otherwise a contiguous copy (announced
// once per process, unless t is broadcast).
at::Tensor with_contiguous_planes(const at::Tensor& t);

// True when each (b, t) frame of a 5-D tensor is a dense (H, W, C) block with C
// innermost (channels_last; channels_last_3d seen through the BCTHW layout's
// permute), and its planes are not contiguous: what the CPU kernels read and
// write in place besides contiguous planes (cpu/frame_staging.h).
bool has_pixel_major_frames(const at::Tensor& t);

PlaneStrides plane_strides(const at::Tensor& t);
PlaneGrid plane_grid(const at::Tensor& t);

// t (5-D, contiguous planes) as a kernel reads it (T const) or writes it.
template <typename T>
PlaneTensor<T> plane_tensor(const at::Tensor& t) {
  if constexpr (std::is_const_v<T>) {
    return PlaneTensor<T>{t.const_data_ptr<std::remove_const_t<T>>(), plane_strides(t)};
  } else {
    return PlaneTensor<T>{t.mutable_data_ptr<T>(), plane_strides(t)};
  }
}

// The strides of a new tensor of x's sizes that the kernels can write, no two
// elements sharing memory. x (5-D, as frames_input gave it: contiguous planes, or
// pixel-major frames on the CPU) gives its own strides when it is non-overlapping
// and dense, so channels_last stays channels_last on the CPU; otherwise
// (overlapping or gapped views, where at::empty_like would order the dimensions
// by x's strides and could put T or C between H and W) dense strides with the
// planes innermost and B, T, C in the order of x's strides.
// (gateshift/_ops.py mirrors this rule in the fake kernels.)
std::vector<int64_t> output_strides(const at::Tensor& x);

// t, contiguous; t converted to the accumulation dtype of x and contiguous.
at::Tensor contiguous(const at::Tensor& t);
std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t);
std::optional<at::Tensor> in_accumulation_dtype(const std::optional<at::Tensor>& t, const at::Tensor& x);

}  // namespace gateshift
