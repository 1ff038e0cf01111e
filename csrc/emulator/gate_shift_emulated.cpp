// The gateshift CUDA kernels, executed on the CPU by the emulator (tests only).
//
// Registers the ops of the `gateshift_emulated` library: the same schemas as
// `gateshift` (schemas.h), run through the same tensor-to-launch code as the real
// CUDA backend (cuda/gate_shift_launch.h), with an EmulatorBackend that
//
//  * copies every input into a fresh buffer whose margins (and any gaps between
//    strided elements) hold NaN, so an out-of-bounds read shows up as NaN;
//  * allocates every output and workspace inside NaN-filled margins, so an
//    unwritten element is left as NaN and an out-of-bounds write changes a
//    margin, which is checked after every launch and raised as an error.
//
// Importing gateshift._cuda_emulator loads this library; gateshift/testing/
// cuda_emulator.py wraps it like gateshift.gate_shift.

#define GATESHIFT_CUDA_EMULATION

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../cuda/batch_stats_launch.h"
#include "../cuda/gate_shift_fuse_launch.h"
#include "../cuda/gate_shift_launch.h"
#include "../cuda/temporal_shift_launch.h"
#include "../schemas.h"

namespace gateshift::emulation {
namespace {

std::atomic<int64_t> emulated_sms{4};

constexpr int64_t kMarginBytes = 4096;
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

class EmulatorBackend {
 public:
  // A copy of t in a fresh guarded buffer, with t's strides (or contiguous when t
  // overlaps itself, e.g. expanded).
  at::Tensor input(const at::Tensor& t) {
    if (!t.defined()) {
      return t;
    }
    const bool overlapping = !t.is_non_overlapping_and_dense() && has_zero_stride(t);
    const at::Tensor src = overlapping ? t.contiguous() : t;
    at::Tensor copy = guarded(src.sizes(), src.strides(), src.options(), "input");
    copy.copy_(src);
    return copy;
  }
  std::optional<at::Tensor> input(const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(input(*t)) : std::nullopt;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const at::Tensor like = at::empty(sizes, options);
    return guarded(like.sizes(), like.strides(), options, "output");
  }
  at::Tensor empty_output_like(const at::Tensor& x) {
    return guarded(x.sizes(), output_strides(x), x.options(), "output");
  }
  int64_t num_sms() const {
    return emulated_sms.load();
  }

  template <typename... KernelArgs, typename... Args>
  void launch(void (*kernel)(KernelArgs...), int64_t blocks, int threads, size_t shared, Args&&... args) {
    // A CUDA launch copies the arguments; so does this tuple.
    const std::tuple<std::decay_t<Args>...> arguments(std::forward<Args>(args)...);
    emulation::launch(blocks, static_cast<unsigned>(threads), shared, [&] { std::apply(kernel, arguments); });
    check_margins();
  }

 private:
  struct Guard {
    at::Tensor buffer;  // bytes: margin | view's extent | margin
    int64_t view_bytes;
    std::string what;
  };

  static bool has_zero_stride(const at::Tensor& t) {
    for (int64_t d = 0; d < t.dim(); ++d) {
      if (t.stride(d) == 0 && t.size(d) > 1) {
        return true;
      }
    }
    return false;
  }

  at::Tensor guarded(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options, const char* what) {
    const int64_t item = static_cast<int64_t>(options.dtype().itemsize());
    const int64_t view_bytes = extent(sizes, strides) * item;
    at::Tensor buffer = at::empty({2 * kMarginBytes + view_bytes}, options.dtype(at::kByte));
    buffer.fill_(kPoison);
    guards_.push_back(Guard{buffer, view_bytes, what});
    // as_strided without an offset keeps the narrowed view's: the first element
    // after the leading margin.
    return buffer.narrow(0, kMarginBytes, view_bytes).view(options.dtype().toScalarType()).as_strided(sizes, strides);
  }

  void check_margins() const {
    for (const Guard& g : guards_) {
      const at::Tensor before = g.buffer.narrow(0, 0, kMarginBytes);
      const at::Tensor after = g.buffer.narrow(0, kMarginBytes + g.view_bytes, kMarginBytes);
      TORCH_CHECK(
          before.eq(kPoison).all().item<bool>() && after.eq(kPoison).all().item<bool>(),
          "gateshift CUDA emulator: a kernel wrote outside an ", g.what, " tensor (its guard margin changed)");
    }
  }

  std::vector<Guard> guards_;
};

std::tuple<at::Tensor, at::Tensor> gate_shift_forward_emulated(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  EmulatorBackend backend;
  return cuda::gate_shift_forward(
      backend, backend.input(x), backend.input(weight), backend.input(bias), backend.input(bn_scale),
      backend.input(bn_shift), channels, interleaved);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gate_shift_backward_emulated(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved) {
  EmulatorBackend backend;
  return cuda::gate_shift_backward(
      backend, backend.input(grad_out), backend.input(x), backend.input(gates), backend.input(weight),
      backend.input(bn_scale), backend.input(bn_shift), channels, interleaved);
}

std::tuple<at::Tensor, at::Tensor> batch_stats_emulated(const at::Tensor& x, int64_t channels) {
  EmulatorBackend backend;
  return cuda::batch_stats(backend, backend.input(x), channels);
}

at::Tensor batch_stats_backward_emulated(
    const at::Tensor& grad_mean,
    const at::Tensor& grad_var,
    const at::Tensor& x,
    const at::Tensor& mean,
    int64_t channels) {
  EmulatorBackend backend;
  return cuda::batch_stats_backward(
      backend, backend.input(grad_mean), backend.input(grad_var), backend.input(x), backend.input(mean), channels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_shift_fuse_forward_emulated(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    const at::Tensor& fuse_bias,
    int64_t channels,
    bool interleaved) {
  EmulatorBackend backend;
  return cuda::gate_shift_fuse_forward(
      backend, backend.input(x), backend.input(weight), backend.input(bias), backend.input(bn_scale),
      backend.input(bn_shift), backend.input(fuse_weight), backend.input(fuse_bias), channels, interleaved);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gate_shift_fuse_backward_emulated(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& fusion,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    int64_t channels,
    bool interleaved) {
  EmulatorBackend backend;
  return cuda::gate_shift_fuse_backward(
      backend, backend.input(grad_out), backend.input(x), backend.input(gates), backend.input(fusion),
      backend.input(weight), backend.input(bn_scale), backend.input(bn_shift), backend.input(fuse_weight), channels,
      interleaved);
}

at::Tensor temporal_shift_emulated(const at::Tensor& x, int64_t fold, bool reverse) {
  EmulatorBackend backend;
  return cuda::temporal_shift(backend, backend.input(x), fold, reverse);
}

// The multiprocessor count the launch configuration sees; returns the previous.
int64_t set_num_sms(int64_t num_sms) {
  TORCH_CHECK_VALUE(num_sms >= 1, "set_num_sms: num_sms must be positive, got ", num_sms);
  return emulated_sms.exchange(num_sms);
}

}  // namespace
}  // namespace gateshift::emulation

TORCH_LIBRARY(gateshift_emulated, m) {
  m.def(gateshift::schemas::kGateShiftForward);
  m.def(gateshift::schemas::kGateShiftBackward);
  m.def(gateshift::schemas::kBatchStats);
  m.def(gateshift::schemas::kBatchStatsBackward);
  m.def(gateshift::schemas::kGateShiftFuseForward);
  m.def(gateshift::schemas::kGateShiftFuseBackward);
  m.def(gateshift::schemas::kTemporalShift);
  m.def("set_num_sms(int num_sms) -> int", &gateshift::emulation::set_num_sms);
}

TORCH_LIBRARY_IMPL(gateshift_emulated, CPU, m) {
  m.impl("gate_shift_forward", &gateshift::emulation::gate_shift_forward_emulated);
  m.impl("gate_shift_backward", &gateshift::emulation::gate_shift_backward_emulated);
  m.impl("batch_stats", &gateshift::emulation::batch_stats_emulated);
  m.impl("batch_stats_backward", &gateshift::emulation::batch_stats_backward_emulated);
  m.impl("gate_shift_fuse_forward", &gateshift::emulation::gate_shift_fuse_forward_emulated);
  m.impl("gate_shift_fuse_backward", &gateshift::emulation::gate_shift_fuse_backward_emulated);
  m.impl("temporal_shift", &gateshift::emulation::temporal_shift_emulated);
}

extern "C" PyMODINIT_FUNC PyInit__cuda_emulator(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_emulator", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
