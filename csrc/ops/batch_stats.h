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

template <class Backend>
at::Tensor batch_stats_backward(
    const at::Tensor& grad_mean, const at::Tensor& grad_var, const at::Tensor& x, const at::Tensor& mean,
    int64_t channels, const std::optional<at::Tensor>& grad_in) {
  constexpr const char* op = "batch_stats_backward";
  Backend backend(op, x);
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
  if (grad_in.has_value()) {
    check_like_x(op, "grad_in", *grad_in, x);
    p.grad_in = frames_input(backend, *grad_in);
  }
  p.channels = channels;
  p.count = x.size(0) * x.size(1) * x.size(3) * x.size(4);
  p.grad_x = empty_output_like(backend, p.x);
  if (p.x.numel() != 0) {
    backend.run(p);
  }
  return p.grad_x;
}

}  // namespace ops
}  // namespace gateshift
