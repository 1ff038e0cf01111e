#include "checks.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>

#include "dtypes.h"

namespace gateshift {

void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 5, op, ": x must be a 5-D (B, T, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(
      is_supported_dtype(x.scalar_type()), op, ": x must be float32, float64, float16 or bfloat16, got ",
      x.scalar_type());
}

void check_parameter(const char* op, const char* name, const at::Tensor& p, at::IntArrayRef shape,
                     const at::Tensor& x, bool allow_accumulation_dtype) {
  TORCH_CHECK_VALUE(p.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", p.sizes());
  const at::ScalarType acc = accumulation_dtype(x.scalar_type());
  if (allow_accumulation_dtype) {
    TORCH_CHECK_TYPE(
        p.scalar_type() == x.scalar_type() || p.scalar_type() == acc, op, ": ", name,
        " must have the dtype of x (", x.scalar_type(), ") or ", acc, ", got ", p.scalar_type());
  } else {
    TORCH_CHECK_TYPE(
        p.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (", x.scalar_type(),
        "), got ", p.scalar_type());
  }
  TORCH_CHECK_VALUE(
      p.device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(), "), got ", p.device());
}

void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(
      t.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(
      t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (", x.scalar_type(),
      "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(
      t.device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(), "), got ", t.device());
}

void check_accumulation_table(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                              const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  const at::ScalarType acc = accumulation_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(
      t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for x of dtype ", x.scalar_type(), ", got ",
      t.scalar_type());
  TORCH_CHECK_VALUE(
      t.device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(), "), got ", t.device());
}

bool has_contiguous_planes(const at::Tensor& t) {
  const int64_t h = t.size(-2), w = t.size(-1);
  return (w <= 1 || t.stride(-1) == 1) && (h <= 1 || t.stride(-2) == w);
}

bool is_broadcast(const at::Tensor& t) {
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) == 0) {
      return true;
    }
  }
  return false;
}

at::Tensor with_contiguous_planes(const at::Tensor& t) {
  if (has_contiguous_planes(t)) {
    return t;
  }
  // A broadcast tensor (a zero stride: the gradient of out.sum(), say) is materialised
  // by any kernel that reads it; only layouts a network chose are worth the warning.
  if (!is_broadcast(t)) {
    TORCH_WARN_ONCE(
        "gateshift: an input of shape ", t.sizes(), " and strides ", t.strides(),
        " has (H, W) planes that are not contiguous (channels_last on CUDA, a channel slice of it, say): the fused "
        "ops copy it to contiguous planes first, one extra read and write of its size. (Shown once.)");
  }
  return t.contiguous();
}

bool has_pixel_major_frames(const at::Tensor& t) {
  if (has_contiguous_planes(t)) {
    return false;
  }
  const int64_t C = t.size(2), H = t.size(3), W = t.size(4);
  return (C <= 1 || t.stride(2) == 1) && (W <= 1 || t.stride(4) == C) && (H <= 1 || t.stride(3) == W * C);
}

PlaneStrides plane_strides(const at::Tensor& t) {
  return PlaneStrides{t.stride(0), t.stride(1), t.stride(2)};
}

PlaneGrid plane_grid(const at::Tensor& t) {
  return PlaneGrid{t.size(0), t.size(1), t.size(2), t.size(3) * t.size(4)};
}

std::vector<int64_t> output_strides(const at::Tensor& x) {
  if (x.is_non_overlapping_and_dense()) {
    return x.strides().vec();
  }
  std::array<int64_t, 3> order{0, 1, 2};  // B, T, C: outermost first
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  std::vector<int64_t> strides(5);
  strides[4] = 1;
  strides[3] = std::max<int64_t>(x.size(4), 1);
  int64_t step = strides[3] * std::max<int64_t>(x.size(3), 1);
  for (int i = 2; i >= 0; --i) {
    strides[order[i]] = step;
    step *= std::max<int64_t>(x.size(order[i]), 1);
  }
  return strides;
}

at::Tensor contiguous(const at::Tensor& t) {
  return t.contiguous();
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

std::optional<at::Tensor> in_accumulation_dtype(const std::optional<at::Tensor>& t, const at::Tensor& x) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(accumulation_dtype(x.scalar_type())).contiguous())
                       : std::nullopt;
}

}  // namespace gateshift
