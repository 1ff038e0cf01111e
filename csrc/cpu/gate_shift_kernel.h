// CPU kernels of the fused Gate-Shift ops, shared by GSM (gate_shift.cpp) and
// Gate-Shift-Fuse (gate_shift_fuse.cpp). gate_shift_launch.h runs them over the
// CPU threads.
//
// Work split. A task is a run of the frames of all clips taken in order (whole
// clips when there are enough of them); at::parallel_for runs the tasks. A task
// slides over each clip's frames of its run with a three-frame window, so every
// plane of x (and of grad_out) comes from memory once and its re-reads for
// neighbouring frames hit the cache. Gate frames on either side of a run that
// cuts a clip are recomputed by both tasks that need them; the run length gives
// about as many tasks as threads, which keeps that overlap to the clips that must
// be split for parallelism.
//
// Plane layout in scratch. Gate accumulators, the gate input u and da live in
// float scratch planes whose rows are Wp = W + 2 apart. A zero-padded plane holds
// (H + 2) rows of Wp; a "strided" plane holds the H x W interior at row stride Wp,
// two junk columns per row. Then a 3x3 correlation of a padded plane, evaluated
// for a whole strided plane, is ONE flat loop over o in [0, H*Wp - 2):
//     out[o] += sum_{jj, ll} k[3*jj + ll] * padded[o + jj*Wp + ll]
// which vectorises for any W, including the 7x7 planes of late layers.
//
// Accumulation is in acc_type (float for half types), and every sum runs
// in an order fixed by the shape alone: results do not depend on the thread count.
// The parameter gradients are summed per group of frames into a workspace and
// then over groups in order, so they are bitwise reproducible. A group's length
// depends only on the shape: at least as many frames (of any clips) as keep the
// workspace within a tenth of x (or one group's 29 P + 2 floats when x is smaller
// than ten of them), then the fewest that divide a clip or are whole clips
// (make_problem). Runs of frames are whole groups, so each group has one owner
// task whatever the thread count.

#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/dtypes.h"
#include "../common/channel_order.h"
#include "../common/compile_target.h"
#include "../common/fusion_math.h"
#include "../common/layout.h"
#include "element_conversion.h"
#include "frame_staging.h"
#include "register_blocked_correlation.h"
#include "vectorizable_tanh.h"

namespace gateshift::cpu {

// --------------------------------------------------------------------------
// Inner loops over strided planes (see the layout note at the top). The gate
// convolution's are in register_blocked_correlation.h.
// --------------------------------------------------------------------------

template <typename acc_t>
GATESHIFT_ALWAYS_INLINE acc_t relu(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, as torch.relu does
}

// Rows between a dense H x W plane and rows `stride` apart. Elementwise work runs
// in flat loops over dense planes (row loops of a few elements would spend their
// time in scalar remainders); only these row loops see the row stride.
//
// A row is mapped in vectors, the last one ending at the row's end (overlapping the
// one before: source and destination never overlap, and f is elementwise, so the
// few elements written twice get the same value twice), and never past it: the
// padded planes' border stays zero. GCC turned the plain element loop of a copy
// into a memmove call per row (10% of a forward's samples at 28x28: a call per row
// of every channel of every frame).
template <typename T, int bytes, typename F>
GATESHIFT_ALWAYS_INLINE void map_row_in_vectors(const T* __restrict src, T* __restrict dst, int64_t n, F&& f) {
  using Simd = SimdOf<T, bytes>;
  constexpr int L = Simd::kLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    Simd::store(dst + i, f(Simd::load(src + i)));
    std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps GCC from making a copy a memmove call again
  }
  if (i < n) {
    Simd::store(dst + n - L, f(Simd::load(src + n - L)));
  }
}

// dst[i] = f(src[i]) for i < n; f takes a T or a vector of T (SimdOf) of at most
// max_bytes (widest_vector_bytes).
template <typename T, typename F>
GATESHIFT_ALWAYS_INLINE void map_row(const T* __restrict src, T* __restrict dst, int64_t n, int max_bytes, F&& f) {
  if (max_bytes >= 64 && n >= 64 / int64_t(sizeof(T))) {
    map_row_in_vectors<T, 64>(src, dst, n, f);
  } else if (max_bytes >= 32 && n >= 32 / int64_t(sizeof(T))) {
    map_row_in_vectors<T, 32>(src, dst, n, f);
  } else if (n >= 16 / int64_t(sizeof(T))) {
    map_row_in_vectors<T, 16>(src, dst, n, f);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = f(src[i]);
      std::atomic_signal_fence(std::memory_order_seq_cst);
    }
  }
}

// Rows of n values where every row's vector may run past its end into the rows'
// padding: where n <= L <= n + 2 for one of the vector sizes up to max_bytes (L lanes),
// f(SimdOf of that size) and true; else false. Then a row takes one vector, where
// map_row takes two (7 values: 4 + 4; 14: 8 + 8): on 7x7 planes the gate input's row
// loop was a fifth of the forward's samples.
template <typename T, typename F>
GATESHIFT_ALWAYS_INLINE bool with_one_vector_a_row(int64_t n, int max_bytes, F&& f) {
  const auto fits = [n](int bytes) GATESHIFT_INLINE_LAMBDA {
    const int64_t lanes = bytes / int64_t(sizeof(T));
    return n <= lanes && lanes <= n + 2;
  };
  if (fits(16)) {
    f(SimdOf<T, 16>{});
  } else if (max_bytes >= 32 && fits(32)) {
    f(SimdOf<T, 32>{});
  } else if (max_bytes >= 64 && fits(64)) {
    f(SimdOf<T, 64>{});
  } else {
    return false;
  }
  return true;
}

// 16 values of all ones, then 16 zeros: from position 16 - n, a vector mask of the first n lanes.
template <typename index_t>
struct OnesThenZeros {
  static constexpr int64_t kOnes = 16;
  alignas(64) static constexpr index_t kValues[32] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
};

// dst row i (dst_stride apart) = f(src row i) for the `rows` rows of n values (src_stride
// apart), in vectors of at most max_bytes. Where n fits one vector (with_one_vector_a_row)
// and dst has at least two padding values after each row, which must stay zero, each row
// but the last is one vector, the lanes past the row cleared; it reads up to two values
// past the row's end, so the last row, which has none after it in src, goes through map_row.
template <typename T, typename F>
GATESHIFT_ALWAYS_INLINE void map_rows_padded(
    const T* __restrict src, int64_t src_stride, int64_t rows, int64_t n, T* __restrict dst, int64_t dst_stride,
    int max_bytes, F&& f) {
  const auto one_vector_a_row = [&](auto vector) GATESHIFT_INLINE_LAMBDA {
    using Simd = decltype(vector);
    using index_t = typename Simd::index_t;
    typedef index_t lanes_t __attribute__((vector_size(sizeof(typename Simd::type))));
    // Lanes < n all ones, the rest zero: read from a constant table (GCC built a vector
    // compare of lane indices lane by lane in scalar code, and a table on the stack
    // stalled its load on the store before it).
    lanes_t in_row;
    std::memcpy(&in_row, OnesThenZeros<index_t>::kValues + (OnesThenZeros<index_t>::kOnes - n), sizeof(in_row));
    for (int64_t i = 0; i + 1 < rows; ++i) {
      const typename Simd::type y = f(Simd::load(src + i * src_stride));
      Simd::store(dst + i * dst_stride, reinterpret_cast<typename Simd::type>(reinterpret_cast<lanes_t>(y) & in_row));
    }
    if (rows > 0) {
      map_row(src + (rows - 1) * src_stride, dst + (rows - 1) * dst_stride, n, max_bytes, f);
    }
  };
  if (dst_stride < n + 2 || !with_one_vector_a_row<T>(n, max_bytes, one_vector_a_row)) {
    for (int64_t i = 0; i < rows; ++i) {
      map_row(src + i * src_stride, dst + i * dst_stride, n, max_bytes, f);
    }
  }
}

// A dense H x W plane into rows `stride` apart whose padding stays zero.
template <typename T>
GATESHIFT_ALWAYS_INLINE void scatter_rows(
    const T* __restrict dense, int64_t H, int64_t W, T* __restrict rows, int64_t stride, int max_bytes) {
  map_rows_padded(dense, W, H, W, rows, stride, max_bytes, [](auto v) GATESHIFT_INLINE_LAMBDA { return v; });
}

// Dense rows from rows `stride` (>= W + 2) apart. Where W fits one vector
// (with_one_vector_a_row), each row but the last is one vector copy whose lanes past
// the row land at the start of the next dense row, which its own copy overwrites after.
template <typename T>
GATESHIFT_ALWAYS_INLINE void gather_rows(
    const T* __restrict rows, int64_t stride, int64_t H, int64_t W, T* __restrict dense, int max_bytes) {
  const auto copy = [](auto v) GATESHIFT_INLINE_LAMBDA { return v; };
  const auto one_vector_a_row = [&](auto vector) GATESHIFT_INLINE_LAMBDA {
    using Simd = decltype(vector);
    for (int64_t h = 0; h + 1 < H; ++h) {
      Simd::store(dense + h * W, Simd::load(rows + h * stride));
    }
    if (H > 0) {
      map_row(rows + (H - 1) * stride, dense + (H - 1) * W, W, max_bytes, copy);
    }
  };
  if (stride < W + 2 || !with_one_vector_a_row<T>(W, max_bytes, one_vector_a_row)) {
    for (int64_t h = 0; h < H; ++h) {
      map_row(rows + h * stride, dense + h * W, W, max_bytes, copy);
    }
  }
}

// --------------------------------------------------------------------------
// Tiles: what of a plane a task processes at a time.
// --------------------------------------------------------------------------

// A rectangle of an (H, W) plane: rows [r0, r0 + rows), columns [c0, c0 + cols).
struct Rect {
  int64_t r0, c0, rows, cols;
  int64_t size() const {
    return rows * cols;
  }
};

// A tile's own pixels and, for the 3x3 convolutions, its halo: the tile grown by one
// pixel on each side, within the plane. A whole-plane tile is its own halo.
struct TileGeometry {
  Rect own, halo;
  bool whole;
};

// f(plane_offset, dense_offset, length) over the runs of r's pixels that are
// contiguous both in a plane of width W and in r's dense (rows x cols) copy: one run
// when r spans whole rows, so whole planes keep flat loops (rows of a few pixels
// would spend their time in scalar remainders).
template <typename F>
GATESHIFT_ALWAYS_INLINE void for_each_run(const Rect& r, int64_t W, F&& f) {
  if (r.cols == W) {
    f(r.r0 * W, int64_t(0), r.rows * W);
    return;
  }
  for (int64_t i = 0; i < r.rows; ++i) {
    f((r.r0 + i) * W + r.c0, i * r.cols, r.cols);
  }
}

// --------------------------------------------------------------------------
// Problem descriptions shared by the tasks of one call.
// --------------------------------------------------------------------------

template <typename scalar_t>
struct Problem {
  using acc_t = acc_type<scalar_t>;
  int64_t B, T, C, H, W, P;
  bool interleaved;
  Frames<const scalar_t> x;  // read through a FrameReader
  // Parameters in acc_t. weight is (2, P/2, 27); backward also keeps each 3x3
  // slice flipped, the kernel of the transposed conv.
  std::vector<acc_t> weight, weight_flipped;
  acc_t bias[2] = {0, 0};
  // What the gating conv's zero padding in time adds to a gate at the clip's first
  // (edge[k][0]: tap 0, frame -1) and last (edge[k][1]: tap 2, frame T) frame: the sum
  // of 0 * w over that tap, 0 unless a weight there is NaN or infinite. The published
  // conv3d multiplies the padding, so a non-finite weight makes those gates NaN.
  acc_t edge[2][2] = {{0, 0}, {0, 0}};
  std::vector<acc_t> scale, shift;  // empty without the BN affine
  const acc_t* gates = nullptr;     // (B, T, 2, H, W): read by backward
  // Frames counted over all clips in order (clip b's frame t is frame b * T + t):
  int64_t frames_per_task;   // a task's run of frames, a multiple of frames_per_group
  int64_t frames_per_group;  // frames whose parameter-gradient partials are summed together

  // The plane is processed in tile_h x tile_w tiles, tiles_h x tiles_w of them: one
  // whole-plane tile unless a plane's scratch would be large next to x (make_problem).
  int64_t tile_h, tile_w, tiles_h, tiles_w;

  int64_t tiles() const {
    return tiles_h * tiles_w;
  }
  TileGeometry tile_geometry(int64_t tile) const {
    const int64_t h0 = tile / tiles_w * tile_h, w0 = tile % tiles_w * tile_w;
    const Rect own{h0, w0, std::min(tile_h, H - h0), std::min(tile_w, W - w0)};
    const int64_t r0 = std::max<int64_t>(h0 - 1, 0), c0 = std::max<int64_t>(w0 - 1, 0);
    const Rect halo{r0, c0, std::min(h0 + own.rows + 1, H) - r0, std::min(w0 + own.cols + 1, W) - c0};
    return TileGeometry{own, halo, tiles() == 1};
  }
  int64_t tasks() const {
    return (B * T + frames_per_task - 1) / frames_per_task;
  }
  int64_t groups() const {
    return (B * T + frames_per_group - 1) / frames_per_group;
  }
};

// Scratch planes of one worker thread, reused across its tasks.
//
// The flat loops run over `strided` elements, H * Wp - 2 rounded up to a multiple
// of kLoopMultiple: a 7 x 7 plane is a 61-element loop, and its 13-element scalar
// remainder used to cost more than its vector iterations. The extra elements are
// junk like the junk columns (u is zero there), and every plane is long enough
// for a correlation's reads past them.
constexpr int64_t kLoopMultiple = 16;

// Input channels whose gate inputs the forward holds at once, to correlate them in
// one register-blocked pass (register_blocked_correlation.h): a chunk of 28x28
// planes is 29 KB, within a core's L1 with the accumulators' lines.
constexpr int64_t kChannelChunk = 8;
// The forward's scratch planes: the chunk, a dense gate input, and per frame % 3 and
// group an accumulator and a finished gate. The backward holds 12.
constexpr int64_t kForwardScratchPlanes = kChannelChunk + 1 + 6 + 6;

template <typename acc_t>
struct Scratch {
  int64_t Wp, strided, plane_size;  // row stride, length of the flat loops, floats per plane
  std::vector<acc_t> storage;
  acc_t* next;

  static int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
  }
  // For tiles of at most H x W pixels.
  Scratch(int64_t H, int64_t W, int64_t planes)
      : Wp(W + 2),
        strided(round_up(H * (W + 2) - 2, kLoopMultiple)),
        plane_size(floats_per_plane(H, W)),
        storage(allocate(planes * plane_size)),
        next(storage.data()) {}
  static int64_t floats_per_plane(int64_t H, int64_t W) {
    const int64_t strided = round_up(H * (W + 2) - 2, kLoopMultiple);
    return round_up(std::max((H + 2) * (W + 2), strided + 2 * (W + 2) + 2), kLoopMultiple);
  }
  static std::vector<acc_t> allocate(int64_t floats) {
    try {
      return std::vector<acc_t>(static_cast<size_t>(floats), acc_t(0));
    } catch (const std::bad_alloc&) {
      TORCH_CHECK(false, "gateshift: could not allocate ", floats * int64_t(sizeof(acc_t)), " bytes of CPU scratch");
    }
  }
  // The flat loops' length for a tile of `rows` rows.
  int64_t strided_for(int64_t rows) const {
    return round_up(rows * Wp - 2, kLoopMultiple);
  }
  // Zero-filled when handed out; the border of a whole padded plane is never written.
  acc_t* plane() {
    acc_t* p = next;
    next += plane_size;
    return p;
  }
};

// The gate input of one channel over the rectangle `r` of its plane x (width W):
// u = relu(sc * x + sh), or x itself without the BN affine, into rows `stride`
// apart in acc_t. A float or double x goes straight into the rows; a half-precision
// one through a flat loop into `dense` (a scratch plane) and scatter_rows, where the
// compiler vectorises the conversion.
template <typename scalar_t, typename acc_t>
GATESHIFT_ALWAYS_INLINE void gate_input_rows(
    const scalar_t* __restrict x, int64_t W, const Rect& r, bool affine, acc_t sc, acc_t sh, acc_t* __restrict dense,
    acc_t* __restrict dst, int64_t stride, int max_bytes) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    const auto affine_relu = [sc, sh](auto v) GATESHIFT_INLINE_LAMBDA {
      using value_t = decltype(v);
      const value_t y = sc * v + sh;
      if constexpr (std::is_floating_point_v<value_t>) {
        return relu(y);
      } else {  // a vector: clear the lanes below zero (NaN is not below zero, and stays)
        using bits_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
        typedef bits_t bits __attribute__((vector_size(sizeof(value_t))));
        return reinterpret_cast<value_t>(reinterpret_cast<bits>(y) & ~reinterpret_cast<bits>(y < acc_t(0)));
      }
    };
    const acc_t* src = x + r.r0 * W + r.c0;
    if (affine) {
      map_rows_padded(src, W, r.rows, r.cols, dst, stride, max_bytes, affine_relu);
    } else {
      map_rows_padded(src, W, r.rows, r.cols, dst, stride, max_bytes, [](auto v) GATESHIFT_INLINE_LAMBDA { return v; });
    }
  } else {
    for_each_run(r, W, [&](int64_t at, int64_t d, int64_t len) GATESHIFT_INLINE_LAMBDA {
      if (affine) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          dense[d + i] = relu(sc * widen<acc_t>(x[at + i]) + sh);
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          dense[d + i] = widen<acc_t>(x[at + i]);
        }
      }
    });
    scatter_rows(dense, r.rows, r.cols, dst, stride, max_bytes);
  }
}

// Where the tile's halo starts in the zero-padded plane `padded` of the tile (rows
// Wp apart), made ready for the halo's values: the positions outside the (H, W)
// plane stay zero. A whole plane's border is never written; a tile's is cleared, as
// the last tile's halo may have been there.
template <typename acc_t>
GATESHIFT_ALWAYS_INLINE acc_t* padded_halo(
    const TileGeometry& box, int64_t Wp, acc_t* padded, const Scratch<acc_t>& scratch) {
  if (!box.whole) {
    std::fill(padded, padded + scratch.plane_size, acc_t(0));
  }
  return padded + (box.halo.r0 - box.own.r0 + 1) * Wp + (box.halo.c0 - box.own.c0 + 1);
}

// The dense values over a tile's halo, into the zero-padded plane `padded`.
template <typename acc_t>
GATESHIFT_ALWAYS_INLINE void place_padded(
    const acc_t* dense, const TileGeometry& box, int64_t Wp, acc_t* padded, const Scratch<acc_t>& scratch,
    int max_bytes) {
  scatter_rows(dense, box.halo.rows, box.halo.cols, padded_halo(box, Wp, padded, scratch), Wp, max_bytes);
}

// --------------------------------------------------------------------------
// Forward
// --------------------------------------------------------------------------

// What a forward pass writes for each finished frame: GSM's output, or (the
// first pass of Gate-Shift-Fuse) the spatial means of the shifted part
// ys = g[t +- 1] x[t +- 1] and of the residual r = (1 - g[t]) x[t] per channel.
enum class ForwardMode { kGateShift, kFuseMeans };

template <typename scalar_t>
struct ForwardOutputs {
  Frames<scalar_t> out;  // kGateShift
  acc_type<scalar_t>* gates;
  acc_type<scalar_t>* fusion;  // kFuseMeans: the (B, T, 3, P) table, rows 0 (ym) and 1 (rm)
};

// Output frame t of clip b when x and the output are both pixel-major, a pixel at a
// time (GSM's output pass here, GSF's in gate_shift_fuse_kernel.h): per group k, its
// channels in runs over each pixel, placed in the output channel order, then the
// pass-through channels copied. value(k, has_next, i, xp, xnp, q) is the output of the
// group's channel q at pixel i in acc_t (rounded here), xp and xnp pointing at the
// group's channels of x at frames t and tn (t + 1 for group 0, t - 1 for group 1;
// has_next: tn is in the clip).
template <typename scalar_t, typename Value>
GATESHIFT_ALWAYS_INLINE void write_pixel_major_output_frame(
    const Problem<scalar_t>& p, int64_t b, int64_t t, const Frames<scalar_t>& out, Value&& value) {
  const int64_t T = p.T, C = p.C, P = p.P, half = P / 2, quarter = P / 4, HW = p.H * p.W;
  const scalar_t* xf = p.x.data + p.x.strides.plane(b, t, 0);
  scalar_t* of = out.data + out.strides.plane(b, t, 0);
  for (int k = 0; k < 2; ++k) {
    const int64_t tn = k == 0 ? t + 1 : t - 1, c0 = k * half;
    const bool has_next = tn >= 0 && tn < T;
    const scalar_t* xnf = has_next ? p.x.data + p.x.strides.plane(b, tn, 0) : xf;
    for (int64_t i = 0; i < HW; ++i) {
      const scalar_t* xp = xf + i * C + c0;
      const scalar_t* xnp = xnf + i * C + c0;
      scalar_t* op = of + i * C + c0;
      // The group's channel q goes to q, or interleaved (channel_order.h): the group's
      // two quarters alternate, q = i * quarter + j going to 2 j + i.
      if (p.interleaved) {
#pragma omp simd
        for (int64_t j = 0; j < quarter; ++j) {
          store_rounded(op[2 * j], value(k, has_next, i, xp, xnp, j));
          store_rounded(op[2 * j + 1], value(k, has_next, i, xp, xnp, quarter + j));
        }
      } else {
#pragma omp simd
        for (int64_t q = 0; q < half; ++q) {
          store_rounded(op[q], value(k, has_next, i, xp, xnp, q));
        }
      }
    }
  }
  for (int64_t i = 0; i < HW; ++i) {  // pass-through channels
    std::copy(xf + i * C + P, xf + (i + 1) * C, of + i * C + P);
  }
}

template <typename scalar_t, ForwardMode mode = ForwardMode::kGateShift>
GATESHIFT_CPU_MULTIVERSION void forward_tasks(
    const Problem<scalar_t>& p, const ForwardOutputs<scalar_t>& y, int64_t task_begin, int64_t task_end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = p.H, W = p.W, HW = H * W, T = p.T, P = p.P, half = P / 2;
  const bool affine = !p.scale.empty();
  Scratch<acc_t> scratch(p.tile_h, p.tile_w, kForwardScratchPlanes);
  const int64_t Wp = scratch.Wp;
  const VectorShape shape = cpu_vector_shape();
  const int max_bytes = widest_vector_bytes(shape);
  acc_t* u_chunk[kChannelChunk];  // padded gate inputs of a chunk of channels of one frame,
  for (auto& plane : u_chunk) {   // consecutive (plane_size apart)
    plane = scratch.plane();
  }
  acc_t* const u_dense = scratch.plane();  // one channel's, dense, before it is padded (half types)
  // x and the output both pixel-major (then planes are whole tiles: launch): the
  // output pass reads x's pixels where they are and writes the output's directly.
  const bool pixel_rows = mode == ForwardMode::kGateShift && p.x.pixel_major && y.out.pixel_major;
  // x's frames s-3 .. s are in use while input frame s is correlated (the output
  // frame it completes reads its neighbours), only s when the output pass reads pixels.
  FrameReader<scalar_t> x_frames(p.x, T, pixel_rows ? 1 : 4);
  FrameWriter<scalar_t> out_frames(y.out);
  acc_t* acc[3][2];                  // gate accumulators (strided), by frame % 3 and group
  acc_t* gate[3][2];                 // finished gates (dense tile), by frame % 3 and group
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 2; ++k) {
      acc[r][k] = scratch.plane();
      gate[r][k] = scratch.plane();
    }
  }

  for (int64_t task = task_begin; task < task_end; ++task) {
    // A task is a run of the frames of all clips in order (whole groups of frames,
    // possibly across clips): one segment [t0, t1) per clip b it touches.
    const int64_t f0 = task * p.frames_per_task, f1 = std::min(p.B * T, f0 + p.frames_per_task);
    for (int64_t b = f0 / T; b * T < f1; ++b) {
      const int64_t t0 = std::max<int64_t>(f0 - b * T, 0), t1 = std::min(f1 - b * T, T);
      // Output frames [t0, t1) need gate frames [glo, ghi), which need input frames [slo, shi).
      const int64_t glo = std::max<int64_t>(t0 - 1, 0), ghi = std::min(t1 + 1, T);
      const int64_t slo = std::max<int64_t>(glo - 1, 0), shi = std::min(ghi + 1, T);
      for (int64_t tile = 0; tile < p.tiles(); ++tile) {
        const TileGeometry box = p.tile_geometry(tile);
        const Rect& own = box.own;
        const int64_t n = box.whole ? scratch.strided : scratch.strided_for(own.rows);

        const auto write_output_frame = [&](int64_t t) GATESHIFT_INLINE_LAMBDA {
          if (pixel_rows) {  // z = x - g x + gn xn, as in the plane loop below
            write_pixel_major_output_frame(
                p, b, t, y.out,
                [&](int k, bool has_next, int64_t i, const scalar_t* xp, const scalar_t* xnp, int64_t q)
                    GATESHIFT_INLINE_LAMBDA {
                      const acc_t xv = widen<acc_t>(xp[q]), gv = gate[t % 3][k][i];
                      return has_next
                          ? xv - gv * xv + gate[(k == 0 ? t + 1 : t - 1) % 3][k][i] * widen<acc_t>(xnp[q])
                          : xv - gv * xv;
                    });
            return;
          }
          for (int64_t c = 0; c < (mode == ForwardMode::kGateShift ? p.C : P); ++c) {
            const scalar_t* xc = x_frames.plane(b, t, c);
            if (c >= P) {  // pass-through channel
              scalar_t* oc = out_frames.plane(b, t, c);
              for_each_run(own, W, [&](int64_t at, int64_t, int64_t len) GATESHIFT_INLINE_LAMBDA {
                std::copy(xc + at, xc + at + len, oc + at);
              });
              continue;
            }
            const int64_t k = c / half;
            const acc_t* g = gate[t % 3][k];
            // Group 0 takes from the next frame, group 1 from the previous one; zero at the clip ends.
            const int64_t tn = k == 0 ? t + 1 : t - 1;
            const bool has_next = tn >= 0 && tn < T;
            const acc_t* gn = has_next ? gate[tn % 3][k] : g;
            const scalar_t* xn = has_next ? x_frames.plane(b, tn, c) : xc;
            if constexpr (mode == ForwardMode::kGateShift) {
              scalar_t* oc = out_frames.plane(b, t, output_channel(c, P, p.interleaved));
              for_each_run(own, W, [&](int64_t at, int64_t d, int64_t len) GATESHIFT_INLINE_LAMBDA {
                if (has_next) {
#pragma omp simd
                  for (int64_t i = 0; i < len; ++i) {
                    const acc_t xv = widen<acc_t>(xc[at + i]);
                    store_rounded(oc[at + i], xv - g[d + i] * xv + gn[d + i] * widen<acc_t>(xn[at + i]));
                  }
                } else {
#pragma omp simd
                  for (int64_t i = 0; i < len; ++i) {
                    const acc_t xv = widen<acc_t>(xc[at + i]);
                    store_rounded(oc[at + i], xv - g[d + i] * xv);
                  }
                }
              });
            } else {
              acc_t shifted = 0, residual = 0;
              for_each_run(own, W, [&](int64_t at, int64_t d, int64_t len) GATESHIFT_INLINE_LAMBDA {
                acc_t run_shifted = 0, run_residual = 0;  // in registers (as the backward's run_ds)
#pragma omp simd reduction(+ : run_shifted, run_residual)
                for (int64_t i = 0; i < len; ++i) {
                  const acc_t xv = widen<acc_t>(xc[at + i]);
                  run_residual += xv - g[d + i] * xv;
                  run_shifted += gn[d + i] * widen<acc_t>(xn[at + i]);
                }
                shifted += run_shifted;
                residual += run_residual;
              });
              // Tiles add their shares of the means in tile order.
              const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
              acc_t& ym = y.fusion[table_index(b, t, 0, c, T, 3, P)];
              acc_t& rm = y.fusion[table_index(b, t, 1, c, T, 3, P)];
              ym = (tile == 0 ? acc_t(0) : ym) + (has_next ? shifted * inv_hw : acc_t(0));
              rm = (tile == 0 ? acc_t(0) : rm) + residual * inv_hw;
            }
          }
          if constexpr (mode == ForwardMode::kGateShift) {
            out_frames.finish(b, t);
          }
        };

        // Gate frame tg is complete: tanh, keep it for the output, store it for backward.
        const auto finish_gate_frame = [&](int64_t tg) GATESHIFT_INLINE_LAMBDA {
          for (int k = 0; k < 2; ++k) {
            acc_t* g = gate[tg % 3][k];
            gather_rows(acc[tg % 3][k], Wp, own.rows, own.cols, g, max_bytes);
#pragma omp simd
            for (int64_t i = 0; i < own.size(); ++i) {
              g[i] = tanh_vectorizable(g[i]);
            }
            if (tg >= t0 && tg < t1) {
              acc_t* stored = y.gates + ((b * T + tg) * 2 + k) * HW;
              for_each_run(own, W, [&](int64_t at, int64_t d, int64_t len) GATESHIFT_INLINE_LAMBDA {
                std::copy(g + d, g + d + len, stored + at);
              });
            }
          }
        };

        int64_t next_to_start = glo;  // first gate frame whose accumulator is not set up yet
        for (int64_t s = slo; s < shi; ++s) {
          // Input frame s feeds gate frames tg in [s-1, s+1] through weight tap i = s - tg + 1.
          const int64_t tg_first = std::max(s - 1, glo), tg_last = std::min(s + 1, ghi - 1);
          for (; next_to_start <= tg_last; ++next_to_start) {
            const int64_t tg = next_to_start;
            for (int k = 0; k < 2; ++k) {
              const acc_t start =
                  p.bias[k] + (tg == 0 ? p.edge[k][0] : acc_t(0)) + (tg == T - 1 ? p.edge[k][1] : acc_t(0));
              std::fill(acc[tg % 3][k], acc[tg % 3][k] + n, start);
            }
          }
          const int targets = static_cast<int>(tg_last - tg_first + 1);
          for (int64_t c0 = 0, channels = 0; c0 < P; c0 += channels) {
            // A chunk of one group's channels (a group's last may be shorter): their gate
            // inputs over the tile and its halo (the plane itself when whole), then their
            // correlation into the targets.
            const int64_t k = c0 / half;
            channels = std::min(kChannelChunk, (k + 1) * half - c0);
            for (int64_t j = 0; j < channels; ++j) {
              const int64_t c = c0 + j;
              const scalar_t* xc = x_frames.plane(b, s, c);
              const acc_t sc = affine ? p.scale[c] : acc_t(1);
              const acc_t sh = affine ? p.shift[c] : acc_t(0);
              gate_input_rows(
                  xc, W, box.halo, affine, sc, sh, u_dense, padded_halo(box, Wp, u_chunk[j], scratch), Wp, max_bytes);
            }
            const acc_t* kernels[3];
            acc_t* targets_of[3] = {nullptr, nullptr, nullptr};
            for (int m = 0; m < targets; ++m) {
              const int64_t tg = tg_first + m;
              kernels[m] = p.weight.data() + c0 * kTaps + (s - tg + 1) * 9;
              targets_of[m] = acc[tg % 3][k];
            }
            const int64_t stride = scratch.plane_size;
            switch (targets) {
              case 1:
                correlate_channels<1>(shape, u_chunk[0], stride, channels, Wp, n, kernels, targets_of);
                break;
              case 2:
                correlate_channels<2>(shape, u_chunk[0], stride, channels, Wp, n, kernels, targets_of);
                break;
              default:
                correlate_channels<3>(shape, u_chunk[0], stride, channels, Wp, n, kernels, targets_of);
                break;
            }
          }
          // Gate frame s-1 has all its inputs now; so has frame s when s is the clip's last.
          // Output frame t needs gate frames t-1..t+1, so it follows gate frame t+1.
          for (int64_t tg = s - 1; tg <= s; ++tg) {
            if (tg < glo || tg >= ghi || (tg == s && s != T - 1)) {
              continue;
            }
            finish_gate_frame(tg);
            if (tg - 1 >= t0 && tg - 1 < t1) {
              write_output_frame(tg - 1);
            }
            if (tg == T - 1 && tg >= t0 && tg < t1) {
              write_output_frame(tg);
            }
          }
        }
      }
    }
  }
}

// --------------------------------------------------------------------------
// Backward
// --------------------------------------------------------------------------

template <typename scalar_t>
struct BackwardBuffers {
  using acc_t = acc_type<scalar_t>;
  Frames<const scalar_t> grad_out;
  Frames<scalar_t> grad_x;
  // Partial sums of the parameter gradients per group of frames ((b * T + t) /
  // frames_per_group), laid out as PartialsLayout{P}.
  acc_t* partials;
  // Gate-Shift-Fuse only (null for GSM): the (B, T, 4, P) table turning the output
  // gradient dz of channel c at frame t into the gradients of its residual,
  // dr = a_r dz + b_r (rows 0 and 1), and of its shifted part, dys = a_y dz + b_y
  // (rows 2 and 3). GSM's z = r + ys is a_r = a_y = 1, b_r = b_y = 0.
  const acc_t* fuse_coef = nullptr;

  // (a, b) of `row` (0: residual, 2: shifted part) at clip b, frame t, channel c.
  std::pair<acc_t, acc_t> coef(int64_t row, int64_t b, int64_t t, int64_t c, int64_t T, int64_t P) const {
    if (fuse_coef == nullptr) {
      return {acc_t(1), acc_t(0)};
    }
    const acc_t* e = fuse_coef + table_index(b, t, row, c, T, 4, P);
    return {e[0], e[P]};
  }
};

template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void backward_tasks(
    const Problem<scalar_t>& p, const BackwardBuffers<scalar_t>& g, int64_t task_begin, int64_t task_end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = p.H, W = p.W, HW = H * W, T = p.T, P = p.P, half = P / 2;
  const bool affine = !p.scale.empty();
  Scratch<acc_t> scratch(p.tile_h, p.tile_w, 6 + 2 + 2 + 2);
  const int64_t Wp = scratch.Wp;
  const VectorShape shape = cpu_vector_shape();
  const int max_bytes = widest_vector_bytes(shape);
  acc_t* da[3][2];  // padded da planes, by frame % 3 and group
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 2; ++k) {
      da[r][k] = scratch.plane();
    }
  }
  acc_t* dg[2] = {scratch.plane(), scratch.plane()};  // dense over the tile and its halo
  acc_t* const u = scratch.plane();                   // strided; junk columns stay zero
  acc_t* const du = scratch.plane();                  // strided
  acc_t* const u_dense = scratch.plane();
  acc_t* const du_dense = scratch.plane();
  acc_t da_sum[3][2];                                 // sum of da over the tile, for dbias
  // In use at output frame t: x at t and t + 1 (da), grad_out at t - 1 .. t + 2.
  FrameReader<scalar_t> x_frames(p.x, T, 3);
  FrameReader<scalar_t> grad_frames(g.grad_out, T, 4);
  FrameWriter<scalar_t> grad_x_frames(g.grad_x);
  const auto grad_plane = [&](int64_t b, int64_t t, int64_t c) GATESHIFT_INLINE_LAMBDA {
    return grad_frames.plane(b, t, c);
  };

  for (int64_t task = task_begin; task < task_end; ++task) {
    // A task is a run of the frames of all clips in order (whole groups of frames,
    // possibly across clips): one segment [t0, t1) per clip b it touches.
    const int64_t f0 = task * p.frames_per_task, f1 = std::min(p.B * T, f0 + p.frames_per_task);
    for (int64_t b = f0 / T; b * T < f1; ++b) {
      const int64_t t0 = std::max<int64_t>(f0 - b * T, 0), t1 = std::min(f1 - b * T, T);
      // dx at frames [t0, t1) needs da at frames [t0-1, t1+1) (the transposed conv).
      const int64_t ghi = std::min(t1 + 1, T);
      for (int64_t tile = 0; tile < p.tiles(); ++tile) {
        const TileGeometry box = p.tile_geometry(tile);
        const Rect &own = box.own, &halo = box.halo;
        const int64_t n = box.whole ? scratch.strided : scratch.strided_for(own.rows);
        int64_t next_da = std::max<int64_t>(t0 - 1, 0);

        // da_k[f] = (1 - g_k[f]^2) * sum_{c in G_k} x_c[f] * (dys_c[neighbour] - dr_c[f]),
        // the neighbour being f-1 for group 0 and f+1 for group 1 (the adjoint of the
        // shifts); for GSM dr = dys = dz. Over the tile and its halo, which the
        // transposed conv reads.
        const auto compute_da_frame = [&](int64_t f) GATESHIFT_INLINE_LAMBDA {
          std::fill(dg[0], dg[0] + halo.size(), acc_t(0));
          std::fill(dg[1], dg[1] + halo.size(), acc_t(0));
          for (int64_t c = 0; c < P; ++c) {
            const int64_t k = c / half, oc = output_channel(c, P, p.interleaved);
            const scalar_t* xc = x_frames.plane(b, f, c);
            const scalar_t* dz = grad_plane(b, f, oc);
            const int64_t fn = k == 0 ? f - 1 : f + 1;
            // Plain names, not structured bindings: clang cannot capture those in OpenMP loops.
            const std::pair<acc_t, acc_t> residual = g.coef(0, b, f, c, T, P);
            const acc_t ar = residual.first, br = residual.second;
            acc_t* d = dg[k];
            if (fn >= 0 && fn < T) {
              const scalar_t* dzn = grad_plane(b, fn, oc);
              const std::pair<acc_t, acc_t> shifted = g.coef(2, b, fn, c, T, P);
              const acc_t ay = shifted.first, by = shifted.second;
              for_each_run(halo, W, [&](int64_t at, int64_t o, int64_t len) GATESHIFT_INLINE_LAMBDA {
#pragma omp simd
                for (int64_t i = 0; i < len; ++i) {
                  d[o + i] += widen<acc_t>(xc[at + i]) *
                      ((ay * widen<acc_t>(dzn[at + i]) + by) - (ar * widen<acc_t>(dz[at + i]) + br));
                }
              });
            } else {
              for_each_run(halo, W, [&](int64_t at, int64_t o, int64_t len) GATESHIFT_INLINE_LAMBDA {
#pragma omp simd
                for (int64_t i = 0; i < len; ++i) {
                  d[o + i] -= widen<acc_t>(xc[at + i]) * (ar * widen<acc_t>(dz[at + i]) + br);
                }
              });
            }
          }
          for (int k = 0; k < 2; ++k) {
            const acc_t* gk = p.gates + ((b * T + f) * 2 + k) * HW;
            acc_t* d = dg[k];
            acc_t sum = 0;
            for_each_run(halo, W, [&](int64_t at, int64_t o, int64_t len) GATESHIFT_INLINE_LAMBDA {
#pragma omp simd reduction(+ : sum)
              for (int64_t i = 0; i < len; ++i) {
                d[o + i] *= acc_t(1) - gk[at + i] * gk[at + i];
                sum += d[o + i];
              }
            });
            if (!box.whole) {  // dbias sums the tile's own pixels, not its halo
              sum = 0;
              for (int64_t r = 0; r < own.rows; ++r) {
                const acc_t* row = d + (own.r0 - halo.r0 + r) * halo.cols + (own.c0 - halo.c0);
                for (int64_t i = 0; i < own.cols; ++i) {
                  sum += row[i];
                }
              }
            }
            place_padded(d, box, Wp, da[f % 3][k], scratch, max_bytes);
            da_sum[f % 3][k] = sum;
          }
        };

        for (int64_t t = t0; t < t1; ++t) {
          for (; next_da < std::min(t + 2, ghi); ++next_da) {
            compute_da_frame(next_da);
          }
          // This task owns whole groups: it starts each group's slot at its first frame
          // (first tile); the tiles of a frame add to it in tile order.
          const PartialsLayout layout{P};
          acc_t* part = g.partials + (b * T + t) / p.frames_per_group * layout.size();
          if ((b * T + t) % p.frames_per_group == 0 && tile == 0) {
            std::fill(part, part + layout.size(), acc_t(0));
          }
          acc_t* const dweight = part + layout.weight();
          acc_t* const dbias = part + layout.bias();
          acc_t* const dscale = part + layout.bn_scale();
          acc_t* const dshift = part + layout.bn_shift();
          dbias[0] += da_sum[t % 3][0];
          dbias[1] += da_sum[t % 3][1];

          for (int64_t c = 0; c < p.C; ++c) {
            const scalar_t* xc = x_frames.plane(b, t, c);
            scalar_t* dxc = grad_x_frames.plane(b, t, c);
            if (c >= P) {  // pass-through channel
              const scalar_t* dz = grad_plane(b, t, c);
              for_each_run(own, W, [&](int64_t at, int64_t, int64_t len) GATESHIFT_INLINE_LAMBDA {
                std::copy(dz + at, dz + at + len, dxc + at);
              });
              continue;
            }
            const int64_t k = c / half, oc = output_channel(c, P, p.interleaved);
            const acc_t sc = affine ? p.scale[c] : acc_t(1);
            const acc_t sh = affine ? p.shift[c] : acc_t(0);
            if (!box.whole) {  // a narrower tile than the last leaves junk in the columns past it
              std::fill(u, u + n, acc_t(0));
            }
            gate_input_rows(xc, W, own, affine, sc, sh, u_dense, u, Wp, max_bytes);
            std::fill(du, du + n, acc_t(0));
            // Frame tap i of the conv links u at frame t with da at frame t - i + 1.
            for (int i = 0; i < 3; ++i) {
              const int64_t f = t - i + 1;
              if (f < 0 || f >= T) {
                continue;
              }
              acc_t dkf[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
              correlate_backward(shape, da[f % 3][k], Wp, n, p.weight_flipped.data() + c * kTaps + i * 9, u, du, dkf);
              for (int e = 0; e < 9; ++e) {
                dweight[c * kTaps + i * 9 + (8 - e)] += dkf[e];  // undo the flip
              }
            }
            // dx = adjoint of gating and shift, plus du through the BN affine and ReLU.
            const acc_t* gk = p.gates + ((b * T + t) * 2 + k) * HW;
            const scalar_t* dz = grad_plane(b, t, oc);
            const int64_t tn = k == 0 ? t - 1 : t + 1;
            const bool has_next = tn >= 0 && tn < T;
            const scalar_t* dzn = has_next ? grad_plane(b, tn, oc) : dz;
            const acc_t next_weight = has_next ? acc_t(1) : acc_t(0);
            // dx = (1 - g[t]) dr[t] + g[t] dys[tn]: the residual's and the shifted part's gradients.
            const std::pair<acc_t, acc_t> residual = g.coef(0, b, t, c, T, P);
            const std::pair<acc_t, acc_t> shifted =
                has_next ? g.coef(2, b, tn, c, T, P) : std::pair<acc_t, acc_t>{acc_t(0), acc_t(0)};
            const acc_t ar = residual.first, br = residual.second, ay = shifted.first, by = shifted.second;
            gather_rows(du, Wp, own.rows, own.cols, du_dense, max_bytes);
            if (affine) {
              acc_t ds = 0, dh = 0;
              for_each_run(own, W, [&](int64_t at, int64_t o, int64_t len) GATESHIFT_INLINE_LAMBDA {
                // The run's own sums, added after it: as the loop's reductions, the captured
                // ds and dh stayed on the stack in GCC's code, a store and a reload on every
                // iteration's dependency chain, and du_dense, read under the ReLU's condition,
                // a masked load merged into a stack slot. As locals, with du_dense read for
                // every lane, all stay in registers (the raw backward 4-6% faster at 28x28).
                acc_t run_ds = 0, run_dh = 0;
#pragma omp simd reduction(+ : run_ds, run_dh)
                for (int64_t q = 0; q < len; ++q) {
                  const acc_t gv = gk[at + q];
                  const acc_t xv = widen<acc_t>(xc[at + q]);
                  // ReLU passes du where its input was positive; the affine scales it.
                  const acc_t du_q = du_dense[o + q];
                  const acc_t dum = sc * xv + sh > acc_t(0) ? du_q : acc_t(0);
                  run_ds += dum * xv;
                  run_dh += dum;
                  store_rounded(dxc[at + q],
                      (acc_t(1) - gv) * (ar * widen<acc_t>(dz[at + q]) + br) +
                      next_weight * gv * (ay * widen<acc_t>(dzn[at + q]) + by) + dum * sc);
                }
                ds += run_ds;
                dh += run_dh;
              });
              dscale[c] += ds;
              dshift[c] += dh;
            } else {
              for_each_run(own, W, [&](int64_t at, int64_t o, int64_t len) GATESHIFT_INLINE_LAMBDA {
#pragma omp simd
                for (int64_t q = 0; q < len; ++q) {
                  const acc_t gv = gk[at + q];
                  store_rounded(dxc[at + q],
                      (acc_t(1) - gv) * (ar * widen<acc_t>(dz[at + q]) + br) +
                      next_weight * gv * (ay * widen<acc_t>(dzn[at + q]) + by) + du_dense[o + q]);
                }
              });
            }
          }
          grad_x_frames.finish(b, t);
        }
      }
    }
  }
}

}  // namespace gateshift::cpu
