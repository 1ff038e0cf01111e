// CPU op bodies shared between the GSM ops (gate_shift_kernel.cpp) and the
// Gate-Shift-Fuse ops (gate_shift_fuse_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace gateshift::cpu {

// The GSM backward; with fuse_coef defined ((B, T, 4, P), see BackwardBuffers in
// gate_shift_tasks.h) the backward of Gate-Shift-Fuse's gate-and-shift part.
// Returns grad_x, grad_weight, grad_bias, grad_bn_scale, grad_bn_shift.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward_impl(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved,
    const at::Tensor& fuse_coef);

}  // namespace gateshift::cpu
