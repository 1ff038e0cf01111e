// The dtypes the kernels are built for, and the accumulation rule, in one place
// for every backend: sums, gates, statistics and the folded BatchNorm affine are
// kept in float for float, float16 and bfloat16 data, and in double for double
// (as ATen's opmath_type).
#pragma once

#include <c10/core/ScalarType.h>

namespace gateshift {

template <typename scalar_t>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccumulateType<scalar_t>::type;

// The same rule for a tensor's dtype (host code).
inline c10::ScalarType accumulation_dtype(c10::ScalarType data) {
  return data == c10::kDouble ? c10::kDouble : c10::kFloat;
}

inline bool is_supported_dtype(c10::ScalarType data) {
  return data == c10::kFloat || data == c10::kDouble || data == c10::kHalf || data == c10::kBFloat16;
}

}  // namespace gateshift

// Runs the lambda with scalar_t set to the C++ type of `dtype`, one of the
// supported dtypes (host code; needs ATen/Dispatch.h).
#define GATESHIFT_DISPATCH_FLOATING_TYPES(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)
