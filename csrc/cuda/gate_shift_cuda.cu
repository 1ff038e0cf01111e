// CUDA implementation of the gate-shift ops: the launcher recipe around the
// kernels of gate_shift_kernel.cuh. Device guard, the current stream, an early
// return on empty input (in gate_shift_launch.h), the launch, a launch check.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <utility>

#include "gate_shift_launch.h"

namespace gateshift::cuda {
namespace {

class CudaBackend {
 public:
  explicit CudaBackend(const at::Tensor& x)
      : device_(x.device().index()), stream_(c10::cuda::getCurrentCUDAStream(x.device().index()).stream()) {}

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) const {
    return at::empty(sizes, options);
  }
  at::Tensor empty_like(const at::Tensor& t) const {
    return at::empty_like(t);
  }
  int64_t num_sms() const {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device_));
    return count;
  }
  template <typename... KernelArgs, typename... Args>
  void launch(void (*kernel)(KernelArgs...), int64_t blocks, int threads, size_t shared, Args&&... args) const {
    if (shared > 48 * 1024) {  // beyond the default: the kernel must opt in
      C10_CUDA_CHECK(cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    }
    kernel<<<static_cast<unsigned>(blocks), threads, shared, stream_>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

 private:
  c10::DeviceIndex device_;
  cudaStream_t stream_;
};

void check_on_cuda(const at::Tensor& x) {
  // The op dispatches here when any argument is a CUDA tensor; x decides the device.
  TORCH_CHECK_VALUE(x.is_cuda(), "gate_shift: x must be a CUDA tensor like the other arguments, got ", x.device());
}

std::tuple<at::Tensor, at::Tensor> gate_shift_forward_cuda(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  check_on_cuda(x);
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
  check_on_cuda(x);
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
