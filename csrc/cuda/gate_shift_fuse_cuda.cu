// CUDA implementation of the Gate-Shift-Fuse ops (gate_shift_fuse_launch.h).

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_backend.h"
#include "gate_shift_fuse_launch.h"

namespace gateshift::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_shift_fuse_forward_cuda(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    const at::Tensor& fuse_bias,
    int64_t channels,
    bool interleaved) {
  check_on_cuda(x, "gate_shift_fuse");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return gate_shift_fuse_forward(backend, x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, channels,
                                 interleaved);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gate_shift_fuse_backward_cuda(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& fusion,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    int64_t channels,
    bool interleaved) {
  check_on_cuda(x, "gate_shift_fuse_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return gate_shift_fuse_backward(backend, grad_out, x, gates, fusion, weight, bn_scale, bn_shift, fuse_weight,
                                  channels, interleaved);
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("gate_shift_fuse_forward", &gate_shift_fuse_forward_cuda);
  m.impl("gate_shift_fuse_backward", &gate_shift_fuse_backward_cuda);
}

}  // namespace gateshift::cuda
