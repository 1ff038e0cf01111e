// The published GSM channel order, shared by the CPU kernels, the CUDA kernels
// and their emulation so that all of them agree on it.
#pragma once

#include <cstdint>

#include "compile_target.h"

namespace gateshift {

// Where gated channel c (0 <= c < P) of x is written in the output.
//
// The published module interleaves the two halves of each group: in-group
// channel q = i * (P/4) + j (i in {0, 1}) goes to in-group position 2 * j + i.
// The "grouped" order (the paper's equations) is the identity.
GATESHIFT_HOST_DEVICE inline int64_t output_channel(int64_t c, int64_t P, bool interleaved) {
  if (!interleaved) {
    return c;
  }
  const int64_t half = P / 2, quarter = P / 4;
  const int64_t k = c >= half ? 1 : 0;
  const int64_t q = c - k * half;
  const int64_t i = q >= quarter ? 1 : 0;
  return k * half + 2 * (q - i * quarter) + i;
}

}  // namespace gateshift
