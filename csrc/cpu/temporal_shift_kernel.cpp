// CPU kernel of TSM's temporal shift: one plane copy (or zero fill) per
// (clip, frame, channel), in parallel. The backward is the same kernel with the
// directions swapped (reverse), the shift's adjoint.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../gate_shift_checks.h"

namespace gateshift {
namespace {

template <typename scalar_t>
void shift_planes(const at::Tensor& x, at::Tensor& out, int64_t fold, bool reverse) {
  const int64_t T = x.size(1), C = x.size(2), HW = x.size(3) * x.size(4);
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  // The first fold takes from frame t + 1 (t - 1 when reversed), the second from t - 1.
  const int64_t first = reverse ? -1 : 1;
  at::parallel_for(0, x.size(0) * T * C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
      const int64_t step = c < fold ? first : (c < 2 * fold ? -first : 0);
      scalar_t* o = dst + b * out.stride(0) + t * out.stride(1) + c * out.stride(2);
      const int64_t ts = t + step;
      if (ts < 0 || ts >= T) {
        std::fill(o, o + HW, scalar_t(0));
      } else {
        const scalar_t* i = src + b * x.stride(0) + ts * x.stride(1) + c * x.stride(2);
        std::copy(i, i + HW, o);
      }
    }
  });
}

at::Tensor temporal_shift_cpu(const at::Tensor& x_in, int64_t fold, bool reverse) {
  check_temporal_shift_args(x_in, fold);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor out = empty_output_like(x);
  if (x.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_shift_cpu", [&] {
    shift_planes<scalar_t>(x, out, fold, reverse);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("temporal_shift", &temporal_shift_cpu);
}

}  // namespace gateshift
