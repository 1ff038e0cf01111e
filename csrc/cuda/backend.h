// The CUDA backend of the ops' checked entries (ops/backend.h): device memory,
// the device guard and current stream of x, and `run`, which hands an op's params
// to its launch code (cuda/<op>_launch.h). cuda/<op>.cu registers the op's
// entries for CUDA.
//
// The launch code is written against this class's device interface
//   int64_t num_sms(), int64_t min_partials_bytes()
//   void launch_kernel(kernel, int64_t blocks, int threads, size_t shared_bytes, args...)
//   at::Tensor empty(sizes, strides, options), run(params)
// so that the CPU emulator of the kernels (emulator/backend.h) runs the very same
// launches.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_strided.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <utility>

#include "../common/dtypes.h"
#include "../ops/backend.h"

namespace gateshift::cuda {

// An op dispatches to CUDA when any argument is a CUDA tensor; x decides the device.
inline const at::Tensor& cuda_tensor(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor like the other arguments, got ", x.device());
  return x;
}

class Backend {
 public:
  static constexpr bool kPixelMajorFrames = false;  // the kernels read contiguous planes only

  Backend(const char* op, const at::Tensor& x)
      : guard_(cuda_tensor(op, x).device()), stream_(c10::cuda::getCurrentCUDAStream(x.device().index()).stream()) {}

  const at::Tensor& input(const at::Tensor& t) const {
    return t;
  }
  at::Tensor empty(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) const {
    return at::empty_strided(sizes, strides, options);
  }
  int64_t num_sms() const {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, guard_.current_device().index()));
    return count;
  }
  // What the backward's parameter-gradient partials may always take (launch_config.h).
  int64_t min_partials_bytes() const {
    return int64_t(2) << 20;
  }
  template <typename... KernelArgs, typename... Args>
  void launch_kernel(void (*kernel)(KernelArgs...), int64_t blocks, int threads, size_t shared, Args&&... args) const {
    if (shared > 48 * 1024) {  // beyond the default: the kernel must opt in
      C10_CUDA_CHECK(cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    }
    kernel<<<static_cast<unsigned>(blocks), threads, shared, stream_>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Runs an op: launch<scalar_t>(*this, p) for the dtype of its data, found in the
  // op's cuda/<op>_launch.h (the TU that registers the op includes it).
  template <class Params>
  void run(const Params& p) {
    GATESHIFT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gateshift_cuda", [&] { launch<scalar_t>(*this, p); });
  }

 private:
  c10::cuda::CUDAGuard guard_;
  cudaStream_t stream_;
};

}  // namespace gateshift::cuda
