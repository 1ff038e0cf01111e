// CUDA implementation of the temporal-shift op (temporal_shift_kernel.cuh).

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_backend.h"
#include "temporal_shift_launch.h"

namespace gateshift::cuda {
namespace {

at::Tensor temporal_shift_cuda(const at::Tensor& x, int64_t fold, bool reverse) {
  check_on_cuda(x, "temporal_shift");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return temporal_shift(backend, x, fold, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("temporal_shift", &temporal_shift_cuda);
}

}  // namespace gateshift::cuda
