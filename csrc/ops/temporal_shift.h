// TSM's temporal shift: its argument check, params struct and one checked entry,
// shared by every backend (ops/backend.h). Its backward is the op itself with
// reverse = true (the shift's adjoint), registered as such from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../common/checks.h"
#include "backend.h"

namespace gateshift {

struct TemporalShiftParams {
  at::Tensor x;    // (B, T, C, H, W), as frames_input gave it
  at::Tensor out;  // x's sizes, output_strides(x)
  int64_t fold;    // channels [0, fold) take frame t + 1 (t - 1 reversed), [fold, 2 fold) the other
  bool reverse;
  at::ScalarType scalar_type() const {
    return x.scalar_type();
  }
};

namespace ops {

template <class Backend>
at::Tensor temporal_shift(const at::Tensor& x, int64_t fold, bool reverse) {
  constexpr const char* op = "temporal_shift";
  Backend backend(op, x);
  check_x(op, x);
  // fold > C / 2 leaves fewer than fold channels for the second group (none at fold = C:
  // TSM's fold_div = 1, where every channel takes the next frame), as in the published code.
  TORCH_CHECK_VALUE(fold >= 0 && fold <= x.size(2), op, ": fold must be in [0, C] for C = ", x.size(2), ", got ", fold);
  TemporalShiftParams p;
  p.x = frames_input(backend, x);
  p.out = empty_output_like(backend, p.x);
  p.fold = fold;
  p.reverse = reverse;
  if (p.x.numel() != 0) {
    backend.run(p);
  }
  return p.out;
}

}  // namespace ops
}  // namespace gateshift
