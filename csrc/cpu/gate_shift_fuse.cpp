// Gate-Shift-Fuse on the CPU: the registered entries (ops/gate_shift_fuse.h),
// launched by gate_shift_fuse_launch.h (the passes are explained in
// gate_shift_fuse_kernel.h).

#include <torch/library.h>

#include "../ops/gate_shift_fuse.h"
#include "backend.h"
#include "gate_shift_fuse_launch.h"

namespace gateshift::cpu {

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("gate_shift_fuse_forward", &ops::gate_shift_fuse_forward<Backend>);
  m.impl("gate_shift_fuse_backward", &ops::gate_shift_fuse_backward<Backend>);
}

}  // namespace gateshift::cpu
