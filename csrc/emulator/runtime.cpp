// Runtime of the CPU execution emulator (see runtime.h).

#include "runtime.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace gateshift::emulation {
namespace {

// Long enough for the slowest emulated block on a loaded 2-core machine; a
// barrier still waiting after this is one that some threads never reach.
constexpr auto kBarrierTimeout = std::chrono::seconds(300);
constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr std::size_t kSharedGuardBytes = 1024;  // on each side of a block's shared memory
constexpr unsigned char kSharedPoison = 0xFF;     // NaN in every floating type
constexpr std::size_t kDefaultSharedLimit = 48 * 1024;

// Dynamic shared memory per block with opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize),
// from the CUDA programming guide's table of compute capabilities.
std::size_t opt_in_shared_limit(int64_t sm) {
  switch (sm) {
    case 80:
      return 163 * 1024;
    case 86:
    case 89:
      return 99 * 1024;
    case 90:
      return 227 * 1024;
    default:
      throw std::invalid_argument("gateshift CUDA emulator: unknown architecture sm_" + std::to_string(sm) +
                                  " (known: 80, 86, 89, 90)");
  }
}

std::atomic<int64_t> block_schedule{0};
std::atomic<uint64_t> schedule_seed{0};
uint64_t launches_scheduled = 0;       // under launch_mutex
std::atomic<int64_t> architecture{86};  // the strictest of the default TORCH_CUDA_ARCH_LIST
bool recording = false;                 // under launch_mutex, as are records and count_sample
std::vector<LaunchRecord> records;
int64_t count_sample = -1;              // set_recording's: -1 not counting, 0 every block, n a sample

// A reusable barrier whose threads may also leave (an exited CUDA thread no
// longer takes part in __syncthreads).
class Barrier {
 public:
  explicit Barrier(unsigned count) : expected_(count) {}

  // `site` is the call site ("file:line"); the threads of one generation must share it.
  void arrive_and_wait(const char* what, const char* site) {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (arrived_ == 0) {
      site_ = site;
    } else if (std::strcmp(site_, site) != 0) {
      throw std::logic_error(std::string("gateshift CUDA emulator: threads met at ") + what + " from two call sites, " +
                             site_ + " and " + site + " (the kernels meet each one from a single call site)");
    }
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

  // Barriers completed so far.
  uint64_t completed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return generation_;
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
  const char* site_ = "";
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

// The name of the function at `address` with its template arguments, from the
// library's symbol table ("" when it has none): "k<float, false>" for
// "void gateshift::cuda::k<float, false>(params...)".
std::string kernel_name(const void* address) {
  Dl_info info;
  if (address == nullptr || dladdr(address, &info) == 0 || info.dli_sname == nullptr) {
    return "";
  }
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
  std::free(demangled);
  const std::string prefix = "gateshift::cuda::";
  if (const size_t at = name.find(prefix); at != std::string::npos) {
    name = name.substr(at + prefix.size());
  }
  int depth = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    depth += name[i] == '<' ? 1 : name[i] == '>' ? -1 : 0;
    if (name[i] == '(' && depth == 0) {
      return name.substr(0, i);
    }
  }
  return name;
}

// The blocks a counting launch runs: all, or a sample of at least `sample` blocks
// and 1 in kSampleFraction, in runs of up to kSampleRun consecutive blocks, one in
// each of as many equal parts of the grid at a fixed pseudo-random place in its part
// (a jittered stratified sample: a grid's regular structure, such as a frame or a
// channel that every part starts with, is not sampled more than its share).
// Consecutive blocks are neighbouring tiles of a plane, so a run shares their halos'
// sectors as the whole grid does, and the sample's distinct sectors per block stay
// close to the grid's.
constexpr int64_t kSampleRun = 4;
constexpr int64_t kSampleFraction = 256;

std::vector<int64_t> sampled_blocks(int64_t blocks, int64_t sample) {
  std::vector<int64_t> chosen;
  if (sample > 0) {
    sample = std::max(sample, (blocks + kSampleFraction - 1) / kSampleFraction);
  }
  if (sample <= 0 || blocks <= sample) {
    chosen.resize(static_cast<size_t>(blocks));
    std::iota(chosen.begin(), chosen.end(), int64_t(0));
    return chosen;
  }
  const int64_t run = std::min(kSampleRun, sample);
  const int64_t runs = (sample + run - 1) / run;
  std::mt19937_64 jitter(0x5A3D1E);  // fixed: the same launch always samples the same blocks
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t part_first = r * blocks / runs;
    const int64_t part_size = (r + 1) * blocks / runs - part_first;
    const int64_t length = std::min(run, part_size);
    const int64_t start = part_first + static_cast<int64_t>(jitter() % static_cast<uint64_t>(part_size - length + 1));
    for (int64_t b = start; b < start + length; ++b) {
      chosen.push_back(b);
    }
  }
  return chosen;
}

// The wavefronts of one warp-wide shared-memory request: per phase (32 lanes for
// elements of up to 4 bytes, 16 for 8, 8 for 16), the most distinct 4-byte words
// any of the 32 banks holds; the same word read by several lanes is one broadcast.
int64_t shared_wavefronts(const std::vector<std::pair<unsigned, const Access*>>& lanes) {
  constexpr unsigned kBanks = 32;
  const unsigned bytes = std::max<unsigned>(4, lanes.front().second->bytes);
  const unsigned phase_lanes = kWarpSize / std::max(1u, bytes / 4);
  int64_t wavefronts = 0;
  for (unsigned phase = 0; phase * phase_lanes < kWarpSize; ++phase) {
    std::vector<uintptr_t> words;
    for (const auto& [lane, access] : lanes) {
      if (lane / phase_lanes == phase) {
        for (uintptr_t word = access->address / 4; word <= (access->address + access->bytes - 1) / 4; ++word) {
          words.push_back(word);
        }
      }
    }
    if (words.empty()) {
      continue;
    }
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    unsigned per_bank[kBanks] = {};
    for (uintptr_t word : words) {
      ++per_bank[word % kBanks];
    }
    wavefronts += *std::max_element(per_bank, per_bank + kBanks);
  }
  return wavefronts;
}

int reuse_bucket(int64_t bytes) {
  int bucket = 0;
  while (bytes > 0 && bucket + 1 < kReuseBuckets) {
    bytes >>= 1;
    ++bucket;
  }
  return bucket;
}

// The lanes of a warp that run one call site in one phase (between two barriers)
// issue it together, one request per time the warp runs it. When every lane ran it
// equally often, a lane's k-th access belongs to the warp's k-th request. When some
// lanes skipped some times (a condition false for them), each of a lane's accesses is
// placed, in order, at the time k where it lies nearest to where the lane would have
// reached: the address of the nearest lane that ran every time, moved by those lanes'
// per-lane slope at time k. So a lane that skipped a time joins the next one at its
// own next address.
struct LaneAccess {
  const Access* access;
  unsigned lane;
  uint32_t position;   // in its thread's log
  uint32_t iteration;  // which of the warp's requests at this site and phase
};

void align_iterations(std::vector<LaneAccess>& warp) {
  std::sort(warp.begin(), warp.end(), [](const LaneAccess& a, const LaneAccess& b) {
    return std::tie(a.access->site, a.access->barriers, a.lane, a.position) <
           std::tie(b.access->site, b.access->barriers, b.lane, b.position);
  });
  for (size_t first = 0; first < warp.size();) {
    size_t last = first;  // one site and phase: [first, last)
    while (last < warp.size() && warp[last].access->site == warp[first].access->site &&
           warp[last].access->barriers == warp[first].access->barriers) {
      ++last;
    }
    std::vector<std::pair<size_t, size_t>> lanes;  // each lane's [begin, end)
    size_t most = 0;
    for (size_t i = first; i < last;) {
      size_t end = i;
      while (end < last && warp[end].lane == warp[i].lane) {
        warp[end].iteration = static_cast<uint32_t>(end - i);
        ++end;
      }
      lanes.emplace_back(i, end);
      most = std::max(most, end - i);
      i = end;
    }
    if (std::any_of(lanes.begin(), lanes.end(), [&](const auto& l) { return l.second - l.first != most; })) {
      // Where lane l would reach at time k: the address of the nearest lane that ran
      // every time, moved by the per-lane slope of those lanes' addresses at time k.
      std::vector<std::pair<unsigned, size_t>> full;  // (lane, begin) of the lanes that ran every time
      for (const auto& [begin, end] : lanes) {
        if (end - begin == most) {
          full.emplace_back(warp[begin].lane, begin);
        }
      }
      const auto expected = [&](unsigned lane, size_t k) {
        const auto nearest = std::min_element(full.begin(), full.end(), [&](const auto& a, const auto& b) {
          return std::abs(int(a.first) - int(lane)) < std::abs(int(b.first) - int(lane));
        });
        const auto address = [&](const std::pair<unsigned, size_t>& l) {
          return static_cast<double>(warp[l.second + k].access->address);
        };
        const double slope = full.size() > 1 ? (address(full.back()) - address(full.front())) /
                                                   (double(full.back().first) - double(full.front().first))
                                             : 0.0;
        return address(*nearest) + slope * (double(lane) - double(nearest->first));
      };
      for (const auto& [begin, end] : lanes) {
        size_t next = 0;
        for (size_t j = begin; j < end; ++j) {
          const size_t latest = most - (end - j);  // leaves room for the lane's later accesses
          const auto distance = [&](size_t k) {
            return std::abs(static_cast<double>(warp[j].access->address) - expected(warp[j].lane, k));
          };
          size_t k = next;
          while (k < latest && distance(k + 1) < distance(k)) {
            ++k;
          }
          warp[j].iteration = static_cast<uint32_t>(k);
          next = k + 1;
        }
      }
    }
    first = last;
  }
}

// Adds one block's accesses (a log per thread) to the launch's counts: per warp,
// the lanes' accesses of one site, phase and iteration are one request. Then replays
// the block's global requests in phase order for their sectors' reuse distances.
void tally_block(const std::vector<std::vector<Access>>& logs, uintptr_t shared_first, uintptr_t shared_last,
                 LaunchRecord& record, std::unordered_set<uintptr_t>& sectors_touched) {
  struct GlobalRequest {
    uint32_t barriers, position;
    size_t warp, first_sector, sectors;
  };
  std::vector<GlobalRequest> global;
  std::vector<uintptr_t> sector_pool;
  for (size_t first = 0; first < logs.size(); first += kWarpSize) {
    std::vector<LaneAccess> warp;
    for (size_t t = first; t < std::min(logs.size(), first + kWarpSize); ++t) {
      for (size_t i = 0; i < logs[t].size(); ++i) {
        warp.push_back(LaneAccess{&logs[t][i], static_cast<unsigned>(t - first), static_cast<uint32_t>(i), 0});
      }
    }
    align_iterations(warp);
    std::sort(warp.begin(), warp.end(), [](const LaneAccess& a, const LaneAccess& b) {
      return std::tie(a.access->site, a.access->barriers, a.iteration, a.lane) <
             std::tie(b.access->site, b.access->barriers, b.iteration, b.lane);
    });
    std::vector<std::pair<unsigned, const Access*>> request;
    for (size_t i = 0; i < warp.size();) {
      size_t end = i;
      request.clear();
      uint32_t position = warp[i].position;
      while (end < warp.size() && warp[end].access->site == warp[i].access->site &&
             warp[end].access->barriers == warp[i].access->barriers && warp[end].iteration == warp[i].iteration) {
        request.emplace_back(warp[end].lane, warp[end].access);
        position = std::min(position, warp[end].position);
        ++end;
      }
      const uintptr_t address = warp[i].access->address;
      if (address >= shared_first && address < shared_last) {
        ++record.shared_requests;
        record.shared_wavefronts += shared_wavefronts(request);
      } else {
        ++record.global_requests;
        const size_t first_sector = sector_pool.size();
        for (const auto& [lane, access] : request) {
          for (uintptr_t s = access->address / 32; s <= (access->address + access->bytes - 1) / 32; ++s) {
            sector_pool.push_back(s);
          }
        }
        std::sort(sector_pool.begin() + static_cast<std::ptrdiff_t>(first_sector), sector_pool.end());
        sector_pool.erase(std::unique(sector_pool.begin() + static_cast<std::ptrdiff_t>(first_sector), sector_pool.end()),
                          sector_pool.end());
        const size_t count = sector_pool.size() - first_sector;
        record.global_sectors += static_cast<int64_t>(count);
        sectors_touched.insert(sector_pool.begin() + static_cast<std::ptrdiff_t>(first_sector), sector_pool.end());
        global.push_back(GlobalRequest{warp[i].access->barriers, position, first, first_sector, count});
      }
      i = end;
    }
  }
  // The block's warps run side by side between barriers: replay their requests by
  // phase, then by position in the threads' logs, then warp.
  std::sort(global.begin(), global.end(), [](const GlobalRequest& a, const GlobalRequest& b) {
    return std::tie(a.barriers, a.position, a.warp) < std::tie(b.barriers, b.position, b.warp);
  });
  std::unordered_map<uintptr_t, int64_t> new_sectors_at_last_use;
  int64_t new_sectors = 0;
  for (const GlobalRequest& r : global) {
    for (size_t i = r.first_sector; i < r.first_sector + r.sectors; ++i) {
      const auto [it, first_use] = new_sectors_at_last_use.try_emplace(sector_pool[i], new_sectors + 1);
      if (first_use) {
        ++new_sectors;
      } else {
        ++record.reuse_log2_bytes[static_cast<size_t>(reuse_bucket(32 * (new_sectors - it->second)))];
        it->second = new_sectors;
      }
    }
  }
}

// LaunchRecord::grid_unique_global_bytes from the distinct sectors the blocks that ran
// touched, `scale` times fewer blocks than the grid's.
int64_t grid_unique_bytes(const std::unordered_set<uintptr_t>& sectors, const std::vector<ByteRange>& buffers,
                          double scale) {
  std::vector<ByteRange> sorted = buffers;
  std::sort(sorted.begin(), sorted.end(), [](const ByteRange& a, const ByteRange& b) { return a.first < b.first; });
  std::vector<int64_t> in_buffer(sorted.size(), 0);
  int64_t elsewhere = 0;
  for (const uintptr_t sector : sectors) {
    const uintptr_t byte = sector * 32;
    // The last buffer starting at or before the sector's first byte (buffers do not overlap).
    const auto it = std::upper_bound(sorted.begin(), sorted.end(), byte,
                                     [](uintptr_t v, const ByteRange& r) { return v < r.first; });
    if (it != sorted.begin() && byte < std::prev(it)->last) {
      ++in_buffer[static_cast<size_t>(std::prev(it) - sorted.begin())];
    } else if (it != sorted.end() && byte + 32 > it->first) {  // a sector straddling a buffer's start
      ++in_buffer[static_cast<size_t>(it - sorted.begin())];
    } else {
      ++elsewhere;
    }
  }
  double sectors_in_grid = double(elsewhere) * scale;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const double own = double((sorted[i].last + 31) / 32 - sorted[i].first / 32);
    sectors_in_grid += std::min(double(in_buffer[i]) * scale, own);
  }
  return 32 * static_cast<int64_t>(std::llround(sectors_in_grid));
}

thread_local ThreadState* current = nullptr;
std::mutex launch_mutex;

}  // namespace

std::atomic<bool> counting_accesses{false};

void record_access(const void* address, std::size_t bytes) {
  const void* site = __builtin_return_address(0);
  ThreadState* t = current;
  if (t == nullptr || t->accesses == nullptr) {
    return;  // host code, or a launch that started before counting did
  }
  t->accesses->push_back(
      Access{site, static_cast<uint32_t>(bytes), t->barriers, reinterpret_cast<uintptr_t>(address)});
}

struct BlockState {
  BlockState(unsigned threads, std::size_t shared_bytes)
      : barrier(threads),
        shared_bytes(shared_bytes),
        shared((2 * kSharedGuardBytes + shared_bytes + sizeof(double) - 1) / sizeof(double)) {
    // NaN: "never written", in the block's bytes and in the guards around them.
    std::memset(shared.data(), kSharedPoison, shared.size() * sizeof(double));
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

  unsigned char* shared_memory() {
    return reinterpret_cast<unsigned char*>(shared.data()) + kSharedGuardBytes;
  }
  // True when both guard zones still hold the poison: nothing was written past either end.
  bool guards_intact() const {
    const auto* bytes = reinterpret_cast<const unsigned char*>(shared.data());
    const auto poisoned = [](const unsigned char* first, const unsigned char* last) {
      return std::all_of(first, last, [](unsigned char b) { return b == kSharedPoison; });
    };
    return poisoned(bytes, bytes + kSharedGuardBytes) &&
           poisoned(bytes + kSharedGuardBytes + shared_bytes, bytes + shared.size() * sizeof(double));
  }

  Barrier barrier;
  std::size_t shared_bytes;
  std::vector<double> shared;  // guard | shared_bytes | guard; double: 8-byte alignment for every element type
  std::vector<std::unique_ptr<Warp>> warps;
};

ThreadState& this_thread() {
  if (current == nullptr) {
    throw std::logic_error("gateshift CUDA emulator: device code called outside an emulated launch");
  }
  return *current;
}

unsigned char* dynamic_shared_memory() {
  return this_thread().block->shared_memory();
}

void syncthreads(const char* site) {
  ThreadState& t = this_thread();
  t.block->barrier.arrive_and_wait("__syncthreads()", site);
  ++t.barriers;
}

void warp_exchange(
    const void* value, void* result, std::size_t bytes, unsigned source_lane, unsigned mask, const char* site) {
  ThreadState& t = this_thread();
  BlockState::Warp& warp = *t.block->warps[t.thread_idx.x / kWarpSize];
  if (mask != 0xffffffffu || warp.lanes != kWarpSize || bytes > sizeof(warp.slots[0])) {
    throw std::logic_error("gateshift CUDA emulator: only full-warp shuffles of up to 16 bytes are emulated");
  }
  const unsigned lane = t.thread_idx.x % kWarpSize;
  std::memcpy(warp.slots[lane], value, bytes);
  warp.barrier.arrive_and_wait("a warp shuffle", site);
  std::memcpy(result, warp.slots[source_lane % kWarpSize], bytes);
  warp.barrier.arrive_and_wait("a warp shuffle", site);  // no lane overwrites a slot before all have read
}

BlockSchedule set_block_schedule(BlockSchedule schedule, uint64_t seed) {
  std::lock_guard<std::mutex> no_launch_meanwhile(launch_mutex);
  schedule_seed = seed;
  launches_scheduled = 0;
  return static_cast<BlockSchedule>(block_schedule.exchange(static_cast<int64_t>(schedule)));
}

int64_t set_architecture(int64_t sm) {
  opt_in_shared_limit(sm);  // throws for an unknown one
  return architecture.exchange(sm);
}

void check_shared_request(std::size_t shared_bytes, bool opt_in) {
  const int64_t sm = architecture.load();
  const std::size_t limit = opt_in ? opt_in_shared_limit(sm) : kDefaultSharedLimit;
  if (shared_bytes > limit) {
    throw std::invalid_argument(
        "gateshift CUDA emulator: a launch asks for " + std::to_string(shared_bytes) +
        " bytes of dynamic shared memory per block, more than " + std::to_string(limit) + " (" +
        (opt_in ? "the opt-in maximum of sm_" + std::to_string(sm) : std::string("the limit without opt-in")) + ")");
  }
}

void set_recording(bool on, int64_t sample) {
  std::lock_guard<std::mutex> no_launch_meanwhile(launch_mutex);
  if (on) {
    records.clear();
  }
  recording = on;
  count_sample = on ? sample : -1;
  counting_accesses = on && sample >= 0;
}

std::vector<LaunchRecord> recorded_launches() {
  std::lock_guard<std::mutex> no_launch_meanwhile(launch_mutex);
  return records;
}

void launch(int64_t blocks, unsigned threads, std::size_t shared_bytes, const std::function<void()>& thread_body,
            const void* kernel, const std::vector<ByteRange>& buffers) {
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  LaunchRecord record;
  if (recording) {
    record.kernel = kernel_name(kernel);
  }
  record.blocks = blocks;
  record.threads = threads;
  record.shared_bytes = shared_bytes;
  if (threads == 0 || threads > kMaxThreadsPerBlock) {
    throw std::invalid_argument("gateshift CUDA emulator: a launch of " + std::to_string(threads) +
                                " threads per block (1 to 1024 on every GPU)");
  }
  const auto schedule = static_cast<BlockSchedule>(block_schedule.load());
  const bool counting = recording && count_sample >= 0;
  std::vector<int64_t> order = sampled_blocks(blocks, counting ? count_sample : 0);
  if (counting) {
    record.sampled_blocks = static_cast<int64_t>(order.size());
  }
  std::unordered_set<uintptr_t> sectors_touched;
  if (schedule != BlockSchedule::kInOrder) {
    std::mt19937_64 random(schedule_seed.load() + 0x9E3779B97F4A7C15ull * ++launches_scheduled);
    std::shuffle(order.begin(), order.end(), random);
  }
  const int64_t at_once = schedule == BlockSchedule::kConcurrent ? 2 : 1;
  const auto to_run = static_cast<int64_t>(order.size());
  for (int64_t first = 0; first < to_run; first += at_once) {
    const int64_t running = std::min(at_once, to_run - first);
    std::vector<std::unique_ptr<BlockState>> states;
    // While counting: each thread's accesses.
    std::vector<std::vector<std::vector<Access>>> logs(counting ? running : 0, std::vector<std::vector<Access>>(threads));
    for (int64_t i = 0; i < running; ++i) {
      states.push_back(std::make_unique<BlockState>(threads, shared_bytes));
    }
    WorkerPool::instance().run(static_cast<unsigned>(running) * threads, [&](unsigned index) {
      const unsigned tid = index % threads;
      const int64_t b = order[static_cast<size_t>(first + index / threads)];
      BlockState& block = *states[index / threads];
      ThreadState state;
      state.thread_idx = Dim3{tid, 0, 0};
      state.block_idx = Dim3{static_cast<unsigned>(b), 0, 0};
      state.block_dim = Dim3{threads, 1, 1};
      state.grid_dim = Dim3{static_cast<unsigned>(blocks), 1, 1};
      state.block = &block;
      if (counting) {
        state.accesses = &logs[index / threads][tid];
      }
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
    for (size_t i = 0; i < logs.size(); ++i) {
      // Shared memory's guard zones count as shared: a stray access there is no global one.
      const auto first_byte = reinterpret_cast<uintptr_t>(states[i]->shared.data());
      tally_block(logs[i], first_byte, first_byte + states[i]->shared.size() * sizeof(double), record, sectors_touched);
    }
    for (const auto& block : states) {
      if (!block->guards_intact()) {
        throw std::logic_error("gateshift CUDA emulator: a kernel wrote outside its " + std::to_string(shared_bytes) +
                               " bytes of dynamic shared memory");
      }
      record.barriers += static_cast<int64_t>(block->barrier.completed());
      for (const auto& warp : block->warps) {
        record.shuffles += static_cast<int64_t>(warp->barrier.completed() / 2);  // two meetings per shuffle
      }
    }
  }
  record.unique_global_bytes = 32 * static_cast<int64_t>(sectors_touched.size());
  record.grid_unique_global_bytes = grid_unique_bytes(
      sectors_touched, buffers, record.sampled_blocks > 0 ? double(blocks) / double(record.sampled_blocks) : 1.0);
  if (recording) {
    records.push_back(std::move(record));
  }
}

}  // namespace gateshift::emulation
