// The CPU backend of the ops' checked entries (ops/backend.h): host memory, and
// `run`, which launches an op's kernels (cpu/<op>_kernel.h) over the CPU threads
// (cpu/<op>_launch.h). cpu/<op>.cpp registers the op's entries for the CPU.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_strided.h>

#include "../common/dtypes.h"
#include "../ops/backend.h"

namespace gateshift::cpu {

class Backend {
 public:
  Backend(const char* /*op*/, const at::Tensor& /*x*/) {}

  const at::Tensor& input(const at::Tensor& t) const {
    return t;
  }
  at::Tensor empty(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) const {
    return at::empty_strided(sizes, strides, options);
  }

  // Runs an op: launch<scalar_t>(*this, p) for the dtype of its data, found in the
  // op's cpu/<op>_launch.h (the TU that registers the op includes it).
  template <class Params>
  void run(const Params& p) {
    GATESHIFT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gateshift_cpu", [&] { launch<scalar_t>(*this, p); });
  }
};

}  // namespace gateshift::cpu
