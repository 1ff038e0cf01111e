// GSM on the CPU: the registered entries (ops/gate_shift.h), launched by
// gate_shift_launch.h (which explains the work split; the kernels and their
// layouts are in gate_shift_kernel.h).

#include <torch/library.h>

#include "../ops/gate_shift.h"
#include "backend.h"
#include "gate_shift_launch.h"

namespace gateshift::cpu {

// The backward's one instantiation per dtype (gate_shift_launch.h declares them).
template void launch<float>(Backend&, const GateShiftBackwardParams&);
template void launch<double>(Backend&, const GateShiftBackwardParams&);
template void launch<c10::Half>(Backend&, const GateShiftBackwardParams&);
template void launch<c10::BFloat16>(Backend&, const GateShiftBackwardParams&);

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("gate_shift_forward", &ops::gate_shift_forward<Backend>);
  m.impl("gate_shift_backward", &ops::gate_shift_backward<Backend>);
}

namespace {

// Test-only: caps each thread's CPU scratch at `bytes`, so that tests can make the
// kernels tile small planes; 0 restores the default. Returns the old cap.
int64_t set_cpu_scratch_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "_set_cpu_scratch_limit: bytes must be >= 0, got ", bytes);
  return scratch_limit_override.exchange(bytes);
}

// Test-only: runs the register-blocked loops (register_blocked_correlation.h) in the
// vector shape of `bits`-bit registers, 512 (AVX-512), 256 (AVX2) or 128 (NEON, SSE),
// whatever this CPU has; 0 restores this CPU's own. Returns the previous setting.
int64_t set_cpu_vector_bits(int64_t bits) {
  int shape = -1;
  switch (bits) {
    case 0: break;
    case 512: shape = static_cast<int>(VectorShape::k512x32); break;
    case 256: shape = static_cast<int>(VectorShape::k256x16); break;
    case 128: shape = static_cast<int>(VectorShape::k128x32); break;
    default: TORCH_CHECK_VALUE(false, "_set_cpu_vector_bits: bits must be 0, 128, 256 or 512, got ", bits);
  }
  switch (vector_shape_override.exchange(shape)) {
    case static_cast<int>(VectorShape::k512x32): return 512;
    case static_cast<int>(VectorShape::k256x16): return 256;
    case static_cast<int>(VectorShape::k128x32): return 128;
    default: return 0;
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gateshift, m) {
  m.def("_set_cpu_scratch_limit(int bytes) -> int", &set_cpu_scratch_limit);
  m.def("_set_cpu_vector_bits(int bits) -> int", &set_cpu_vector_bits);
}

}  // namespace gateshift::cpu
