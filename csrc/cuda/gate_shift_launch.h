// From tensors to kernel launches, once for the real CUDA backend
// (gate_shift_cuda.cu) and the CPU emulator (emulator/gate_shift_emulated.cpp).
//
// A Backend provides
//   at::Tensor empty(at::IntArrayRef sizes, at::TensorOptions)  device memory
//   at::Tensor empty_output_like(const at::Tensor& x)            (output_strides(x))
//   int64_t num_sms()                                            multiprocessors
//   void launch(kernel, int64_t blocks, int threads, size_t shared_bytes, params...)
// so both run the same checks, layouts, launch configuration and kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "../gate_shift_checks.h"
#include "gate_shift_kernel.cuh"
#include "launch_config.h"

namespace gateshift::cuda {

inline Strides strides_of(const at::Tensor& t) {
  return Strides{t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
const scalar_t* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

inline at::ScalarType accumulation_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The BN affine in the accumulation dtype (it may come in x's dtype or in that one).
inline std::optional<at::Tensor> affine_for_kernel(const std::optional<at::Tensor>& t, const at::Tensor& x) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(accumulation_dtype(x)).contiguous()) : std::nullopt;
}

inline void check_grid(const LaunchConfig& config) {
  TORCH_CHECK(
      config.blocks <= std::numeric_limits<int32_t>::max(),
      "gate_shift: the input needs ", config.blocks, " thread blocks, more than a CUDA grid holds");
}

inline GridShape grid_shape(const LaunchConfig& c) {
  return GridShape{c.tiles(), c.tiles_w, c.chunks, c.frames_per_chunk};
}

// The forward kernel's parameters but its outputs (out, or GSF's tile sums).
template <typename scalar_t>
ForwardParams<scalar_t> forward_params(
    const GateShiftSizes& s,
    bool interleaved,
    const LaunchConfig& config,
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    acc_type<scalar_t>* gates) {
  using acc_t = acc_type<scalar_t>;
  check_grid(config);
  ForwardParams<scalar_t> p;
  p.n = Sizes{s.batch, s.frames, s.channels, s.height, s.width, s.gated, interleaved};
  p.grid = grid_shape(config);
  p.x = x.const_data_ptr<scalar_t>();
  p.xs = strides_of(x);
  p.out = nullptr;
  p.gates = gates;
  p.weight = weight.const_data_ptr<scalar_t>();
  p.bias = data_or_null<scalar_t>(bias);
  p.scale = data_or_null<acc_t>(bn_scale);
  p.shift = data_or_null<acc_t>(bn_shift);
  return p;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> gate_shift_forward(
    Backend& backend,
    const at::Tensor& x_in,
    const at::Tensor& weight_in,
    const std::optional<at::Tensor>& bias_in,
    const std::optional<at::Tensor>& bn_scale_in,
    const std::optional<at::Tensor>& bn_shift_in,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s =
      check_forward_args(x_in, weight_in, bias_in, bn_scale_in, bn_shift_in, channels, interleaved);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor weight = weight_in.contiguous();
  const auto contiguous = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  const std::optional<at::Tensor> bias = contiguous(bias_in), bn_scale = affine_for_kernel(bn_scale_in, x_in),
                                  bn_shift = affine_for_kernel(bn_shift_in, x_in);
  at::Tensor out = backend.empty_output_like(x);
  at::Tensor gates = backend.empty(
      {s.batch, s.frames, 2, s.height, s.width},
      x.options().dtype(accumulation_dtype(x)));
  if (x.numel() == 0) {
    return {out, gates};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_forward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const LaunchConfig config =
        make_launch_config(s.batch, s.frames, s.height, s.width, backend.num_sms(), sizeof(acc_t));
    ForwardParams<scalar_t> p = forward_params<scalar_t>(
        s, interleaved, config, x, weight, bias, bn_scale, bn_shift, gates.mutable_data_ptr<acc_t>());
    p.out = out.mutable_data_ptr<scalar_t>();
    p.os = strides_of(out);
    backend.launch(gate_shift_forward_kernel<scalar_t>, config.blocks, kThreads, config.forward_shared, p);
  });
  return {out, gates};
}

// Gate-Shift-Fuse's additions to the gate-shift backward: the (B, T, 4, P)
// coefficients, the per-clip partials of the fusion convolution's parameters, and
// where their sums go (kFuseParams values of x's dtype).
struct FuseBackwardExtras {
  at::Tensor coef;
  at::Tensor fuse_partials;  // (B, kFuse)
  at::Tensor grad_fuse_weight;  // kFuse - 2 values
  at::Tensor grad_fuse_bias;    // 2 values
};

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward(
    Backend& backend,
    const at::Tensor& grad_out_in,
    const at::Tensor& x_in,
    const at::Tensor& gates_in,
    const at::Tensor& weight_in,
    const std::optional<at::Tensor>& bn_scale_in,
    const std::optional<at::Tensor>& bn_shift_in,
    int64_t channels,
    bool interleaved,
    const FuseBackwardExtras* fuse = nullptr) {
  const GateShiftSizes s = check_backward_args(
      grad_out_in, x_in, gates_in, weight_in, bn_scale_in, bn_shift_in, channels, interleaved);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor grad_out = with_contiguous_planes(grad_out_in);
  const at::Tensor gates = gates_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const bool affine = bn_scale_in.has_value();
  const std::optional<at::Tensor> bn_scale = affine_for_kernel(bn_scale_in, x_in);
  const std::optional<at::Tensor> bn_shift = affine_for_kernel(bn_shift_in, x_in);
  const int64_t P = s.gated;

  at::Tensor grad_x = backend.empty_output_like(x);
  at::Tensor grad_weight = backend.empty(weight.sizes(), weight.options());
  at::Tensor grad_bias = backend.empty({2}, weight.options());
  // The affine's gradients come in the affine's dtype.
  const at::TensorOptions affine_options = affine ? bn_scale_in->options() : weight.options();
  at::Tensor grad_scale = backend.empty({affine ? P : 0}, affine_options);
  at::Tensor grad_shift = backend.empty({affine ? P : 0}, affine_options);
  if (x.numel() == 0) {  // nothing to sum: the parameter gradients are zero
    for (at::Tensor* t : {&grad_weight, &grad_bias, &grad_scale, &grad_shift}) {
      t->zero_();
    }
    return {grad_x, grad_weight, grad_bias, grad_scale, grad_shift};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const LaunchConfig config =
        make_launch_config(s.batch, s.frames, s.height, s.width, backend.num_sms(), sizeof(acc_t));
    check_grid(config);
    at::Tensor partials =
        backend.empty({config.blocks, partial_stride(P)}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
    BackwardParams<scalar_t> p;
    p.n = Sizes{s.batch, s.frames, s.channels, s.height, s.width, P, interleaved};
    p.grid = grid_shape(config);
    p.grad_out = grad_out.const_data_ptr<scalar_t>();
    p.gos = strides_of(grad_out);
    p.x = x.const_data_ptr<scalar_t>();
    p.xs = strides_of(x);
    p.gates = gates.const_data_ptr<acc_t>();
    p.weight = weight.const_data_ptr<scalar_t>();
    p.scale = data_or_null<acc_t>(bn_scale);
    p.shift = data_or_null<acc_t>(bn_shift);
    p.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    p.gxs = strides_of(grad_x);
    p.partials = partials.mutable_data_ptr<acc_t>();
    if (fuse != nullptr) {
      p.fuse_coef = fuse->coef.const_data_ptr<acc_t>();
    }
    backend.launch(gate_shift_backward_kernel<scalar_t>, config.blocks, kThreads, config.backward_shared, p);
    const int64_t fuse_params = fuse != nullptr ? fuse->fuse_partials.size(1) : 0;
    const int64_t finish_blocks = (partial_stride(P) + fuse_params + kThreads - 1) / kThreads;
    const auto finish = [&](auto* affine_type) {
      using affine_t = std::remove_pointer_t<decltype(affine_type)>;
      backend.launch(
          sum_partials_kernel<scalar_t, affine_t>, finish_blocks, kThreads, 0,
          static_cast<const acc_t*>(p.partials), config.blocks, P, grad_weight.mutable_data_ptr<scalar_t>(),
          grad_bias.mutable_data_ptr<scalar_t>(), affine ? grad_scale.mutable_data_ptr<affine_t>() : nullptr,
          affine ? grad_shift.mutable_data_ptr<affine_t>() : nullptr,
          fuse != nullptr ? fuse->fuse_partials.template const_data_ptr<acc_t>() : nullptr, s.batch, fuse_params,
          fuse != nullptr ? fuse->grad_fuse_weight.template mutable_data_ptr<scalar_t>() : nullptr,
          fuse != nullptr ? fuse->grad_fuse_bias.template mutable_data_ptr<scalar_t>() : nullptr);
    };
    if (affine_options.dtype() == weight.options().dtype()) {
      finish(static_cast<scalar_t*>(nullptr));
    } else {
      finish(static_cast<acc_t*>(nullptr));
    }
  });
  return {grad_x, grad_weight, grad_bias, grad_scale, grad_shift};
}

}  // namespace gateshift::cuda
