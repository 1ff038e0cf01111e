// tanh for float that GCC vectorises, so finishing a gate plane is not a loop of
// scalar library calls (which cost as much as the gate conv itself on 28x28).
//
// tanh(a) = -m / (2 + m) with m = expm1(-2a), a = |x|: no cancellation near 0
// (m is computed accurately there) and no overflow (the exponent is <= 0).
// expm1(y) = 2^k * (expm1(r) + 1) - 1 with y = k ln2 + r, |r| <= ln2 / 2, and
// expm1(r) by its Taylor series to r^8, whose truncation error is below 2e-8
// relative. Measured against std::tanh in double over [-12, 12]: within 3 ulp.
// float64 keeps std::tanh: it is the precision reference (gradcheck).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace gateshift::cpu {

__attribute__((always_inline)) inline float tanh_vectorizable(float x) {
  // tanh(9.02) rounds to 1.0f already; clamping keeps 2^k a normal number.
  // (Comparisons, not std::fmin/std::nearbyint: those are library calls here.)
  const float abs_x = std::fabs(x);
  const float a = abs_x > 9.5f ? 9.5f : abs_x;
  const float y = -2.0f * a;
  // k = round(y / ln2): adding 1.5 * 2^23 rounds to an integer, which then sits in
  // the low mantissa bits (float-to-int conversions would stop GCC vectorising).
  constexpr float kRound = 12582912.0f;
  const float shifted = y * 1.44269504088896341f + kRound;
  const int32_t k_int = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRound);
  const float k = shifted - kRound;
  // r = y - k ln2 in two steps (ln2 = hi + lo, hi exact in float) for precision.
  const float r = (y - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;
  float p = 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r * r + r;  // expm1(r)
  const float two_k = std::bit_cast<float>((k_int + 127) << 23);
  const float m = two_k * p + (two_k - 1.0f);  // expm1(y); 2^k - 1 is exact for k >= -24
  const float t = -m / (2.0f + m);
  // copysign keeps the sign of zero and makes tanh(NaN) NaN, as std::tanh does.
  return x != x ? x : std::copysign(t, x);
}

__attribute__((always_inline)) inline double tanh_vectorizable(double x) {
  return std::tanh(x);
}

}  // namespace gateshift::cpu
