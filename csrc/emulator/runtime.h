// A CPU execution emulator for gateshift's CUDA kernels (tests only).
//
// Included through common/compile_target.h when GATESHIFT_CUDA_EMULATION is defined, it
// gives the device code of csrc/cuda/*.cuh the CUDA execution model on the host:
//
//  * a launch runs a 1-D grid of blocks: one block at a time in grid order, or (the
//    schedules of set_block_schedule) in a random order, or two blocks at once, as a
//    GPU runs them: a kernel whose result depends on the blocks' order shows up;
//  * a block's threads run as real concurrent OS threads, so __syncthreads() is a
//    real barrier and a missing one can show up as a wrong result;
//  * threadIdx, blockIdx, blockDim and gridDim are per thread;
//  * each block gets its own dynamic shared memory, filled with 0xFF bytes (NaN
//    in every floating type) so that reading what no thread wrote shows up, between
//    two guard zones of the same bytes: a read past either end gives NaN, and a write
//    there is an error when the block ends;
//  * a launch's dynamic shared memory is checked against the architecture's limits
//    (48 KB without opt-in, the opt-in maximum of sm_80, sm_86, sm_89 or sm_90);
//  * __shfl_xor_sync exchanges values between the 32 lanes of a warp;
//  * the threads meeting at a __syncthreads() or a shuffle must have reached it from
//    the same call site (file and line): one barrier met from two places is an error
//    (undefined for __syncthreads on a GPU; for shuffles, defined on sm_70 and later,
//    but never what these kernels mean);
//  * a thread that returns leaves the barriers, as an exited CUDA thread does;
//    a barrier that is not reached by all threads aborts with a message after a
//    timeout instead of hanging.
//
// It records each launch's grid and the barriers and shuffles met (set_recording).
// What it does not prove: speed, occupancy, coalescing, bank conflicts, or code
// that relies on implicit warp synchrony (the kernels never do).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace gateshift::emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct BlockState;

// One access through a counting pointer (counted_pointer.h): the call site (a return
// address inside the kernel), the bytes reached, and the block's phase (the barriers
// the thread had passed). A warp's lanes issue an access together when they reach
// one site in one phase for the same time (runtime.cpp, align_iterations).
struct Access {
  const void* site;
  uint32_t bytes;
  uint32_t barriers;
  uintptr_t address;
};

// What one emulated CUDA thread sees.
struct ThreadState {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
  BlockState* block = nullptr;
  std::vector<Access>* accesses = nullptr;  // while counting
  uint32_t barriers = 0;
};

// The state of the emulated thread running on this OS thread.
ThreadState& this_thread();

unsigned char* dynamic_shared_memory();

// `site` names the call site ("file:line"): every thread meeting at one barrier
// must come from the same one.
void syncthreads(const char* site);

// Writes `bytes` of `value` to this lane's slot, waits for the whole warp, and
// reads the slot of `source_lane` into `result`.
void warp_exchange(
    const void* value, void* result, std::size_t bytes, unsigned source_lane, unsigned mask, const char* site);

template <typename T>
T shfl_xor_sync(unsigned mask, T value, int lane_mask, const char* site) {
  const unsigned lane = this_thread().thread_idx.x % 32;
  T result;
  warp_exchange(&value, &result, sizeof(T), lane ^ static_cast<unsigned>(lane_mask), mask, site);
  return result;
}

// The order in which a launch runs its blocks.
enum class BlockSchedule : int64_t {
  kInOrder = 0,     // one at a time, in grid order
  kShuffled = 1,    // one at a time, in a random order
  kConcurrent = 2,  // two at a time, in a random order
};

// Sets the schedule of the launches that follow, and the seed of their random
// orders (each launch draws its own order from it); returns the previous schedule.
BlockSchedule set_block_schedule(BlockSchedule schedule, uint64_t seed);

// The compute capability (80, 86, 89, 90) whose shared-memory limits launches are
// checked against; returns the previous one.
int64_t set_architecture(int64_t sm);

// Checks a launch's dynamic shared memory: at most 48 KB without opting in, and with
// opt_in at most the architecture's opt-in maximum; throws a message naming both.
void check_shared_request(std::size_t shared_bytes, bool opt_in);

constexpr int kReuseBuckets = 48;

// A launch as the emulator ran it: its grid, and how many barriers and warp
// shuffles its threads met (what a performance model of the launch starts from).
// While counting, also its memory accesses as a GPU issues them: per warp, the
// accesses its lanes made from one call site in one phase for the same time form one
// request.
// A global request moves the distinct 32-byte sectors its lanes touch; a shared one
// takes as many wavefronts as the most distinct 4-byte words any of the 32 banks
// must deliver (one per phase of 32, 16 or 8 lanes for 4-, 8- or 16-byte elements).
// The counts cover the blocks that ran: all of them, or a sample (sampled_blocks).
struct LaunchRecord {
  std::string kernel;    // the kernel's name and template arguments
  int64_t blocks = 0;
  unsigned threads = 0;  // per block
  std::size_t shared_bytes = 0;
  int64_t barriers = 0;  // __syncthreads() completed, summed over the blocks that ran
  int64_t shuffles = 0;  // warp-wide shuffles completed, summed over their warps
  int64_t sampled_blocks = 0;     // blocks that ran (counting) or 0 (all ran)
  int64_t global_requests = 0;    // warp-wide global loads and stores
  int64_t global_sectors = 0;     // 32-byte sectors they requested
  int64_t unique_global_bytes = 0;  // 32 x the distinct sectors over the blocks that ran
  // The distinct bytes of the whole grid, estimated from the blocks that ran: in each of
  // the launch's buffers (launch()), their distinct sectors scaled to the grid but at
  // most the buffer's own; elsewhere scaled alone. Scaling alone counts a buffer twice
  // when each block also reads its neighbours' data (the neighbouring frame of GSF's
  // combine, the halos of tiles), data that other blocks of the grid touch anyway.
  int64_t grid_unique_global_bytes = 0;
  int64_t shared_requests = 0;    // warp-wide shared-memory loads and stores
  int64_t shared_wavefronts = 0;
  // Re-requested global sectors by reuse distance: the bytes of the sectors the block
  // touched for the first time since the sector's previous request (a lower bound of
  // the LRU stack distance), in the block's order of phases (barriers) and, within one,
  // of each thread's accesses. Entry 0: distance 0; entry k: [2^(k-1), 2^k) bytes.
  std::vector<int64_t> reuse_log2_bytes = std::vector<int64_t>(kReuseBuckets, 0);
};

// Starts recording the launches that follow (forgetting earlier records) or stops;
// recorded_launches() returns what was recorded since the last start. With
// count_sample >= 0 the records also count memory accesses; a launch of more than
// count_sample > 0 blocks then runs only that many (and at least 1 in 256), in runs
// of consecutive blocks, one in each of as many equal parts of its grid: a model's
// sample, whose outputs are left unwritten.
void set_recording(bool on, int64_t count_sample = -1);
std::vector<LaunchRecord> recorded_launches();

// A device buffer a launch may reach: bytes [first, last).
struct ByteRange {
  uintptr_t first, last;
};

// Runs `thread_body` as every thread of `blocks` blocks of `threads` threads
// with `shared_bytes` of dynamic shared memory per block, in the order of the
// current BlockSchedule. One launch at a time; exceptions thrown by a thread, and
// writes outside a block's shared memory, are raised here. `kernel`, the kernel
// function's address, names the launch in the records; `buffers`, the tensors it
// may reach, bound their estimated grid-wide bytes (grid_unique_global_bytes).
void launch(int64_t blocks, unsigned threads, std::size_t shared_bytes, const std::function<void()>& thread_body,
            const void* kernel = nullptr, const std::vector<ByteRange>& buffers = {});

}  // namespace gateshift::emulation

#define GATESHIFT_EMULATOR_STRINGIFY_(x) #x
#define GATESHIFT_EMULATOR_STRINGIFY(x) GATESHIFT_EMULATOR_STRINGIFY_(x)
#define GATESHIFT_EMULATOR_SITE __FILE__ ":" GATESHIFT_EMULATOR_STRINGIFY(__LINE__)

#define threadIdx (::gateshift::emulation::this_thread().thread_idx)
#define blockIdx (::gateshift::emulation::this_thread().block_idx)
#define blockDim (::gateshift::emulation::this_thread().block_dim)
#define gridDim (::gateshift::emulation::this_thread().grid_dim)
#define __syncthreads() ::gateshift::emulation::syncthreads(GATESHIFT_EMULATOR_SITE)
#define __shfl_xor_sync(mask, value, lane_mask) \
  ::gateshift::emulation::shfl_xor_sync(mask, value, lane_mask, GATESHIFT_EMULATOR_SITE)
#define __launch_bounds__(...)
