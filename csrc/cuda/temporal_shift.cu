// The temporal shift on CUDA: the registered entry (ops/temporal_shift.h),
// launched by temporal_shift_launch.h. Forward and backward are the same op, the
// backward reversed.

#include <torch/library.h>

#include "../ops/temporal_shift.h"
#include "backend.h"
#include "temporal_shift_launch.h"

namespace gateshift::cuda {

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("temporal_shift", &ops::temporal_shift<Backend>);
}

}  // namespace gateshift::cuda
