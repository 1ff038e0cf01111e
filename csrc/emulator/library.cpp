// The gateshift CUDA kernels, executed on the CPU by the emulator (tests only).
//
// Defines the ops of the `gateshift_emulated` library from the same op table as
// the `gateshift` library (ops/op_table.h), registers the same checked entries
// (ops/<op>.h) on the emulator's Backend (backend.h), which runs the same launch
// code as the real CUDA backend (cuda/<op>_launch.h). Importing
// gateshift._cuda_emulator loads this library; gateshift/testing/cuda_emulator.py
// wraps it like gateshift.gate_shift.

#include "backend.h"  // first: it defines GATESHIFT_CUDA_EMULATION for the device code

#include <ATen/ops/empty.h>
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <stdexcept>

#include "../ops/batch_stats.h"
#include "../ops/gate_shift.h"
#include "../ops/gate_shift_fuse.h"
#include "../ops/op_table.h"
#include "../ops/temporal_shift.h"

namespace gateshift::emulation {
namespace {

constexpr int64_t kMarginBytes = 4096;
constexpr int64_t kAlignment = 256;  // inputs keep their storage offset in bytes modulo this
constexpr uint8_t kPoison = 0xFF;  // a NaN in float16, bfloat16, float32 and float64

// Number of elements from the first to the last element of t's view, plus one.
int64_t extent(at::IntArrayRef sizes, at::IntArrayRef strides) {
  int64_t span = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) {
      return 0;
    }
    span += (sizes[d] - 1) * strides[d];
  }
  return span;
}

bool has_zero_stride(const at::Tensor& t) {
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) {
      return true;
    }
  }
  return false;
}

// The multiprocessor count the launch configuration sees; returns the previous.
int64_t set_num_sms(int64_t num_sms) {
  TORCH_CHECK_VALUE(num_sms >= 1, "set_num_sms: num_sms must be positive, got ", num_sms);
  return emulated_sms().exchange(num_sms);
}

// What the backward's partials may always take; returns the previous value.
int64_t set_min_partials_bytes(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "set_min_partials_bytes: bytes must be >= 0, got ", bytes);
  return emulated_min_partials_bytes().exchange(bytes);
}

// The order of the blocks of the launches that follow (runtime.h's BlockSchedule: 0 in
// grid order, 1 shuffled, 2 two at a time, shuffled) and their random orders' seed.
int64_t set_block_schedule_op(int64_t schedule, int64_t seed) {
  TORCH_CHECK_VALUE(schedule >= 0 && schedule <= 2, "set_block_schedule: schedule must be 0, 1 or 2, got ", schedule);
  return static_cast<int64_t>(set_block_schedule(static_cast<BlockSchedule>(schedule), static_cast<uint64_t>(seed)));
}

// The architecture whose shared-memory limits launches are checked against.
int64_t set_architecture_op(int64_t sm) {
  try {
    return set_architecture(sm);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "set_architecture: ", e.what());
  }
}

}  // namespace

at::Tensor Backend::input(const at::Tensor& t) {
  const bool overlapping = !t.is_non_overlapping_and_dense() && has_zero_stride(t);
  const at::Tensor src = overlapping ? t.contiguous() : t;
  // The offset of the data in its storage: a GPU allocation starts at a multiple of 256
  // bytes (a CPU one only of 64), so a slice's data sits this far past one there.
  const int64_t alignment = src.storage_offset() * static_cast<int64_t>(src.element_size()) % kAlignment;
  at::Tensor copy = guarded(src.sizes(), src.strides(), src.options(), "input", alignment);
  copy.copy_(src);
  return copy;
}

at::Tensor Backend::guarded(
    at::IntArrayRef sizes,
    at::IntArrayRef strides,
    const at::TensorOptions& options,
    const char* what,
    int64_t alignment) {
  const int64_t item = static_cast<int64_t>(options.dtype().itemsize());
  const int64_t view_bytes = extent(sizes, strides) * item;
  // The leading margin grows (by less than kAlignment) so that the view's first byte
  // sits `alignment` bytes past a multiple of kAlignment.
  at::Tensor buffer = at::empty({2 * kMarginBytes + kAlignment + view_bytes}, options.dtype(at::kByte));
  buffer.fill_(kPoison);
  const auto base = static_cast<int64_t>(reinterpret_cast<uintptr_t>(buffer.const_data_ptr()));
  const int64_t margin = kMarginBytes + ((alignment - (base + kMarginBytes) % kAlignment) % kAlignment + kAlignment) % kAlignment;
  guards_.push_back(Guard{buffer, margin, view_bytes, what});
  // The view's storage offset counts elements: the byte offset must be a multiple of
  // the element size, as every real tensor's data address is.
  TORCH_CHECK(margin % item == 0, "gateshift CUDA emulator: an input whose address is not a multiple of its element size");
  const at::Tensor elements = buffer.view(options.dtype().toScalarType()).narrow(0, 0, buffer.numel() / item);
  return elements.as_strided(sizes, strides, margin / item);
}

// Starts (true) or stops recording the launches, counting memory accesses when
// count_sample >= 0 (runtime.h); stopping returns the records, a line each: kernel,
// blocks, threads, shared bytes, barriers, shuffles, sampled blocks, global requests,
// global sectors, unique global bytes, shared requests, shared wavefronts, the grid's
// estimated unique global bytes (tab-separated),
// and the counts of re-requested sectors by reuse distance (comma-separated).
std::string record_launches(bool on, int64_t count_sample) {
  set_recording(on, count_sample);
  std::string text;
  if (!on) {
    for (const LaunchRecord& r : recorded_launches()) {
      text += r.kernel;
      for (const int64_t v :
           {r.blocks, static_cast<int64_t>(r.threads), static_cast<int64_t>(r.shared_bytes), r.barriers, r.shuffles,
            r.sampled_blocks, r.global_requests, r.global_sectors, r.unique_global_bytes, r.shared_requests,
            r.shared_wavefronts, r.grid_unique_global_bytes}) {
        text += "\t" + std::to_string(v);
      }
      // Then the reuse histogram as one comma-separated field.
      text += "\t";
      for (size_t k = 0; k < r.reuse_log2_bytes.size(); ++k) {
        text += (k ? "," : "") + std::to_string(r.reuse_log2_bytes[k]);
      }
      text += "\n";
    }
  }
  return text;
}

std::vector<ByteRange> Backend::buffers() const {
  std::vector<ByteRange> ranges;
  for (const Guard& g : guards_) {
    const auto first = reinterpret_cast<uintptr_t>(g.buffer.const_data_ptr()) + static_cast<uintptr_t>(g.margin);
    ranges.push_back(ByteRange{first, first + static_cast<uintptr_t>(g.view_bytes)});
  }
  return ranges;
}

void Backend::check_margins() const {
  for (const Guard& g : guards_) {
    const at::Tensor before = g.buffer.narrow(0, 0, g.margin);
    const at::Tensor after = g.buffer.narrow(0, g.margin + g.view_bytes, g.buffer.numel() - g.margin - g.view_bytes);
    TORCH_CHECK(
        before.eq(kPoison).all().item<bool>() && after.eq(kPoison).all().item<bool>(),
        "gateshift CUDA emulator: a kernel wrote outside an ", g.what, " tensor (its guard margin changed)");
  }
}

}  // namespace gateshift::emulation

TORCH_LIBRARY(gateshift_emulated, m) {
#define GATESHIFT_DEFINE_OP(name, schema) m.def(schema);
  GATESHIFT_FOR_EACH_OP(GATESHIFT_DEFINE_OP)
#undef GATESHIFT_DEFINE_OP
  m.def("set_num_sms(int num_sms) -> int", &gateshift::emulation::set_num_sms);
  m.def("set_min_partials_bytes(int bytes) -> int", &gateshift::emulation::set_min_partials_bytes);
  m.def("set_block_schedule(int schedule, int seed) -> int", &gateshift::emulation::set_block_schedule_op);
  m.def("set_architecture(int sm) -> int", &gateshift::emulation::set_architecture_op);
  m.def("record_launches(bool on, int count_sample=-1) -> str", &gateshift::emulation::record_launches);
}

TORCH_LIBRARY_IMPL(gateshift_emulated, CPU, m) {
#define GATESHIFT_REGISTER_OP(name, schema) m.impl(#name, &gateshift::ops::name<gateshift::emulation::Backend>);
  GATESHIFT_FOR_EACH_OP(GATESHIFT_REGISTER_OP)
#undef GATESHIFT_REGISTER_OP
}

PyMODINIT_FUNC PyInit__cuda_emulator(void) {  // PyMODINIT_FUNC is extern "C" in C++
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_emulator", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
