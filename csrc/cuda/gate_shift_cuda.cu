// CUDA implementation of the gate-shift ops: the launcher recipe around the
// kernels of gate_shift_kernel.cuh. Device guard, the current stream, an early
// return on empty input (in gate_shift_launch.h), the launch, a launch check.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_backend.h"
#include "gate_shift_launch.h"

namespace gateshift::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> gate_shift_forward_cuda(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  check_on_cuda(x, "gate_shift");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return gate_shift_forward(backend, x, weight, bias, bn_scale, bn_shift, channels, interleaved);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward_cuda(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  check_on_cuda(x, "gate_shift");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return gate_shift_backward(backend, grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved);
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("gate_shift_forward", &gate_shift_forward_cuda);
  m.impl("gate_shift_backward", &gate_shift_backward_cuda);
}

}  // namespace gateshift::cuda
