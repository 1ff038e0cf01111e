// The real CUDA backend of the shared launch code (gate_shift_launch.h,
// batch_stats_launch.h): device memory, the current stream, launch checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <utility>

#include "../gate_shift_checks.h"

namespace gateshift::cuda {

class CudaBackend {
 public:
  explicit CudaBackend(const at::Tensor& x)
      : device_(x.device().index()), stream_(c10::cuda::getCurrentCUDAStream(x.device().index()).stream()) {}

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) const {
    return at::empty(sizes, options);
  }
  at::Tensor empty_output_like(const at::Tensor& x) const {
    return gateshift::empty_output_like(x);
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

// An op dispatches to CUDA when any argument is a CUDA tensor; x decides the device.
inline void check_on_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor like the other arguments, got ", x.device());
}

}  // namespace gateshift::cuda
