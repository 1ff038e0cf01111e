// The CUDA kernels' backend under the CPU execution emulator (tests only): the
// ops' checked entries (ops/<op>.h) run on it exactly as on cuda::Backend, through
// the same launch code (cuda/<op>_launch.h), with launches executed by runtime.h
// and memory that exposes out-of-bounds accesses:
//
//  * every input is copied into a fresh buffer whose margins (and any gaps between
//    strided elements) hold NaN, so an out-of-bounds read shows up as NaN; the copy's
//    address is the input's storage offset in bytes past a multiple of 256, so a slice
//    is as (mis)aligned for the kernels as on the GPU, whose allocations are 256-aligned;
//  * every output and workspace is allocated inside NaN-filled margins, so an
//    unwritten element is left as NaN and an out-of-bounds write changes a
//    margin, which is checked after every launch and raised as an error.
#pragma once

#define GATESHIFT_CUDA_EMULATION

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../common/dtypes.h"
#include "../cuda/batch_stats_launch.h"
#include "../cuda/gate_shift_fuse_launch.h"
#include "../cuda/gate_shift_launch.h"
#include "../cuda/temporal_shift_launch.h"
#include "runtime.h"

namespace gateshift::emulation {

// The multiprocessor count the launch configuration sees (set_num_sms in library.cpp).
inline std::atomic<int64_t>& emulated_sms() {
  static std::atomic<int64_t> count{4};
  return count;
}

// What the backward's partials may always take (set_min_partials_bytes in library.cpp):
// cuda::Backend's 2 MB unless a test lowers it to make blocks take several clips.
inline std::atomic<int64_t>& emulated_min_partials_bytes() {
  static std::atomic<int64_t> bytes{int64_t(2) << 20};
  return bytes;
}

class Backend {
 public:
  static constexpr bool kPixelMajorFrames = false;  // as the CUDA backend

  Backend(const char* /*op*/, const at::Tensor& /*x*/) {}

  // A copy of t in a fresh guarded buffer, with t's strides (or contiguous when t
  // overlaps itself, e.g. expanded).
  at::Tensor input(const at::Tensor& t);
  at::Tensor empty(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
    return guarded(sizes, strides, options, "output");
  }
  int64_t num_sms() const {
    return emulated_sms().load();
  }
  int64_t min_partials_bytes() const {
    return emulated_min_partials_bytes().load();
  }
  template <typename... KernelArgs, typename... Args>
  void launch_kernel(void (*kernel)(KernelArgs...), int64_t blocks, int threads, size_t shared, Args&&... args) {
    // A CUDA launch copies the arguments; so does this tuple.
    const std::tuple<std::decay_t<Args>...> arguments(std::forward<Args>(args)...);
    // cuda::Backend opts in to more than 48 KB whenever a launch asks for it.
    emulation::check_shared_request(shared, /*opt_in=*/shared > 48 * 1024);
    emulation::launch(
        blocks, static_cast<unsigned>(threads), shared, [&] { std::apply(kernel, arguments); },
        reinterpret_cast<const void*>(kernel), buffers());
    check_margins();
  }

  // Runs an op through the CUDA backend's launch code (cuda/<op>_launch.h).
  template <class Params>
  void run(const Params& p) {
    GATESHIFT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gateshift_emulated", [&] { cuda::launch<scalar_t>(*this, p); });
  }

 private:
  struct Guard {
    at::Tensor buffer;  // bytes: margin | view's extent | margin
    int64_t margin, view_bytes;
    std::string what;
  };

  // A tensor of sizes/strides inside NaN margins, its data at `alignment` bytes past a
  // multiple of 256 (kAlignment).
  at::Tensor guarded(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options, const char* what,
                     int64_t alignment = 0);
  void check_margins() const;
  // The views of every guarded tensor: what the op's launches may reach.
  std::vector<ByteRange> buffers() const;

  std::vector<Guard> guards_;
};

}  // namespace gateshift::emulation
