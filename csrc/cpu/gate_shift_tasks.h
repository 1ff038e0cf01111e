// CPU kernels of the fused Gate-Shift ops: the work shared by GSM
// (gate_shift_kernel.cpp) and Gate-Shift-Fuse (gate_shift_fuse_kernel.cpp).
//
// Work split. A task is one clip b and a run of frames [t0, t1); at::parallel_for
// runs the tasks. A task slides over its frames with a three-frame window, so
// every plane of x (and of grad_out) comes from memory once and its re-reads for
// neighbouring frames hit the cache. Gate frames on either side of the run are
// recomputed by both tasks that need them; the run length is chosen so there are
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
// Accumulation is in at::opmath_type (float for half types), and every sum runs
// in an order fixed by the shape alone: results do not depend on the thread count.
// The parameter gradients are summed per group of frames into a workspace and
// then over groups in order, so they are bitwise reproducible. A group's length
// depends only on the shape (the workspace stays within ~10% of x; one frame's
// partial sums are 29 P floats, 0.6x of a 7x7 frame), and runs of frames are whole
// groups, so each group has one owner task whatever the thread count.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <cmath>
#include <tuple>
#include <vector>

#include "../gate_shift_checks.h"
#include "../gate_shift_indexing.h"
#include "vectorizable_tanh.h"

// The task functions are compiled for AVX-512, AVX2 and baseline x86-64 and the
// best one is picked at load time (GCC function multiversioning), so the package
// runs everywhere without being built with -march=native.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GATESHIFT_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GATESHIFT_CPU_MULTIVERSION
#endif
#define GATESHIFT_ALWAYS_INLINE __attribute__((always_inline)) inline
// Lambdas are separate functions that target_clones does not clone: inline them.
#define GATESHIFT_INLINE_LAMBDA __attribute__((always_inline))

namespace gateshift::cpu {

constexpr int kTaps = 27;  // 3 x 3 x 3 weights per gated channel

// --------------------------------------------------------------------------
// Inner loops over strided planes (see the layout note at the top).
// --------------------------------------------------------------------------

// Nine values of a 3x3 stencil: a kernel, or the neighbourhood of one position.
// Plain members rather than an array keep the loops below vectorisable by GCC.
template <typename T>
struct Taps9 {
  T v0, v1, v2, v3, v4, v5, v6, v7, v8;
  GATESHIFT_ALWAYS_INLINE explicit Taps9(const T* k)
      : v0(k[0]), v1(k[1]), v2(k[2]), v3(k[3]), v4(k[4]), v5(k[5]), v6(k[6]), v7(k[7]), v8(k[8]) {}
  // The 3x3 neighbourhood whose top-left corner is o, in rows r0, r1, r2.
  GATESHIFT_ALWAYS_INLINE Taps9(const T* r0, const T* r1, const T* r2, int64_t o)
      : v0(r0[o]), v1(r0[o + 1]), v2(r0[o + 2]), v3(r1[o]), v4(r1[o + 1]), v5(r1[o + 2]),
        v6(r2[o]), v7(r2[o + 1]), v8(r2[o + 2]) {}
  GATESHIFT_ALWAYS_INLINE T dot(const Taps9& b) const {
    return v0 * b.v0 + v1 * b.v1 + v2 * b.v2 + v3 * b.v3 + v4 * b.v4 + v5 * b.v5 + v6 * b.v6 +
        v7 * b.v7 + v8 * b.v8;
  }
};

// acc_m[o] += sum_{jj,ll} k_m[3*jj + ll] * in[o + jj*Wp + ll] for the NT targets m
// (the forward gate conv: one input plane feeds up to three gate frames).
template <int NT, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_into(
    const acc_t* __restrict in,
    int64_t Wp,
    int64_t n,
    const acc_t* const* kernels,
    acc_t* __restrict a0,
    acc_t* __restrict a1,
    acc_t* __restrict a2) {
  const Taps9<acc_t> k0(kernels[0]);
  const Taps9<acc_t> k1(kernels[NT > 1 ? 1 : 0]);
  const Taps9<acc_t> k2(kernels[NT > 2 ? 2 : 0]);
  const acc_t* __restrict r0 = in;
  const acc_t* __restrict r1 = in + Wp;
  const acc_t* __restrict r2 = in + 2 * Wp;
#pragma omp simd
  for (int64_t o = 0; o < n; ++o) {
    const Taps9<acc_t> v(r0, r1, r2, o);
    a0[o] += k0.dot(v);
    if constexpr (NT > 1) {
      a1[o] += k1.dot(v);
    }
    if constexpr (NT > 2) {
      a2[o] += k2.dot(v);
    }
  }
}

// The backward pair for one da frame and one channel, in one pass:
//   du[o]  += sum_m kf[m] * da[o + off(m)]     (transposed conv: kf is the flipped kernel)
//   dkf[m] += sum_o u[o]  * da[o + off(m)]     (weight gradient, in flipped order)
// with off(m) = (m / 3) * Wp + m % 3. u must be zero on the junk columns.
template <typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_backward(
    const acc_t* __restrict da,
    int64_t Wp,
    int64_t n,
    const acc_t* kernel_flipped,
    const acc_t* __restrict u,
    acc_t* __restrict du,
    acc_t* dkf) {
  const Taps9<acc_t> kf(kernel_flipped);
  const acc_t* __restrict r0 = da;
  const acc_t* __restrict r1 = da + Wp;
  const acc_t* __restrict r2 = da + 2 * Wp;
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
  for (int64_t o = 0; o < n; ++o) {
    const Taps9<acc_t> v(r0, r1, r2, o);
    du[o] += kf.dot(v);
    const acc_t uo = u[o];
    s0 += uo * v.v0;
    s1 += uo * v.v1;
    s2 += uo * v.v2;
    s3 += uo * v.v3;
    s4 += uo * v.v4;
    s5 += uo * v.v5;
    s6 += uo * v.v6;
    s7 += uo * v.v7;
    s8 += uo * v.v8;
  }
  dkf[0] += s0;
  dkf[1] += s1;
  dkf[2] += s2;
  dkf[3] += s3;
  dkf[4] += s4;
  dkf[5] += s5;
  dkf[6] += s6;
  dkf[7] += s7;
  dkf[8] += s8;
}

template <typename acc_t>
GATESHIFT_ALWAYS_INLINE acc_t relu(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : v;  // keeps NaN, as torch.relu does
}

// Row copies between a dense H x W plane and rows `stride` apart. Elementwise
// work runs in flat loops over dense planes (row loops of a few elements would
// spend their time in scalar remainders); only these copies see the row stride.
// (Plain loops: late layers' rows are 7 elements, too short for memmove calls.)
template <typename T>
GATESHIFT_ALWAYS_INLINE void scatter_rows(const T* __restrict dense, int64_t H, int64_t W, T* __restrict rows, int64_t stride) {
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      rows[h * stride + w] = dense[h * W + w];
    }
  }
}

template <typename T>
GATESHIFT_ALWAYS_INLINE void gather_rows(const T* __restrict rows, int64_t stride, int64_t H, int64_t W, T* __restrict dense) {
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      dense[h * W + w] = rows[h * stride + w];
    }
  }
}

// --------------------------------------------------------------------------
// Problem descriptions shared by the tasks of one call.
// --------------------------------------------------------------------------

template <typename scalar_t>
struct Problem {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t B, T, C, H, W, P;
  bool interleaved;
  const scalar_t* x;
  int64_t x_sb, x_st, x_sc;  // strides of x (planes are contiguous)
  // Parameters in acc_t. weight is (2, P/2, 27); backward also keeps each 3x3
  // slice flipped, the kernel of the transposed conv.
  std::vector<acc_t> weight, weight_flipped;
  acc_t bias[2] = {0, 0};
  std::vector<acc_t> scale, shift;  // empty without the BN affine
  const acc_t* gates = nullptr;     // (B, T, 2, H, W): read by backward
  int64_t frames_per_task;   // a multiple of frames_per_group (or T)
  int64_t frames_per_group;  // frames whose parameter-gradient partials are summed together

  const scalar_t* x_plane(int64_t b, int64_t t, int64_t c) const {
    return x + b * x_sb + t * x_st + c * x_sc;
  }
  int64_t tasks_per_clip() const {
    return (T + frames_per_task - 1) / frames_per_task;
  }
  int64_t groups_per_clip() const {
    return (T + frames_per_group - 1) / frames_per_group;
  }
};

template <typename scalar_t>
Problem<scalar_t> make_problem(
    const GateShiftSizes& s,
    bool interleaved,
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift) {
  using acc_t = at::opmath_type<scalar_t>;
  Problem<scalar_t> p;
  p.B = s.batch;
  p.T = s.frames;
  p.C = s.channels;
  p.H = s.height;
  p.W = s.width;
  p.P = s.gated;
  p.interleaved = interleaved;
  p.x = x.const_data_ptr<scalar_t>();
  p.x_sb = x.stride(0);
  p.x_st = x.stride(1);
  p.x_sc = x.stride(2);
  const auto to_acc = [](const at::Tensor& t) {
    const at::Tensor c = t.contiguous();
    const scalar_t* d = c.const_data_ptr<scalar_t>();
    return std::vector<acc_t>(d, d + c.numel());
  };
  p.weight = to_acc(weight);
  p.weight_flipped.resize(p.weight.size());
  for (size_t i = 0; i < p.weight.size(); i += 9) {
    std::reverse_copy(p.weight.begin() + i, p.weight.begin() + i + 9, p.weight_flipped.begin() + i);
  }
  if (bias.has_value()) {
    const std::vector<acc_t> b = to_acc(*bias);
    p.bias[0] = b[0];
    p.bias[1] = b[1];
  }
  if (bn_scale.has_value()) {  // x's dtype or already the accumulation dtype
    const at::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
    const auto acc_vector = [&](const at::Tensor& t) {
      const at::Tensor c = t.to(acc).contiguous();
      return std::vector<acc_t>(c.const_data_ptr<acc_t>(), c.const_data_ptr<acc_t>() + c.numel());
    };
    p.scale = acc_vector(*bn_scale);
    p.shift = acc_vector(*bn_shift);
  }
  // Parameter-gradient partials: one group of frames per (29 P + 2)-float slot,
  // as few frames as keep the slots within a tenth of x.
  const int64_t frame_elements = std::max<int64_t>(1, p.C * p.H * p.W);
  p.frames_per_group = std::clamp<int64_t>((10 * (29 * p.P + 2) + frame_elements - 1) / frame_elements, 1, std::max<int64_t>(p.T, 1));
  // About one task per thread: whole clips when there are enough of them,
  // otherwise clips cut into runs of whole groups of frames.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t runs_per_clip =
      std::min<int64_t>(p.T, (threads + std::max<int64_t>(p.B, 1) - 1) / std::max<int64_t>(p.B, 1));
  const int64_t frames_per_run = (p.T + runs_per_clip - 1) / runs_per_clip;
  p.frames_per_task = std::min(p.T, (frames_per_run + p.frames_per_group - 1) / p.frames_per_group * p.frames_per_group);
  return p;
}

// Scratch planes of one worker thread, reused across its tasks.
//
// The flat loops run over `strided` elements, H * Wp - 2 rounded up to a multiple
// of kLoopMultiple: a 7 x 7 plane is a 61-element loop, and its 13-element scalar
// remainder used to cost more than its vector iterations. The extra elements are
// junk like the junk columns (u is zero there), and every plane is long enough
// for a correlation's reads past them.
constexpr int64_t kLoopMultiple = 16;

template <typename acc_t>
struct Scratch {
  int64_t Wp, strided, plane_size;  // row stride, length of the flat loops, floats per plane
  std::vector<acc_t> storage;
  acc_t* next;

  static int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
  }
  Scratch(int64_t H, int64_t W, int64_t planes)
      : Wp(W + 2),
        strided(round_up(H * (W + 2) - 2, kLoopMultiple)),
        plane_size(round_up(std::max((H + 2) * (W + 2), strided + 2 * (W + 2) + 2), kLoopMultiple)),
        storage(static_cast<size_t>(planes * plane_size), acc_t(0)),
        next(storage.data()) {}
  // Zero-filled when handed out; the border of a padded plane is never written.
  acc_t* plane() {
    acc_t* p = next;
    next += plane_size;
    return p;
  }
};

// --------------------------------------------------------------------------
// Forward
// --------------------------------------------------------------------------

// What a forward pass writes for each finished frame: GSM's output, or (the
// first pass of Gate-Shift-Fuse) the spatial means of the shifted part
// ys = g[t +- 1] x[t +- 1] and of the residual r = (1 - g[t]) x[t] per channel.
enum class ForwardMode { kGateShift, kFuseMeans };

template <typename scalar_t>
struct ForwardOutputs {
  scalar_t* out;  // kGateShift
  int64_t out_sb, out_st, out_sc;
  at::opmath_type<scalar_t>* gates;
  at::opmath_type<scalar_t>* fusion;  // kFuseMeans: the (B, T, 3, P) table, rows 0 (ym) and 1 (rm)
};

template <typename scalar_t, ForwardMode mode = ForwardMode::kGateShift>
GATESHIFT_CPU_MULTIVERSION void forward_tasks(
    const Problem<scalar_t>& p, const ForwardOutputs<scalar_t>& y, int64_t task_begin, int64_t task_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H, W = p.W, HW = H * W, T = p.T, P = p.P, half = P / 2;
  const bool affine = !p.scale.empty();
  Scratch<acc_t> scratch(H, W, 2 + 6 + 6);
  const int64_t Wp = scratch.Wp, n = scratch.strided;
  acc_t* const u = scratch.plane();        // padded gate input of one channel and frame
  acc_t* const u_dense = scratch.plane();  // the same, dense, before it is padded
  acc_t* acc[3][2];                  // gate accumulators (strided), by frame % 3 and group
  acc_t* gate[3][2];                 // finished gates (dense H x W), by frame % 3 and group
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 2; ++k) {
      acc[r][k] = scratch.plane();
      gate[r][k] = scratch.plane();
    }
  }

  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / p.tasks_per_clip();
    const int64_t t0 = (task % p.tasks_per_clip()) * p.frames_per_task;
    const int64_t t1 = std::min(T, t0 + p.frames_per_task);
    // Output frames [t0, t1) need gate frames [glo, ghi), which need input frames [slo, shi).
    const int64_t glo = std::max<int64_t>(t0 - 1, 0), ghi = std::min(t1 + 1, T);
    const int64_t slo = std::max<int64_t>(glo - 1, 0), shi = std::min(ghi + 1, T);

    const auto write_output_frame = [&](int64_t t) GATESHIFT_INLINE_LAMBDA {
      for (int64_t c = 0; c < (mode == ForwardMode::kGateShift ? p.C : P); ++c) {
        const scalar_t* xc = p.x_plane(b, t, c);
        if (c >= P) {  // pass-through channel
          scalar_t* oc = y.out + b * y.out_sb + t * y.out_st + c * y.out_sc;
          std::copy(xc, xc + HW, oc);
          continue;
        }
        const int64_t k = c / half;
        const acc_t* g = gate[t % 3][k];
        // Group 0 takes from the next frame, group 1 from the previous one; zero at the clip ends.
        const int64_t tn = k == 0 ? t + 1 : t - 1;
        const bool has_next = tn >= 0 && tn < T;
        const acc_t* gn = has_next ? gate[tn % 3][k] : g;
        const scalar_t* xn = has_next ? p.x_plane(b, tn, c) : xc;
        if constexpr (mode == ForwardMode::kGateShift) {
          scalar_t* oc =
              y.out + b * y.out_sb + t * y.out_st + output_channel(c, P, p.interleaved) * y.out_sc;
          if (has_next) {
#pragma omp simd
            for (int64_t i = 0; i < HW; ++i) {
              const acc_t xv = static_cast<acc_t>(xc[i]);
              oc[i] = static_cast<scalar_t>(xv - g[i] * xv + gn[i] * static_cast<acc_t>(xn[i]));
            }
          } else {
#pragma omp simd
            for (int64_t i = 0; i < HW; ++i) {
              const acc_t xv = static_cast<acc_t>(xc[i]);
              oc[i] = static_cast<scalar_t>(xv - g[i] * xv);
            }
          }
        } else {
          acc_t shifted = 0, residual = 0;
#pragma omp simd reduction(+ : shifted, residual)
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t xv = static_cast<acc_t>(xc[i]);
            residual += xv - g[i] * xv;
            shifted += gn[i] * static_cast<acc_t>(xn[i]);
          }
          const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
          y.fusion[((b * T + t) * 3 + 0) * P + c] = has_next ? shifted * inv_hw : acc_t(0);
          y.fusion[((b * T + t) * 3 + 1) * P + c] = residual * inv_hw;
        }
      }
    };

    // Gate frame tg is complete: tanh, keep it for the output, store it for backward.
    const auto finish_gate_frame = [&](int64_t tg) GATESHIFT_INLINE_LAMBDA {
      for (int k = 0; k < 2; ++k) {
        acc_t* g = gate[tg % 3][k];
        gather_rows(acc[tg % 3][k], Wp, H, W, g);
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) {
          g[i] = tanh_vectorizable(g[i]);
        }
        if (tg >= t0 && tg < t1) {
          std::copy(g, g + HW, y.gates + ((b * T + tg) * 2 + k) * HW);
        }
      }
    };

    int64_t next_to_start = glo;  // first gate frame whose accumulator is not set up yet
    for (int64_t s = slo; s < shi; ++s) {
      // Input frame s feeds gate frames tg in [s-1, s+1] through weight tap i = s - tg + 1.
      const int64_t tg_first = std::max(s - 1, glo), tg_last = std::min(s + 1, ghi - 1);
      for (; next_to_start <= tg_last; ++next_to_start) {
        for (int k = 0; k < 2; ++k) {
          std::fill(acc[next_to_start % 3][k], acc[next_to_start % 3][k] + n, p.bias[k]);
        }
      }
      const int targets = static_cast<int>(tg_last - tg_first + 1);
      for (int64_t c = 0; c < P; ++c) {
        const int64_t k = c / half;
        const scalar_t* xc = p.x_plane(b, s, c);
        const acc_t sc = affine ? p.scale[c] : acc_t(1);
        const acc_t sh = affine ? p.shift[c] : acc_t(0);
        if (affine) {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) {
            u_dense[i] = relu(sc * static_cast<acc_t>(xc[i]) + sh);
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) {
            u_dense[i] = static_cast<acc_t>(xc[i]);
          }
        }
        scatter_rows(u_dense, H, W, u + Wp + 1, Wp);
        const acc_t* kernels[3];
        acc_t* targets_of[3] = {nullptr, nullptr, nullptr};
        for (int m = 0; m < targets; ++m) {
          const int64_t tg = tg_first + m;
          kernels[m] = p.weight.data() + c * kTaps + (s - tg + 1) * 9;
          targets_of[m] = acc[tg % 3][k];
        }
        switch (targets) {
          case 1:
            correlate_into<1>(u, Wp, n, kernels, targets_of[0], targets_of[1], targets_of[2]);
            break;
          case 2:
            correlate_into<2>(u, Wp, n, kernels, targets_of[0], targets_of[1], targets_of[2]);
            break;
          default:
            correlate_into<3>(u, Wp, n, kernels, targets_of[0], targets_of[1], targets_of[2]);
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

// --------------------------------------------------------------------------
// Backward
// --------------------------------------------------------------------------

template <typename scalar_t>
struct BackwardBuffers {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_out;
  int64_t go_sb, go_st, go_sc;
  scalar_t* grad_x;
  int64_t gx_sb, gx_st, gx_sc;
  // Partial sums of the parameter gradients per group of frames, group-major
  // (b * groups_per_clip + t / frames_per_group):
  // [dweight (P * 27) | dbias (2) | dbn_scale (P) | dbn_shift (P)].
  acc_t* partials;
  int64_t partial_stride;
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
    const acc_t* e = fuse_coef + ((b * T + t) * 4 + row) * P + c;
    return {e[0], e[P]};
  }
};

template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void backward_tasks(
    const Problem<scalar_t>& p, const BackwardBuffers<scalar_t>& g, int64_t task_begin, int64_t task_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H, W = p.W, HW = H * W, T = p.T, P = p.P, half = P / 2;
  const bool affine = !p.scale.empty();
  Scratch<acc_t> scratch(H, W, 6 + 2 + 2 + 2);
  const int64_t Wp = scratch.Wp, n = scratch.strided;
  acc_t* da[3][2];  // padded da planes, by frame % 3 and group
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 2; ++k) {
      da[r][k] = scratch.plane();
    }
  }
  acc_t* dg[2] = {scratch.plane(), scratch.plane()};  // dense H x W
  acc_t* const u = scratch.plane();                   // strided; junk columns stay zero
  acc_t* const du = scratch.plane();                  // strided
  acc_t* const u_dense = scratch.plane();
  acc_t* const du_dense = scratch.plane();
  acc_t da_sum[3][2];                                 // sum of da over a frame, for dbias

  const auto grad_plane = [&](int64_t b, int64_t t, int64_t c) GATESHIFT_INLINE_LAMBDA {
    return g.grad_out + b * g.go_sb + t * g.go_st + c * g.go_sc;
  };

  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / p.tasks_per_clip();
    const int64_t t0 = (task % p.tasks_per_clip()) * p.frames_per_task;
    const int64_t t1 = std::min(T, t0 + p.frames_per_task);
    // dx at frames [t0, t1) needs da at frames [t0-1, t1+1) (the transposed conv).
    const int64_t ghi = std::min(t1 + 1, T);
    int64_t next_da = std::max<int64_t>(t0 - 1, 0);

    // da_k[f] = (1 - g_k[f]^2) * sum_{c in G_k} x_c[f] * (dys_c[neighbour] - dr_c[f]),
    // the neighbour being f-1 for group 0 and f+1 for group 1 (the adjoint of the
    // shifts); for GSM dr = dys = dz.
    const auto compute_da_frame = [&](int64_t f) GATESHIFT_INLINE_LAMBDA {
      std::fill(dg[0], dg[0] + HW, acc_t(0));
      std::fill(dg[1], dg[1] + HW, acc_t(0));
      for (int64_t c = 0; c < P; ++c) {
        const int64_t k = c / half, oc = output_channel(c, P, p.interleaved);
        const scalar_t* xc = p.x_plane(b, f, c);
        const scalar_t* dz = grad_plane(b, f, oc);
        const int64_t fn = k == 0 ? f - 1 : f + 1;
        const auto [ar, br] = g.coef(0, b, f, c, T, P);
        acc_t* d = dg[k];
        if (fn >= 0 && fn < T) {
          const scalar_t* dzn = grad_plane(b, fn, oc);
          const auto [ay, by] = g.coef(2, b, fn, c, T, P);
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) {
            d[i] += static_cast<acc_t>(xc[i]) *
                ((ay * static_cast<acc_t>(dzn[i]) + by) - (ar * static_cast<acc_t>(dz[i]) + br));
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) {
            d[i] -= static_cast<acc_t>(xc[i]) * (ar * static_cast<acc_t>(dz[i]) + br);
          }
        }
      }
      for (int k = 0; k < 2; ++k) {
        const acc_t* gk = p.gates + ((b * T + f) * 2 + k) * HW;
        acc_t* d = dg[k];
        acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < HW; ++i) {
          d[i] *= acc_t(1) - gk[i] * gk[i];
          sum += d[i];
        }
        scatter_rows(d, H, W, da[f % 3][k] + Wp + 1, Wp);
        da_sum[f % 3][k] = sum;
      }
    };

    for (int64_t t = t0; t < t1; ++t) {
      for (; next_da < std::min(t + 2, ghi); ++next_da) {
        compute_da_frame(next_da);
      }
      // This task owns whole groups: it starts each group's slot at its first frame.
      acc_t* part = g.partials + (b * p.groups_per_clip() + t / p.frames_per_group) * g.partial_stride;
      if (t % p.frames_per_group == 0) {
        std::fill(part, part + g.partial_stride, acc_t(0));
      }
      acc_t* const dweight = part;
      acc_t* const dbias = part + P * kTaps;
      acc_t* const dscale = dbias + 2;
      acc_t* const dshift = dscale + P;
      dbias[0] += da_sum[t % 3][0];
      dbias[1] += da_sum[t % 3][1];

      for (int64_t c = 0; c < p.C; ++c) {
        const scalar_t* xc = p.x_plane(b, t, c);
        scalar_t* dxc = g.grad_x + b * g.gx_sb + t * g.gx_st + c * g.gx_sc;
        if (c >= P) {  // pass-through channel
          const scalar_t* dz = grad_plane(b, t, c);
          std::copy(dz, dz + HW, dxc);
          continue;
        }
        const int64_t k = c / half, oc = output_channel(c, P, p.interleaved);
        const acc_t sc = affine ? p.scale[c] : acc_t(1);
        const acc_t sh = affine ? p.shift[c] : acc_t(0);
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t xv = static_cast<acc_t>(xc[i]);
          u_dense[i] = affine ? relu(sc * xv + sh) : xv;
        }
        scatter_rows(u_dense, H, W, u, Wp);
        std::fill(du, du + n, acc_t(0));
        // Frame tap i of the conv links u at frame t with da at frame t - i + 1.
        for (int i = 0; i < 3; ++i) {
          const int64_t f = t - i + 1;
          if (f < 0 || f >= T) {
            continue;
          }
          acc_t dkf[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
          correlate_backward(
              da[f % 3][k], Wp, n, p.weight_flipped.data() + c * kTaps + i * 9, u, du, dkf);
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
        const auto [ar, br] = g.coef(0, b, t, c, T, P);
        const auto [ay, by] = has_next ? g.coef(2, b, tn, c, T, P) : std::pair<acc_t, acc_t>{acc_t(0), acc_t(0)};
        gather_rows(du, Wp, H, W, du_dense);
        if (affine) {
          acc_t ds = 0, dh = 0;
#pragma omp simd reduction(+ : ds, dh)
          for (int64_t q = 0; q < HW; ++q) {
            const acc_t gv = gk[q];
            const acc_t xv = static_cast<acc_t>(xc[q]);
            // ReLU passes du where its input was positive; the affine scales it.
            const acc_t dum = sc * xv + sh > acc_t(0) ? du_dense[q] : acc_t(0);
            ds += dum * xv;
            dh += dum;
            dxc[q] = static_cast<scalar_t>(
                (acc_t(1) - gv) * (ar * static_cast<acc_t>(dz[q]) + br) +
                next_weight * gv * (ay * static_cast<acc_t>(dzn[q]) + by) + dum * sc);
          }
          dscale[c] += ds;
          dshift[c] += dh;
        } else {
#pragma omp simd
          for (int64_t q = 0; q < HW; ++q) {
            const acc_t gv = gk[q];
            dxc[q] = static_cast<scalar_t>(
                (acc_t(1) - gv) * (ar * static_cast<acc_t>(dz[q]) + br) +
                next_weight * gv * (ay * static_cast<acc_t>(dzn[q]) + by) + du_dense[q]);
          }
        }
      }
    }
  }
}

}  // namespace gateshift::cpu
