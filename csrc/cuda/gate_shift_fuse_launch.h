// From tensors to the launches of Gate-Shift-Fuse (gate_shift_fuse_kernel.cuh), for
// the real CUDA backend (gate_shift_fuse_cuda.cu) and the CPU emulator; see
// gate_shift_launch.h for what a Backend provides. Three launches forward; four
// backward (two of them the gate-shift backward's).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>

#include <limits>
#include <optional>
#include <tuple>

#include "../gate_shift_checks.h"
#include "gate_shift_fuse_kernel.cuh"
#include "gate_shift_launch.h"

namespace gateshift::cuda {

inline int64_t grid_for(int64_t threads_needed, int threads_per_block, const char* op) {
  const int64_t blocks = (threads_needed + threads_per_block - 1) / threads_per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": input too large for one grid");
  return blocks;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_shift_fuse_forward(
    Backend& backend,
    const at::Tensor& x_in,
    const at::Tensor& weight_in,
    const std::optional<at::Tensor>& bias_in,
    const std::optional<at::Tensor>& bn_scale_in,
    const std::optional<at::Tensor>& bn_shift_in,
    const at::Tensor& fuse_weight_in,
    const at::Tensor& fuse_bias_in,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s =
      check_forward_args(x_in, weight_in, bias_in, bn_scale_in, bn_shift_in, channels, interleaved);
  check_fuse_args(x_in, fuse_weight_in, fuse_bias_in);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor weight = weight_in.contiguous(), fuse_weight = fuse_weight_in.contiguous();
  const at::Tensor fuse_bias = fuse_bias_in.contiguous();
  const std::optional<at::Tensor> bias =
      bias_in.has_value() ? std::optional<at::Tensor>(bias_in->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bn_scale = affine_for_kernel(bn_scale_in, x_in);
  const std::optional<at::Tensor> bn_shift = affine_for_kernel(bn_shift_in, x_in);
  const auto acc_options = x.options().dtype(accumulation_dtype(x));
  at::Tensor out = backend.empty_output_like(x);
  at::Tensor gates = backend.empty({s.batch, s.frames, 2, s.height, s.width}, acc_options);
  at::Tensor fusion = backend.empty({s.batch, s.frames, 3, s.gated}, acc_options);
  if (x.numel() == 0) {
    return {out, gates, fusion};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_fuse_forward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const LaunchConfig config =
        make_launch_config(s.batch, s.frames, s.height, s.width, backend.num_sms(), sizeof(acc_t));
    at::Tensor tile_sums = backend.empty({s.batch, s.frames, config.tiles(), 2, s.gated}, acc_options);
    ForwardParams<scalar_t> gate_pass = forward_params<scalar_t>(
        s, interleaved, config, x, weight, bias, bn_scale, bn_shift, gates.mutable_data_ptr<acc_t>());
    gate_pass.tile_sums = tile_sums.mutable_data_ptr<acc_t>();
    backend.launch(
        gate_shift_forward_kernel<scalar_t, true>, config.blocks, kThreads, config.forward_shared, gate_pass);

    FuseWeightsParams<scalar_t> weights_pass;
    weights_pass.T = s.frames;
    weights_pass.P = s.gated;
    weights_pass.tiles = config.tiles();
    weights_pass.HW = s.height * s.width;
    weights_pass.tile_sums = tile_sums.const_data_ptr<acc_t>();
    weights_pass.fusion = fusion.mutable_data_ptr<acc_t>();
    weights_pass.fuse_weight = fuse_weight.const_data_ptr<scalar_t>();
    weights_pass.fuse_bias = fuse_bias.const_data_ptr<scalar_t>();
    backend.launch(
        fuse_weights_kernel<scalar_t>, grid_for(2 * s.batch * kFuseThreads, kFuseThreads, "gate_shift_fuse"),
        kFuseThreads, kFuseParams * sizeof(acc_t), weights_pass);

    FuseCombineParams<scalar_t> combine_pass;
    combine_pass.n = gate_pass.n;
    combine_pass.x = x.const_data_ptr<scalar_t>();
    combine_pass.xs = strides_of(x);
    combine_pass.out = out.mutable_data_ptr<scalar_t>();
    combine_pass.os = strides_of(out);
    combine_pass.gates = gates.const_data_ptr<acc_t>();
    combine_pass.fusion = fusion.const_data_ptr<acc_t>();
    backend.launch(
        fuse_combine_kernel<scalar_t>, grid_for(x.numel(), kFuseThreads, "gate_shift_fuse"), kFuseThreads, 0,
        combine_pass);
  });
  return {out, gates, fusion};
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gate_shift_fuse_backward(
    Backend& backend,
    const at::Tensor& grad_out_in,
    const at::Tensor& x_in,
    const at::Tensor& gates_in,
    const at::Tensor& fusion_in,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight_in,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s =
      check_backward_args(grad_out_in, x_in, gates_in, weight, bn_scale, bn_shift, channels, interleaved);
  check_fuse_args(x_in, fuse_weight_in, std::nullopt);
  check_fusion_table(fusion_in, s, x_in);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor grad_out = with_contiguous_planes(grad_out_in);
  const at::Tensor gates = gates_in.contiguous(), fusion = fusion_in.contiguous();
  const at::Tensor fuse_weight = fuse_weight_in.contiguous();
  const auto acc_options = x.options().dtype(accumulation_dtype(x));
  FuseBackwardExtras extras;
  extras.grad_fuse_weight = backend.empty({2, 2, 3, 3}, fuse_weight.options());
  extras.grad_fuse_bias = backend.empty({2}, fuse_weight.options());
  if (x.numel() == 0) {
    extras.grad_fuse_weight.zero_();
    extras.grad_fuse_bias.zero_();
    auto [gx, gw, gb, gs, gh] =
        gate_shift_backward(backend, grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved);
    return {gx, gw, gb, gs, gh, extras.grad_fuse_weight, extras.grad_fuse_bias};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_fuse_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    at::Tensor ds = backend.empty({s.batch, s.frames, 1, s.gated}, acc_options);
    extras.coef = backend.empty({s.batch, s.frames, 4, s.gated}, acc_options);
    extras.fuse_partials = backend.empty({s.batch, kFuseParams}, acc_options);

    FuseGradientParams<scalar_t> gradient_pass;
    gradient_pass.n = Sizes{s.batch, s.frames, s.channels, s.height, s.width, s.gated, interleaved};
    gradient_pass.grad_out = grad_out.const_data_ptr<scalar_t>();
    gradient_pass.gos = strides_of(grad_out);
    gradient_pass.x = x.const_data_ptr<scalar_t>();
    gradient_pass.xs = strides_of(x);
    gradient_pass.gates = gates.const_data_ptr<acc_t>();
    gradient_pass.df = ds.mutable_data_ptr<acc_t>();
    backend.launch(
        fuse_gradient_kernel<scalar_t>,
        grid_for(s.batch * s.frames * s.gated * 32, kFuseThreads, "gate_shift_fuse_backward"), kFuseThreads, 0,
        gradient_pass);

    FuseBackwardParams<scalar_t> fuse_pass;
    fuse_pass.T = s.frames;
    fuse_pass.P = s.gated;
    fuse_pass.HW = s.height * s.width;
    fuse_pass.fusion = fusion.const_data_ptr<acc_t>();
    fuse_pass.ds = ds.mutable_data_ptr<acc_t>();
    fuse_pass.coef = extras.coef.mutable_data_ptr<acc_t>();
    fuse_pass.fuse_weight = fuse_weight.const_data_ptr<scalar_t>();
    fuse_pass.fuse_partials = extras.fuse_partials.mutable_data_ptr<acc_t>();
    backend.launch(
        fuse_backward_kernel<scalar_t>, grid_for(2 * s.batch * kFuseThreads, kFuseThreads, "gate_shift_fuse_backward"),
        kFuseThreads, 36 * sizeof(acc_t), fuse_pass);
  });
  auto [gx, gw, gb, gs, gh] =
      gate_shift_backward(backend, grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved, &extras);
  return {gx, gw, gb, gs, gh, extras.grad_fuse_weight, extras.grad_fuse_bias};
}

}  // namespace gateshift::cuda
