// The temporal shift on the CPU: the registered entry (ops/temporal_shift.h),
// launched by temporal_shift_launch.h. Forward and backward are the same op, the
// backward reversed.

#include <torch/library.h>

#include "../ops/temporal_shift.h"
#include "backend.h"
#include "temporal_shift_launch.h"

namespace gateshift::cpu {

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("temporal_shift", &ops::temporal_shift<Backend>);
}

}  // namespace gateshift::cpu
