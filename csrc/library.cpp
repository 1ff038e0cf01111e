// The gateshift operator library: every op's schema (ops/op_table.h), defined once
// for all backends.
//
// Each backend registers the ops' checked entries (ops/<op>.h) for its dispatch
// key in its own files (cpu/<op>.cpp, cuda/<op>.cu); autograd and the fake (meta)
// implementations are registered from Python (gateshift/_ops.py).

#include <torch/library.h>

#include "ops/op_table.h"

TORCH_LIBRARY(gateshift, m) {
#define GATESHIFT_DEFINE_OP(name, schema) m.def(schema, {at::Tag::pt2_compliant_tag});
  GATESHIFT_FOR_EACH_OP(GATESHIFT_DEFINE_OP)
#undef GATESHIFT_DEFINE_OP
}
