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
  // Clamp and NaN test on the bits as integers (a non-negative float orders as its
  // bits do; NaNs' bits are above infinity's): GCC if-converts a float comparison
  // (which may trap) only where AVX-512 masks it, so with `abs_x > 9.5f ? ...` the
  // AVX2 clone ran this loop in scalar code. setup.py's -fno-trapping-math lifts that;
  // this form does not depend on the flag. (std::fmin is a library call here.)
  const int32_t abs_bits = std::bit_cast<int32_t>(std::fabs(x));
  constexpr int32_t kCap = std::bit_cast<int32_t>(9.5f), kInfinity = std::bit_cast<int32_t>(INFINITY);
  const float a = std::bit_cast<float>(abs_bits < kCap ? abs_bits : kCap);
  // All ones for a NaN x (bits above infinity's), else 0: a shift, not a select, which
  // GCC would turn into a branch around the division.
  const int32_t nan_mask = (kInfinity - abs_bits) >> 31;
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
  // copysign keeps the sign of zero; a NaN x's bits ORed in make the result NaN (tanh
  // of the clamp is about 1, whose bits are within a quiet NaN's), as std::tanh's is.
  return std::bit_cast<float>(std::bit_cast<int32_t>(std::copysign(t, x)) | (nan_mask & abs_bits));
}

__attribute__((always_inline)) inline double tanh_vectorizable(double x) {
  return std::tanh(x);
}

}  // namespace gateshift::cpu
