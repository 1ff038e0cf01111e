// Runtime of the CPU execution emulator (see runtime.h).

#include "runtime.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace gateshift::emulation {
namespace {

// Long enough for the slowest emulated block on a loaded 2-core machine; a
// barrier still waiting after this is one that some threads never reach.
constexpr auto kBarrierTimeout = std::chrono::seconds(300);
constexpr unsigned kWarpSize = 32;

// A reusable barrier whose threads may also leave (an exited CUDA thread no
// longer takes part in __syncthreads).
class Barrier {
 public:
  explicit Barrier(unsigned count) : expected_(count) {}

  void arrive_and_wait(const char* what) {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == expected_) {
      release();
      return;
    }
    if (!cv_.wait_for(lock, kBarrierTimeout, [&] { return generation_ != generation; })) {
      std::fprintf(
          stderr, "gateshift CUDA emulator: %s not reached by all threads (%u of %u waited %lld s); aborting\n",
          what, arrived_, expected_, static_cast<long long>(kBarrierTimeout.count()));
      std::abort();
    }
  }

  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) {
      release();
    }
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  unsigned expected_;
  unsigned arrived_ = 0;
  uint64_t generation_ = 0;
};

// Runs n tasks at once on persistent threads: creating 256 threads per block
// would cost more than the block's work.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool* pool = new WorkerPool();  // never destroyed: its threads may outlive main
    return *pool;
  }

  void run(unsigned n, const std::function<void(unsigned)>& task) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (threads_.size() < n) {
      const unsigned index = static_cast<unsigned>(threads_.size());
      threads_.emplace_back([this, index] { work(index); });
      threads_.back().detach();
    }
    task_ = &task;
    active_ = n;
    remaining_ = n;
    error_ = nullptr;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [&] { return remaining_ == 0; });
    task_ = nullptr;
    if (error_) {
      std::rethrow_exception(error_);
    }
  }

 private:
  void work(unsigned index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) {
        continue;
      }
      const std::function<void(unsigned)>* task = task_;
      lock.unlock();
      std::exception_ptr error;
      try {
        (*task)(index);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error && !error_) {
        error_ = error;
      }
      if (--remaining_ == 0) {
        done_.notify_one();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(unsigned)>* task_ = nullptr;
  unsigned active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
};

thread_local ThreadState* current = nullptr;
std::mutex launch_mutex;

}  // namespace

struct BlockState {
  BlockState(unsigned threads, std::size_t shared_bytes)
      : barrier(threads), shared((shared_bytes + sizeof(double) - 1) / sizeof(double)) {
    std::memset(shared.data(), 0xFF, shared.size() * sizeof(double));  // NaN: "never written"
    for (unsigned first = 0; first < threads; first += kWarpSize) {
      warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads - first)));
    }
  }

  struct Warp {
    explicit Warp(unsigned lanes) : barrier(lanes), lanes(lanes) {}
    Barrier barrier;
    unsigned lanes;
    unsigned char slots[kWarpSize][16];
  };

  Barrier barrier;
  std::vector<double> shared;  // double: 8-byte alignment for every element type used
  std::vector<std::unique_ptr<Warp>> warps;
};

ThreadState& this_thread() {
  if (current == nullptr) {
    throw std::logic_error("gateshift CUDA emulator: device code called outside an emulated launch");
  }
  return *current;
}

unsigned char* dynamic_shared_memory() {
  return reinterpret_cast<unsigned char*>(this_thread().block->shared.data());
}

void syncthreads() {
  this_thread().block->barrier.arrive_and_wait("__syncthreads()");
}

void warp_exchange(const void* value, void* result, std::size_t bytes, unsigned source_lane, unsigned mask) {
  ThreadState& t = this_thread();
  BlockState::Warp& warp = *t.block->warps[t.thread_idx.x / kWarpSize];
  if (mask != 0xffffffffu || warp.lanes != kWarpSize || bytes > sizeof(warp.slots[0])) {
    throw std::logic_error("gateshift CUDA emulator: only full-warp shuffles of up to 16 bytes are emulated");
  }
  const unsigned lane = t.thread_idx.x % kWarpSize;
  std::memcpy(warp.slots[lane], value, bytes);
  warp.barrier.arrive_and_wait("a warp shuffle");
  std::memcpy(result, warp.slots[source_lane % kWarpSize], bytes);
  warp.barrier.arrive_and_wait("a warp shuffle");  // no lane overwrites a slot before all have read
}

void launch(int64_t blocks, unsigned threads, std::size_t shared_bytes, const std::function<void()>& thread_body) {
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  for (int64_t b = 0; b < blocks; ++b) {
    BlockState block(threads, shared_bytes);
    WorkerPool::instance().run(threads, [&](unsigned tid) {
      ThreadState state;
      state.thread_idx = Dim3{tid, 0, 0};
      state.block_idx = Dim3{static_cast<unsigned>(b), 0, 0};
      state.block_dim = Dim3{threads, 1, 1};
      state.grid_dim = Dim3{static_cast<unsigned>(blocks), 1, 1};
      state.block = &block;
      current = &state;
      const auto leave = [&] {
        block.warps[tid / kWarpSize]->barrier.leave();
        block.barrier.leave();
        current = nullptr;
      };
      try {
        thread_body();
      } catch (...) {
        leave();
        throw;
      }
      leave();
    });
  }
}

}  // namespace gateshift::emulation
