// CUDA implementation of the batch-statistics ops (batch_stats_kernel.cuh).

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "batch_stats_launch.h"
#include "cuda_backend.h"

namespace gateshift::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> batch_stats_cuda(const at::Tensor& x, int64_t channels) {
  check_on_cuda(x, "batch_stats");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return batch_stats(backend, x, channels);
}

at::Tensor batch_stats_backward_cuda(
    const at::Tensor& grad_mean,
    const at::Tensor& grad_var,
    const at::Tensor& x,
    const at::Tensor& mean,
    int64_t channels) {
  check_on_cuda(x, "batch_stats_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  CudaBackend backend(x);
  return batch_stats_backward(backend, grad_mean, grad_var, x, mean, channels);
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("batch_stats", &batch_stats_cuda);
  m.impl("batch_stats_backward", &batch_stats_backward_cuda);
}

}  // namespace gateshift::cuda
