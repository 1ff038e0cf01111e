// GSM on CUDA: the registered entries (ops/gate_shift.h), launched by
// gate_shift_launch.h (the kernels, their tiling and byte counts are explained at
// the top of gate_shift_kernel.cuh).

#include <torch/library.h>

#include "../ops/gate_shift.h"
#include "backend.h"
#include "gate_shift_launch.h"

namespace gateshift::cuda {

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("gate_shift_forward", &ops::gate_shift_forward<Backend>);
  m.impl("gate_shift_backward", &ops::gate_shift_backward<Backend>);
}

}  // namespace gateshift::cuda
