// The Gate-Shift tasks (gate_shift_kernel.h) over the CPU threads: how a call is
// cut into tasks, and the sum of the tasks' parameter-gradient partials. Shared
// by GSM (gate_shift.cpp) and Gate-Shift-Fuse (gate_shift_fuse.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <vector>

#include "../common/checks.h"
#include "../ops/gate_shift.h"
#include "backend.h"
#include "gate_shift_kernel.h"

namespace gateshift::cpu {

inline int64_t round_up(int64_t v, int64_t multiple) {
  return (v + multiple - 1) / multiple * multiple;
}

template <typename T>
std::vector<T> to_vector(const at::Tensor& contiguous) {
  const T* d = contiguous.const_data_ptr<T>();
  return std::vector<T>(d, d + contiguous.numel());
}

// Bytes of CPU scratch one thread may hold, when positive; 0: the rule of
// choose_tiles. Set by the test-only op gateshift::_set_cpu_scratch_limit (gate_shift.cpp).
inline std::atomic<int64_t> scratch_limit_override{0};

// Scratch planes a thread holds: the forward's, which are more than the backward's 12.
constexpr int64_t kScratchPlanes = kForwardScratchPlanes;

// Bytes of scratch one thread may hold: a 32nd of x, at least 1 MB. From the shape
// alone, so that the tiles, and with them the order of every sum, do not depend on
// the thread count.
inline int64_t scratch_per_thread(int64_t x_bytes) {
  const int64_t limit = scratch_limit_override.load();
  return limit > 0 ? limit : std::max<int64_t>(x_bytes / 32, int64_t(1) << 20);
}

// Tiles whose scratch planes, (tile_h + 2) x (tile_w + 2) floats each, fit
// scratch_per_thread: whole planes for every shape of the published networks; row
// bands, else squares (as wide as fit when the plane is only a few rows high), for
// planes that are large next to the rest of x (a single 1 x 4M plane, say).
template <typename scalar_t>
void choose_tiles(Problem<scalar_t>& p, int64_t x_bytes) {
  using acc_t = acc_type<scalar_t>;
  const int64_t plane_floats =
      std::max<int64_t>(scratch_per_thread(x_bytes) / (kScratchPlanes * int64_t(sizeof(acc_t))), 1);
  const auto fits = [&](int64_t h, int64_t w) { return Scratch<acc_t>::floats_per_plane(h, w) <= plane_floats; };
  // The largest n in [1, limit] with fits_n(n) (fits_n is monotonic), or 1.
  const auto largest = [](int64_t limit, auto fits_n) {
    int64_t lo = 1, hi = std::max<int64_t>(limit, 1);
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (fits_n(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  };
  p.tile_h = p.H;
  p.tile_w = p.W;
  if (!fits(p.H, p.W)) {
    if (fits(1, p.W)) {  // row bands, as tall as fit
      p.tile_h = largest(p.H, [&](int64_t h) { return fits(h, p.W); });
    } else {  // squares, or as wide as fit when the plane is only a few rows high
      p.tile_h = std::min(p.H, largest(std::min(p.H, p.W), [&](int64_t side) { return fits(side, side); }));
      p.tile_w = largest(p.W, [&](int64_t w) { return fits(p.tile_h, w); });
    }
  }
  p.tiles_h = (p.H + p.tile_h - 1) / p.tile_h;
  p.tiles_w = (p.W + p.tile_w - 1) / p.tile_w;
}

// The problem of one call, its parameters in the accumulation type, and its work split.
template <typename scalar_t>
Problem<scalar_t> make_problem(
    const GateShiftSizes& n,
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift) {
  using acc_t = acc_type<scalar_t>;
  Problem<scalar_t> p;
  p.B = n.B;
  p.T = n.T;
  p.C = n.C;
  p.H = n.H;
  p.W = n.W;
  p.P = n.P;
  p.interleaved = n.interleaved;
  p.x = frames<const scalar_t>(x);
  const std::vector<scalar_t> w = to_vector<scalar_t>(weight);
  p.weight.assign(w.begin(), w.end());
  p.weight_flipped.resize(p.weight.size());
  for (size_t i = 0; i < p.weight.size(); i += 9) {
    std::reverse_copy(p.weight.begin() + i, p.weight.begin() + i + 9, p.weight_flipped.begin() + i);
  }
  const int64_t taps_per_group = p.P / 2 * kTaps;
  for (int k = 0; k < 2; ++k) {
    for (int64_t c = 0; c < p.P / 2; ++c) {
      for (int e = 0; e < 9; ++e) {
        p.edge[k][0] += acc_t(0) * p.weight[k * taps_per_group + c * kTaps + 0 * 9 + e];
        p.edge[k][1] += acc_t(0) * p.weight[k * taps_per_group + c * kTaps + 2 * 9 + e];
      }
    }
  }
  if (bias.has_value()) {
    const std::vector<scalar_t> b = to_vector<scalar_t>(*bias);
    p.bias[0] = static_cast<acc_t>(b[0]);
    p.bias[1] = static_cast<acc_t>(b[1]);
  }
  if (bn_scale.has_value()) {  // already in the accumulation type (ops/gate_shift.h)
    p.scale = to_vector<acc_t>(*bn_scale);
    p.shift = to_vector<acc_t>(*bn_shift);
  }
  // Parameter-gradient partials: one PartialsLayout row per group of frames (of any
  // clips), at least as many frames as keep the rows within a tenth of x, and then
  // the fewest that divide a clip or are whole clips: tasks are whole groups, and
  // groups that cut clips unevenly split them unevenly (7x7 planes need groups of 6
  // frames, which split 2 clips of 8 into runs of 12 and 4 on 2 threads).
  const int64_t frames = p.B * p.T;
  const int64_t frame_elements = std::max<int64_t>(1, p.C * p.H * p.W);
  const int64_t row = PartialsLayout{p.P}.size();
  const int64_t least =
      std::clamp<int64_t>((10 * row + frame_elements - 1) / frame_elements, 1, std::max<int64_t>(frames, 1));
  int64_t group = least;
  if (p.T > 0 && least <= p.T) {
    while (p.T % group != 0) {
      ++group;
    }
  } else if (p.T > 0) {
    group = round_up(least, p.T);
  }
  p.frames_per_group = std::min(group, std::max<int64_t>(frames, 1));
  const int64_t x_bytes = frames * frame_elements * int64_t(sizeof(scalar_t));
  choose_tiles(p, x_bytes);
  // About one task per thread: whole clips when there are enough of them, otherwise
  // runs that cut clips; always whole groups. No more tasks run at once than keep all
  // threads' scratch planes within a quarter of x (or 16 MB). Pixel-major (channels_last)
  // frames come on top: a thread stages up to 8 frames (frame_staging.h), and a task's
  // window stages its neighbours' edge frames again (of a one-frame task's backward, 3
  // frames of x and 5 of grad_out), the price of keeping every thread busy.
  const int64_t thread_scratch = kScratchPlanes * Scratch<acc_t>::floats_per_plane(p.tile_h, p.tile_w) *
      int64_t(sizeof(acc_t));
  const int64_t threads = std::clamp<int64_t>(
      std::max<int64_t>(x_bytes / 4, int64_t(16) << 20) / thread_scratch, 1, std::max(1, at::get_num_threads()));
  int64_t wanted = std::max<int64_t>(1, (frames + threads - 1) / threads);
  if (wanted >= p.T) {
    wanted = round_up(wanted, std::max<int64_t>(p.T, 1));
  }
  p.frames_per_task = round_up(wanted, p.frames_per_group);
  return p;
}

template <typename scalar_t, ForwardMode mode>
void launch_forward_tasks(const Problem<scalar_t>& p, const ForwardOutputs<scalar_t>& y) {
  at::parallel_for(0, p.tasks(), 1, [&](int64_t begin, int64_t end) {
    forward_tasks<scalar_t, mode>(p, y, begin, end);
  });
}

// Planes too large for one tile (none of the published networks' shapes) run on
// contiguous copies when any of the call's tensors is pixel-major: a FrameWriter
// writes whole frames, not tiles, and a frame of such planes is too large to stage
// per thread.
inline bool needs_contiguous_copies(int64_t tiles, std::initializer_list<at::Tensor> tensors) {
  return tiles > 1 && std::any_of(tensors.begin(), tensors.end(), has_pixel_major_frames);
}

template <typename scalar_t>
void launch(Backend& cpu, const GateShiftForwardParams& f) {
  using acc_t = acc_type<scalar_t>;
  const Problem<scalar_t> p = make_problem<scalar_t>(f.n, f.x, f.weight, f.bias, f.bn_scale, f.bn_shift);
  if (needs_contiguous_copies(p.tiles(), {f.x, f.out})) {
    GateShiftForwardParams copies = f;
    copies.x = f.x.contiguous();
    copies.out = at::empty_like(f.out, at::MemoryFormat::Contiguous);
    launch<scalar_t>(cpu, copies);
    f.out.copy_(copies.out);
    return;
  }
  const ForwardOutputs<scalar_t> y{frames<scalar_t>(f.out), f.gates.mutable_data_ptr<acc_t>(), nullptr};
  launch_forward_tasks<scalar_t, ForwardMode::kGateShift>(p, y);
}

// The gate-shift backward of GSM, or with b.fuse_coef of Gate-Shift-Fuse.
template <typename scalar_t>
void launch(Backend& cpu, const GateShiftBackwardParams& b) {
  using acc_t = acc_type<scalar_t>;
  Problem<scalar_t> p = make_problem<scalar_t>(b.n, b.x, b.weight, std::nullopt, b.bn_scale, b.bn_shift);
  if (needs_contiguous_copies(p.tiles(), {b.x, b.grad_out, b.grad_x})) {
    GateShiftBackwardParams copies = b;
    copies.x = b.x.contiguous();
    copies.grad_out = b.grad_out.contiguous();
    copies.grad_x = at::empty_like(b.grad_x, at::MemoryFormat::Contiguous);
    launch<scalar_t>(cpu, copies);
    b.grad_x.copy_(copies.grad_x);
    return;
  }
  p.gates = b.gates.const_data_ptr<acc_t>();
  const PartialsLayout layout{p.P};
  const int64_t groups = p.groups();
  const at::Tensor partials = at::empty({groups, layout.size()}, b.gates.options());
  BackwardBuffers<scalar_t> g{
      frames<const scalar_t>(b.grad_out), frames<scalar_t>(b.grad_x), partials.mutable_data_ptr<acc_t>()};
  if (b.fuse_coef.defined()) {
    g.fuse_coef = b.fuse_coef.const_data_ptr<acc_t>();
  }
  at::parallel_for(0, p.tasks(), 1, [&](int64_t begin, int64_t end) {
    backward_tasks<scalar_t>(p, g, begin, end);
  });
  // Sum the groups' partials in group order: reproducible bit for bit.
  std::vector<acc_t> total(layout.size(), acc_t(0));
  const acc_t* part = partials.const_data_ptr<acc_t>();
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t j = 0; j < layout.size(); ++j) {
      total[j] += part[group * layout.size() + j];
    }
  }
  const auto store = [&](const at::Tensor& out, int64_t offset) {
    const at::Tensor sums = at::from_blob(total.data() + offset, {out.numel()}, b.gates.options());
    out.view({out.numel()}).copy_(sums);  // to out's dtype
  };
  store(b.grad_weight, layout.weight());
  store(b.grad_bias, layout.bias());
  if (b.bn_scale.has_value()) {
    store(b.grad_bn_scale, layout.bn_scale());
    store(b.grad_bn_shift, layout.bn_shift());
  }
}

// Compiled once, in gate_shift.cpp, though Gate-Shift-Fuse's backward runs it too.
extern template void launch<float>(Backend&, const GateShiftBackwardParams&);
extern template void launch<double>(Backend&, const GateShiftBackwardParams&);
extern template void launch<c10::Half>(Backend&, const GateShiftBackwardParams&);
extern template void launch<c10::BFloat16>(Backend&, const GateShiftBackwardParams&);

}  // namespace gateshift::cpu
