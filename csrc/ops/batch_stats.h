// The per-channel batch statistics behind the GSM/GSF modules' training-mode
// BatchNorm: argument checks, params structs and one checked entry each, shared
// by every backend (ops/backend.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <limits>
#include <tuple>
#include <vector>

#include "../common/dtypes.h"
#include "../common/checks.h"
#include "backend.h"

namespace gateshift {

struct BatchStatsParams {
  at::Tensor x;           // (B, T, C, H, W), as frames_input gave it
  int64_t channels;       // statistics of channels [0, channels)
  at::Tensor mean, var;   // (channels), accumulation dtype
  at::ScalarType scalar_type() const {
    return x.scalar_type();
  }
};

struct BatchStatsBackwardParams {
  at::Tensor x;                          // (B, T, C, H, W), as frames_input gave it
  at::Tensor grad_mean, grad_var, mean;  // (channels), contiguous, accumulation dtype
  at::Tensor grad_in;                    // x's sizes, as frames_input gave it; undefined: none
  int64_t channels;
  int64_t count;                         // elements per channel, B * T * H * W
  at::Tensor grad_x;                     // x's sizes, output_strides(x)
  at::ScalarType scalar_type() const {
    return x.scalar_type();
  }
};

inline void check_batch_stats_args(const char* op, const at::Tensor& x, int64_t channels) {
  check_x(op, x);
  TORCH_CHECK_VALUE(
      channels >= 1 && channels <= x.size(2), op, ": channels must be in [1, C = ", x.size(2), "], got ", channels);
}

namespace ops {

template <class Backend>
std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& x, int64_t channels) {
  constexpr const char* op = "batch_stats";
  Backend backend(op, x);
  check_batch_stats_args(op, x, channels);
  BatchStatsParams p;
  p.x = frames_input(backend, x);
  p.channels = channels;
  const at::TensorOptions acc = x.options().dtype(accumulation_dtype(x.scalar_type()));
  p.mean = empty(backend, {channels}, acc);
  p.var = empty(backend, {channels}, acc);
  if (p.x.numel() != 0) {
    backend.run(p);
  } else {  // as torch.var_mean of an empty tensor
    p.mean.fill_(std::numeric_limits<double>::quiet_NaN());
    p.var.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {p.mean, p.var};
}

// The params of either backward entry below, but for grad_in and grad_x.
template <class Backend>
BatchStatsBackwardParams batch_stats_backward_params(
    const char* op, Backend& backend, const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& x,
    const at::Tensor& mean, int64_t channels) {
  check_batch_stats_args(op, x, channels);
  const std::vector<int64_t> shape{channels};
  check_accumulation_table(op, "grad_mean", grad_mean, shape, x);
  check_accumulation_table(op, "grad_var", grad_var, shape, x);
  check_accumulation_table(op, "mean", mean, shape, x);
  BatchStatsBackwardParams p;
  p.x = frames_input(backend, x);
  p.grad_mean = contiguous(backend.input(grad_mean));
  p.grad_var = contiguous(backend.input(grad_var));
  p.mean = contiguous(backend.input(mean));
  p.channels = channels;
  p.count = x.size(0) * x.size(1) * x.size(3) * x.size(4);
  return p;
}

template <class Backend>
at::Tensor batch_stats_backward(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& x, const at::Tensor& mean,
    int64_t channels, const std::optional<at::Tensor>& grad_in) {
  constexpr const char* op = "batch_stats_backward";
  Backend backend(op, x);
  BatchStatsBackwardParams p = batch_stats_backward_params(op, backend, grad_mean, grad_var, x, mean, channels);
  if (grad_in.has_value()) {
    check_like_x(op, "grad_in", *grad_in, x);
    p.grad_in = frames_input(backend, *grad_in);
  }
  p.grad_x = empty_output_like(backend, p.x);
  if (p.x.numel() != 0) {
    backend.run(p);
  }
  return p.grad_x;
}

// In place: the kernels read grad_x as grad_in and write their result over it. That
// is safe because every element is read, then written, by one thread at one index,
// and the plane-by-plane and pixel-major loops touch no other element of another
// frame in between; so it is done only where those loops run on grad_x's own
// memory: grad_x read without a copy and laid out as the output would be (x's
// layout). Otherwise (a layout the kernels copy, or the emulator's guarded copies)
// the result goes to a fresh output and is copied into grad_x.
template <class Backend>
void batch_stats_backward_(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& x, const at::Tensor& mean,
    int64_t channels, const at::Tensor& grad_x) {
  constexpr const char* op = "batch_stats_backward_";
  Backend backend(op, x);
  BatchStatsBackwardParams p = batch_stats_backward_params(op, backend, grad_mean, grad_var, x, mean, channels);
  check_like_x(op, "grad_x", grad_x, x);
  TORCH_CHECK_VALUE(
      !grad_x.is_alias_of(x), op, ": grad_x must not share memory with x (it is written while x is read)");
  p.grad_in = frames_input(backend, grad_x);
  const bool in_place = p.grad_in.is_same(grad_x) && grad_x.strides() == at::IntArrayRef(output_strides(p.x));
  p.grad_x = in_place ? grad_x : empty_output_like(backend, p.x);
  if (p.x.numel() == 0) {
    return;
  }
  backend.run(p);
  if (!in_place) {
    grad_x.copy_(p.grad_x);
  }
}

}  // namespace ops
}  // namespace gateshift
