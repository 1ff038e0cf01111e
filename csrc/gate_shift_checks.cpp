#include "gate_shift_checks.h"

#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>

#include <utility>
#include <vector>

namespace gateshift {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType accumulation_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// allow_accumulation_dtype: the folded BatchNorm affine may also come in float32
// for half-precision x, so that its gradients (sums over B*T*H*W elements) are
// not rounded to half precision before they reach the batch statistics.
void check_parameter(
    const at::Tensor& p,
    const char* name,
    at::IntArrayRef expected_shape,
    const at::Tensor& x,
    bool allow_accumulation_dtype = false) {
  TORCH_CHECK_VALUE(
      p.sizes() == expected_shape,
      "gate_shift: ", name, " must have shape ", expected_shape, ", got ", p.sizes());
  if (allow_accumulation_dtype) {
    TORCH_CHECK_TYPE(
        p.scalar_type() == x.scalar_type() || p.scalar_type() == accumulation_dtype(x.scalar_type()),
        "gate_shift: ", name, " must have the dtype of x (", x.scalar_type(), ") or ",
        accumulation_dtype(x.scalar_type()), ", got ", p.scalar_type());
  } else {
    TORCH_CHECK_TYPE(
        p.scalar_type() == x.scalar_type(),
        "gate_shift: ", name, " must have the dtype of x (", x.scalar_type(), "), got ",
        p.scalar_type());
  }
  TORCH_CHECK_VALUE(
      p.device() == x.device(),
      "gate_shift: ", name, " must be on the device of x (", x.device(), "), got ", p.device());
}

GateShiftSizes check_common(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  TORCH_CHECK_VALUE(
      x.dim() == 5, "gate_shift: x must be a 5-D (B, T, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(
      is_supported_dtype(x.scalar_type()),
      "gate_shift: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  const GateShiftSizes s{x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), channels};
  TORCH_CHECK_VALUE(
      channels >= 2 && channels % 2 == 0 && channels <= s.channels,
      "gate_shift: channels must be even, positive and at most C = ", s.channels, ", got ",
      channels);
  TORCH_CHECK_VALUE(
      !interleaved || channels % 4 == 0,
      "gate_shift: the interleaved channel order needs channels % 4 == 0, got channels = ",
      channels);
  check_parameter(weight, "weight", {2, channels / 2, 3, 3, 3}, x);
  TORCH_CHECK_VALUE(
      bn_scale.has_value() == bn_shift.has_value(),
      "gate_shift: bn_scale and bn_shift must be given together");
  if (bn_scale.has_value()) {
    check_parameter(*bn_scale, "bn_scale", {channels}, x, /*allow_accumulation_dtype=*/true);
    check_parameter(*bn_shift, "bn_shift", {channels}, x, /*allow_accumulation_dtype=*/true);
    TORCH_CHECK_TYPE(
        bn_scale->scalar_type() == bn_shift->scalar_type(), "gate_shift: bn_scale (",
        bn_scale->scalar_type(), ") and bn_shift (", bn_shift->scalar_type(), ") must have the same dtype");
  }
  return s;
}

}  // namespace

bool has_contiguous_planes(const at::Tensor& t) {
  const int64_t h = t.size(-2), w = t.size(-1);
  return (w <= 1 || t.stride(-1) == 1) && (h <= 1 || t.stride(-2) == w);
}

at::Tensor with_contiguous_planes(const at::Tensor& t) {
  return has_contiguous_planes(t) ? t : t.contiguous();
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

at::Tensor empty_output_like(const at::Tensor& x) {
  return at::empty_strided(x.sizes(), output_strides(x), x.options());
}

GateShiftSizes check_forward_args(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s = check_common(x, weight, bn_scale, bn_shift, channels, interleaved);
  if (bias.has_value()) {
    check_parameter(*bias, "bias", {2}, x);
  }
  return s;
}

GateShiftSizes check_backward_args(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s = check_common(x, weight, bn_scale, bn_shift, channels, interleaved);
  TORCH_CHECK_VALUE(
      grad_out.sizes() == x.sizes(),
      "gate_shift_backward: grad_out must have the shape of x ", x.sizes(), ", got ",
      grad_out.sizes());
  TORCH_CHECK_TYPE(
      grad_out.scalar_type() == x.scalar_type(),
      "gate_shift_backward: grad_out must have the dtype of x (", x.scalar_type(), "), got ",
      grad_out.scalar_type());
  TORCH_CHECK_VALUE(
      grad_out.device() == x.device(),
      "gate_shift_backward: grad_out must be on the device of x (", x.device(), "), got ",
      grad_out.device());
  const std::vector<int64_t> gates_shape{s.batch, s.frames, 2, s.height, s.width};
  TORCH_CHECK_VALUE(
      gates.sizes() == at::IntArrayRef(gates_shape),
      "gate_shift_backward: gates must have shape ", at::IntArrayRef(gates_shape), ", got ",
      gates.sizes());
  TORCH_CHECK_TYPE(
      gates.scalar_type() == accumulation_dtype(x.scalar_type()),
      "gate_shift_backward: gates must be ", accumulation_dtype(x.scalar_type()),
      " for x of dtype ", x.scalar_type(), ", got ", gates.scalar_type());
  TORCH_CHECK_VALUE(
      gates.device() == x.device(),
      "gate_shift_backward: gates must be on the device of x (", x.device(), "), got ",
      gates.device());
  return s;
}

int64_t check_batch_stats_args(const at::Tensor& x, int64_t channels) {
  TORCH_CHECK_VALUE(
      x.dim() == 5, "batch_stats: x must be a 5-D (B, T, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(
      is_supported_dtype(x.scalar_type()),
      "batch_stats: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(
      channels >= 1 && channels <= x.size(2),
      "batch_stats: channels must be in [1, C = ", x.size(2), "], got ", channels);
  return x.size(0) * x.size(1) * x.size(3) * x.size(4);
}

int64_t check_batch_stats_backward_args(
    const at::Tensor& grad_mean,
    const at::Tensor& grad_var,
    const at::Tensor& x,
    const at::Tensor& mean,
    int64_t channels) {
  const int64_t count = check_batch_stats_args(x, channels);
  const at::ScalarType acc = accumulation_dtype(x.scalar_type());
  for (const auto& [t, name] :
       {std::pair<const at::Tensor&, const char*>{grad_mean, "grad_mean"},
        {grad_var, "grad_var"},
        {mean, "mean"}}) {
    TORCH_CHECK_VALUE(
        t.dim() == 1 && t.size(0) == channels, "batch_stats_backward: ", name,
        " must have shape (", channels, "), got ", t.sizes());
    TORCH_CHECK_TYPE(
        t.scalar_type() == acc, "batch_stats_backward: ", name, " must be ", acc,
        " for x of dtype ", x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(
        t.device() == x.device(), "batch_stats_backward: ", name,
        " must be on the device of x (", x.device(), "), got ", t.device());
  }
  return count;
}

void check_fuse_args(const at::Tensor& x, const at::Tensor& fuse_weight, const std::optional<at::Tensor>& fuse_bias) {
  check_parameter(fuse_weight, "fuse_weight", {2, 2, 3, 3}, x);
  if (fuse_bias.has_value()) {
    check_parameter(*fuse_bias, "fuse_bias", {2}, x);
  }
}

void check_fusion_table(const at::Tensor& fusion, const GateShiftSizes& s, const at::Tensor& x) {
  const std::vector<int64_t> shape{s.batch, s.frames, 3, s.gated};
  TORCH_CHECK_VALUE(
      fusion.sizes() == at::IntArrayRef(shape), "gate_shift_fuse_backward: fusion must have shape ",
      at::IntArrayRef(shape), ", got ", fusion.sizes());
  TORCH_CHECK_TYPE(
      fusion.scalar_type() == accumulation_dtype(x.scalar_type()), "gate_shift_fuse_backward: fusion must be ",
      accumulation_dtype(x.scalar_type()), " for x of dtype ", x.scalar_type(), ", got ", fusion.scalar_type());
  TORCH_CHECK_VALUE(
      fusion.device() == x.device(), "gate_shift_fuse_backward: fusion must be on the device of x (", x.device(),
      "), got ", fusion.device());
}

void check_temporal_shift_args(const at::Tensor& x, int64_t fold) {
  TORCH_CHECK_VALUE(
      x.dim() == 5, "temporal_shift: x must be a 5-D (B, T, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(
      is_supported_dtype(x.scalar_type()),
      "temporal_shift: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  // fold > C / 2 leaves fewer than fold channels for the second group (none at fold = C:
  // TSM's fold_div = 1, where every channel takes the next frame), as in the published code.
  TORCH_CHECK_VALUE(
      fold >= 0 && fold <= x.size(2),
      "temporal_shift: fold must be in [0, C] for C = ", x.size(2), ", got ", fold);
}

}  // namespace gateshift
