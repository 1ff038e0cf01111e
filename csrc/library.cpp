// The gateshift operator library: every op's schema, defined once for all backends.
//
// Backends add kernels with TORCH_LIBRARY_IMPL in their own files (cpu/, cuda/);
// autograd and the fake (meta) implementations are registered from Python
// (gateshift/_ops.py).
//
// The gate-shift ops take x as a 5-D view (B, T, C, H, W). The Python layer
// builds that view from the user's (B*T, C, H, W) tensor, or from a (B, C, T, H, W)
// tensor by a permute, so one kernel serves both layouts without copies: kernels
// need only each (H, W) plane to be contiguous and use 64-bit strides for B, T, C.

#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(gateshift, m) {
  m.def(gateshift::schemas::kGateShiftForward, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kGateShiftBackward, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kBatchStats, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kBatchStatsBackward, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kGateShiftFuseForward, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kGateShiftFuseBackward, {at::Tag::pt2_compliant_tag});
  m.def(gateshift::schemas::kTemporalShift, {at::Tag::pt2_compliant_tag});
}
