// The temporal shift's planes over the CPU threads.
#pragma once

#include <ATen/Parallel.h>

#include "../common/checks.h"
#include "../ops/temporal_shift.h"
#include "backend.h"
#include "temporal_shift_kernel.h"

namespace gateshift::cpu {

template <typename scalar_t>
void launch(Backend& /*cpu*/, const TemporalShiftParams& p) {
  const Frames<const scalar_t> x = frames<const scalar_t>(p.x);
  const Frames<scalar_t> out = frames<scalar_t>(p.out);
  const int64_t B = p.x.size(0), T = p.x.size(1), C = x.C, first = p.reverse ? -1 : 1;
  if (x.pixel_major && out.pixel_major) {
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      shift_pixel_major_frames<scalar_t>(x, out, T, p.fold, first, begin, end);
    });
    return;
  }
  // Otherwise the output has contiguous planes (output_strides: a pixel-major output
  // comes of a dense pixel-major x), and x's planes are read as they are or staged.
  TORCH_INTERNAL_ASSERT(!out.pixel_major, "temporal_shift: a pixel-major output of an x that is not");
  at::parallel_for(0, B * T * C, 64, [&](int64_t begin, int64_t end) {
    shift_planes<scalar_t>(x, out, T, p.fold, first, begin, end);
  });
}

}  // namespace gateshift::cpu
