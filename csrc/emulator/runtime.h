// A CPU execution emulator for gateshift's CUDA kernels (tests only).
//
// Included through common/compile_target.h when GATESHIFT_CUDA_EMULATION is defined, it
// gives the device code of csrc/cuda/*.cuh the CUDA execution model on the host:
//
//  * a launch runs a 1-D grid of blocks, one block at a time;
//  * a block's threads run as real concurrent OS threads, so __syncthreads() is a
//    real barrier and a missing one can show up as a wrong result;
//  * threadIdx, blockIdx, blockDim and gridDim are per thread;
//  * each block gets its own dynamic shared memory, filled with 0xFF bytes (NaN
//    in every floating type) so that reading what no thread wrote shows up;
//  * __shfl_xor_sync exchanges values between the 32 lanes of a warp;
//  * a thread that returns leaves the barriers, as an exited CUDA thread does;
//    a barrier that is not reached by all threads aborts with a message after a
//    timeout instead of hanging.
//
// What it does not prove: speed, occupancy, coalescing, bank conflicts, or code
// that relies on implicit warp synchrony (the kernels never do).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace gateshift::emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct BlockState;

// What one emulated CUDA thread sees.
struct ThreadState {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
  BlockState* block = nullptr;
};

// The state of the emulated thread running on this OS thread.
ThreadState& this_thread();

unsigned char* dynamic_shared_memory();
void syncthreads();

// Writes `bytes` of `value` to this lane's slot, waits for the whole warp, and
// reads the slot of `source_lane` into `result`.
void warp_exchange(const void* value, void* result, std::size_t bytes, unsigned source_lane, unsigned mask);

template <typename T>
T shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  const unsigned lane = this_thread().thread_idx.x % 32;
  T result;
  warp_exchange(&value, &result, sizeof(T), lane ^ static_cast<unsigned>(lane_mask), mask);
  return result;
}

// Runs `thread_body` as every thread of `blocks` blocks of `threads` threads
// with `shared_bytes` of dynamic shared memory per block. One launch at a time;
// exceptions thrown by a thread are rethrown here.
void launch(int64_t blocks, unsigned threads, std::size_t shared_bytes, const std::function<void()>& thread_body);

}  // namespace gateshift::emulation

#define threadIdx (::gateshift::emulation::this_thread().thread_idx)
#define blockIdx (::gateshift::emulation::this_thread().block_idx)
#define blockDim (::gateshift::emulation::this_thread().block_dim)
#define gridDim (::gateshift::emulation::this_thread().grid_dim)
#define __syncthreads() ::gateshift::emulation::syncthreads()
#define __shfl_xor_sync(mask, value, lane_mask) ::gateshift::emulation::shfl_xor_sync(mask, value, lane_mask)
#define __launch_bounds__(...)
