// Gate-Shift-Fuse on CUDA: the registered entries (ops/gate_shift_fuse.h),
// launched by gate_shift_fuse_launch.h (the passes are explained at the top of
// gate_shift_fuse_kernel.cuh).

#include <torch/library.h>

#include "../ops/gate_shift_fuse.h"
#include "backend.h"
#include "gate_shift_fuse_launch.h"

namespace gateshift::cuda {

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("gate_shift_fuse_forward", &ops::gate_shift_fuse_forward<Backend>);
  m.impl("gate_shift_fuse_backward", &ops::gate_shift_fuse_backward<Backend>);
}

}  // namespace gateshift::cuda
