// Test-only ops that run small, deliberately broken device code under the emulator
// (runtime.h), so that tests/test_cuda_emulator.py can show each of its checks fails
// when it should: barriers and shuffles met from two call sites, writes and reads
// past a block's shared memory, shared-memory requests over the limits, and inputs
// whose address is not 256-byte aligned; and one warp's access of a known pattern,
// whose counted sectors and wavefronts the tests derive.

#include "backend.h"  // first: it defines GATESHIFT_CUDA_EMULATION for the device code

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gateshift::emulation {
namespace {

// Runs the named case; returns what its thread 0 read (the read cases), else 0.
double run_selftest(const std::string& name) {
  double read = 0;
  if (name == "syncthreads_one_site") {  // fine: every thread meets each barrier at one line
    launch(1, 64, 0, [] {
      for (int i = 0; i < 3; ++i) {
        __syncthreads();
      }
    });
  } else if (name == "syncthreads_two_sites") {  // half the block at one barrier, half at another
    launch(1, 64, 0, [] {
      if (threadIdx.x < 32) {
        __syncthreads();
      } else {
        __syncthreads();
      }
    });
  } else if (name == "shuffle_two_sites") {
    launch(1, 32, 0, [] {
      float v = 1.0f;
      if (threadIdx.x < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      }
    });
  } else if (name == "shared_write_past_end" || name == "shared_write_before_start") {
    const bool past = name == "shared_write_past_end";
    launch(1, 32, 128, [past] {
      unsigned char* shared = dynamic_shared_memory();
      if (threadIdx.x == 0) {
        shared[past ? 128 : -1] = 0;
      }
    });
  } else if (name == "shared_read_past_end") {
    launch(1, 32, 128, [&read] {
      const float* shared = reinterpret_cast<const float*>(dynamic_shared_memory());
      if (threadIdx.x == 0) {
        read = shared[32];  // the first float past the block's 128 bytes
      }
    });
  } else {
    TORCH_CHECK_VALUE(false, "_runtime_selftest: unknown case '", name, "'");
  }
  return read;
}

void check_shared(int64_t bytes, bool opt_in) {
  TORCH_CHECK_VALUE(bytes >= 0, "_check_shared_request: bytes must be >= 0, got ", bytes);
  try {
    check_shared_request(static_cast<std::size_t>(bytes), opt_in);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

// The address, modulo 256 bytes, at which the emulator's copy of t starts (t's storage
// offset in bytes, modulo 256, as on a GPU).
int64_t input_alignment(const at::Tensor& t) {
  Backend backend("_input_alignment", t);
  return static_cast<int64_t>(reinterpret_cast<uintptr_t>(backend.input(t).const_data_ptr()) % 256);
}

// Runs `blocks` blocks of 64 threads under the current schedule; returns the blocks in
// the order they started, then the most blocks that ran at once.
std::vector<int64_t> block_order(int64_t blocks) {
  TORCH_CHECK_VALUE(blocks >= 1, "_block_order: blocks must be >= 1, got ", blocks);
  std::mutex mutex;
  std::vector<int64_t> started;
  int64_t running = 0, most = 0;
  launch(blocks, 64, 0, [&] {
    if (threadIdx.x == 0) {
      std::lock_guard<std::mutex> lock(mutex);
      started.push_back(blockIdx.x);
      most = std::max(most, ++running);
    }
    __syncthreads();  // every block's thread 0 has counted itself before any leaves
    __syncthreads();
    if (threadIdx.x == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a block that runs alongside is seen
      std::lock_guard<std::mutex> lock(mutex);
      --running;
    }
  });
  started.push_back(most);
  return started;
}

template <std::size_t bytes>
struct Element {
  unsigned char value[bytes];
};

// One warp in which lane l reads element l * stride of an array (stride 0: all lanes
// the same element) in shared memory ("shared") or in a 256-byte aligned global
// buffer ("global") starting offset_bytes past the alignment, through device_ptr, as
// kernels do; element_bytes 4, 8 or 16.
template <std::size_t bytes>
void warp_reads(bool shared, int64_t stride, int64_t offset_bytes) {
  const std::size_t span = static_cast<std::size_t>(offset_bytes + (31 * stride + 1) * static_cast<int64_t>(bytes));
  std::vector<unsigned char> global(span + 256);
  auto* aligned = global.data() + (256 - reinterpret_cast<uintptr_t>(global.data()) % 256) % 256;
  launch(1, 32, shared ? span : 0, [&] {
    unsigned char* base = (shared ? dynamic_shared_memory() : aligned) + offset_bytes;
    const device_ptr<Element<bytes>> array = reinterpret_cast<Element<bytes>*>(base);
    volatile unsigned char sink = array[threadIdx.x * stride].value[0];
    (void)sink;
  });
}

// One warp reading 4 rows of 32 floats in a loop, lane l element l of each, except
// that lanes skip_lane and skip_lane + 1 skip row skip_row (a condition false for them).
void divergent_reads(int64_t skip_lane, int64_t skip_row) {
  TORCH_CHECK_VALUE(skip_lane >= 0 && skip_lane < 31 && skip_row >= 0 && skip_row < 4,
                    "_divergent_reads: skip_lane must be in [0, 31) and skip_row in [0, 4)");
  std::vector<float> global(4 * 32 + 64);
  float* aligned = global.data() + (64 - reinterpret_cast<uintptr_t>(global.data()) % 256 / 4) % 64;
  launch(1, 32, 0, [&] {
    const device_ptr<const float> rows = aligned;
    const int64_t lane = threadIdx.x;
    float sum = 0;
    for (int64_t row = 0; row < 4; ++row) {
      if (!(row == skip_row && (lane == skip_lane || lane == skip_lane + 1))) {
        sum += rows[row * 32 + lane];
      }
    }
    volatile float sink = sum;
    (void)sink;
  });
}

void access_pattern(const std::string& space, int64_t stride, int64_t element_bytes, int64_t offset_bytes) {
  TORCH_CHECK_VALUE(space == "shared" || space == "global", "_access_pattern: space must be 'shared' or 'global', got '",
                    space, "'");
  TORCH_CHECK_VALUE(stride >= 0 && stride <= 64, "_access_pattern: stride must be in [0, 64], got ", stride);
  TORCH_CHECK_VALUE(offset_bytes >= 0 && offset_bytes % element_bytes == 0 && offset_bytes < 256,
                    "_access_pattern: offset_bytes must be a multiple of element_bytes in [0, 256), got ", offset_bytes);
  const bool shared = space == "shared";
  switch (element_bytes) {
    case 4:
      return warp_reads<4>(shared, stride, offset_bytes);
    case 8:
      return warp_reads<8>(shared, stride, offset_bytes);
    case 16:
      return warp_reads<16>(shared, stride, offset_bytes);
    default:
      TORCH_CHECK_VALUE(false, "_access_pattern: element_bytes must be 4, 8 or 16, got ", element_bytes);
  }
}

}  // namespace
}  // namespace gateshift::emulation

TORCH_LIBRARY_FRAGMENT(gateshift_emulated, m) {
  m.def("_runtime_selftest(str name) -> float", &gateshift::emulation::run_selftest);
  m.def("_check_shared_request(int bytes, bool opt_in) -> ()", &gateshift::emulation::check_shared);
  m.def("_input_alignment(Tensor t) -> int", &gateshift::emulation::input_alignment);
  m.def("_block_order(int blocks) -> int[]", &gateshift::emulation::block_order);
  m.def("_access_pattern(str space, int stride, int element_bytes, int offset_bytes) -> ()",
        &gateshift::emulation::access_pattern);
  m.def("_divergent_reads(int skip_lane, int skip_row) -> ()", &gateshift::emulation::divergent_reads);
}
