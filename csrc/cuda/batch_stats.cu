// The batch statistics on CUDA: the registered entries (ops/batch_stats.h),
// launched by batch_stats_launch.h.

#include <torch/library.h>

#include "../ops/batch_stats.h"
#include "backend.h"
#include "batch_stats_launch.h"

namespace gateshift::cuda {

TORCH_LIBRARY_IMPL(gateshift, CUDA, m) {
  m.impl("batch_stats", &ops::batch_stats<Backend>);
  m.impl("batch_stats_backward", &ops::batch_stats_backward<Backend>);
  m.impl("batch_stats_backward_", &ops::batch_stats_backward_<Backend>);
}

}  // namespace gateshift::cuda
