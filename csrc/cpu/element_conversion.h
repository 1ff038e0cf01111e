// Conversions between a tensor's element type and the accumulation type in the CPU
// kernels' element loops.
//
// c10::Half and c10::BFloat16 convert through the structs' constructor and operator.
// Inside a `#pragma omp simd` loop GCC gives every struct temporary one copy per lane
// (an "omp simd array") before it inlines them, and then cannot vectorise the loop:
// float16 and bfloat16 data ran element by element, their conversions most of the
// time. These helpers call c10's own conversion functions on the raw bits, so the
// values are c10's, with no struct temporary. float and double are plain casts.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "../common/compile_target.h"

namespace gateshift::cpu {

// v in acc_t (exact: every element type widens without rounding).
template <typename acc_t, typename scalar_t>
GATESHIFT_ALWAYS_INLINE acc_t widen(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return c10::detail::fp16_ieee_to_fp32_value(v.x);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return c10::detail::f32_from_bits(v.x);
  } else {
    return static_cast<acc_t>(v);
  }
}

// dst = v rounded to dst's type (to nearest, ties to even), as static_cast<scalar_t>(v).
template <typename scalar_t, typename acc_t>
GATESHIFT_ALWAYS_INLINE void store_rounded(scalar_t& dst, acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    dst.x = c10::detail::fp16_ieee_from_fp32_value(v);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    dst.x = c10::detail::round_to_nearest_even(v);
  } else {
    dst = static_cast<scalar_t>(v);
  }
}

}  // namespace gateshift::cpu
