// CPU kernels of Gate-Shift-Fuse (DESIGN.md section 2) besides the gate-shift
// tasks it shares with GSM (gate_shift_kernel.h). gate_shift_fuse_launch.h runs
// them over the CPU threads, in three passes each way:
//
// forward  (1) gates, and the means ym, rm per (clip, frame, channel): the GSM
//              tasks in their kFuseMeans mode, reading x once;
//          (2) fusion_weight_rows: the fusion convolution and sigmoid over
//              (channel, frame), tiny;
//          (3) combine_planes: f ys + (1 - f) r from the stored gates, reading x
//              (the frame and its neighbour, from cache) and writing the output once.
// backward (1) fusion_gradient_planes: df = sum_hw dz (ys - r) per (clip, frame,
//              channel);
//          (2) through the sigmoid and the fusion convolution: its parameters'
//              gradients and, per element, the coefficients that turn dz into the
//              gradients of the residual and of the shifted part;
//          (3) the GSM backward tasks with those coefficients.
// Nothing of x's size is allocated besides the output and dx (but for channels_last
// planes too large for one tile, which run on contiguous copies: gate_shift_launch.h).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../common/dtypes.h"
#include "../common/channel_order.h"
#include "../common/compile_target.h"
#include "../common/fusion_math.h"
#include "../common/layout.h"
#include "gate_shift_kernel.h"

namespace gateshift::cpu {

// f ys + (1 - f) r, computed as r + f (ys - r): every product then feeds one sum of
// its own, so the compiler's contraction into FMAs is the same in any loop shape
// (combine_plane and combine_pixel_major_frames agree bit for bit). Where that is not
// finite (an infinite or NaN r or ys, or ys - r overflowing), the published form
// instead, whose infinities and NaNs the two forms do not share: at f = 0 an infinite
// r gives r, where r + 0 (ys - r) is NaN; infinite r and ys of one sign give that
// infinity, where ys - r is NaN. (Only there may contraction differ between loop
// shapes, and with non-finite inputs it gives the same infinities and NaNs.)
template <typename acc_t>
GATESHIFT_ALWAYS_INLINE acc_t fused_output(acc_t f, acc_t ys, acc_t r) {
  const acc_t blended = r + f * (ys - r);
  const acc_t published = f * ys + (acc_t(1) - f) * r;
  // The choice on the bits as integers: GCC does not if-convert a float comparison
  // (which may trap) without AVX-512's masks, and the AVX2 clone of these loops ran
  // in scalar code (setup.py's -fno-trapping-math lifts that; this form does not
  // depend on the flag). |v| >= infinity (infinite or NaN) where its bits, sign cleared,
  // are at least infinity's: then the difference's sign bit spreads into all ones.
  using bits_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  constexpr bits_t kInfinity = std::bit_cast<bits_t>(std::numeric_limits<acc_t>::infinity());
  const bits_t blended_bits = std::bit_cast<bits_t>(blended);
  const bits_t not_finite =
      (kInfinity - 1 - (blended_bits & std::numeric_limits<bits_t>::max())) >> (8 * sizeof(bits_t) - 1);
  return std::bit_cast<acc_t>((blended_bits & ~not_finite) | (std::bit_cast<bits_t>(published) & not_finite));
}

// Forward pass (3), one plane: out[t] = f ys + (1 - f) r (fused_output), with
// ys = g[tn] x[tn] (tn = t + 1 for group 0, t - 1 for group 1, zero past the clip)
// and r = x[t] - g[t] x[t], as the published module writes it.
template <typename scalar_t>
GATESHIFT_ALWAYS_INLINE void combine_plane(
    const Problem<scalar_t>& p,
    const acc_type<scalar_t>* gates,
    const acc_type<scalar_t>* fusion,
    FrameReader<scalar_t>& x_frames,
    FrameWriter<scalar_t>& out_frames,
    int64_t b,
    int64_t t,
    int64_t c) {
  using acc_t = acc_type<scalar_t>;
  const int64_t T = p.T, P = p.P, half = P / 2, HW = p.H * p.W;
  const scalar_t* xc = x_frames.plane(b, t, c);
  if (c >= P) {  // pass-through channel
    std::copy(xc, xc + HW, out_frames.plane(b, t, c));
    return;
  }
  const int64_t k = c / half, tn = k == 0 ? t + 1 : t - 1;
  const acc_t* g = gates + ((b * T + t) * 2 + k) * HW;
  const acc_t f = fusion[table_index(b, t, 2, c, T, 3, P)];
  scalar_t* o = out_frames.plane(b, t, output_channel(c, P, p.interleaved));
  if (tn >= 0 && tn < T) {
    const acc_t* gn = gates + ((b * T + tn) * 2 + k) * HW;
    const scalar_t* xn = x_frames.plane(b, tn, c);
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      const acc_t r = widen<acc_t>(xc[i]) - g[i] * widen<acc_t>(xc[i]);
      store_rounded(o[i], fused_output(f, gn[i] * widen<acc_t>(xn[i]), r));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) {
      const acc_t r = widen<acc_t>(xc[i]) - g[i] * widen<acc_t>(xc[i]);
      store_rounded(o[i], fused_output(f, acc_t(0), r));
    }
  }
}

// Forward pass (3) for frames [frame_begin, frame_end) (b * T + t) when x and out
// are both pixel-major: per pixel, runs over each group's channels, nothing staged;
// every value computed as in combine_plane.
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void combine_pixel_major_frames(
    const Problem<scalar_t>& p,
    const acc_type<scalar_t>* gates,
    const acc_type<scalar_t>* fusion,
    const Frames<scalar_t>& out,
    int64_t frame_begin,
    int64_t frame_end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t T = p.T, P = p.P, half = P / 2, HW = p.H * p.W;
  for (int64_t frame = frame_begin; frame < frame_end; ++frame) {
    const int64_t b = frame / T, t = frame % T;
    write_pixel_major_output_frame(
        p, b, t, out,
        [&](int k, bool has_next, int64_t i, const scalar_t* xp, const scalar_t* xnp, int64_t q)
            GATESHIFT_INLINE_LAMBDA {
              const acc_t f = fusion[table_index(b, t, 2, k * half + q, T, 3, P)];
              const acc_t gv = gates[((b * T + t) * 2 + k) * HW + i];
              const acc_t r = widen<acc_t>(xp[q]) - gv * widen<acc_t>(xp[q]);
              if (!has_next) {
                return fused_output(f, acc_t(0), r);
              }
              const acc_t gnv = gates[((b * T + (k == 0 ? t + 1 : t - 1)) * 2 + k) * HW + i];
              return fused_output(f, gnv * widen<acc_t>(xnp[q]), r);
            });
  }
}

// Forward pass (3) over planes [plane_begin, plane_end) of the (B, T, C) planes:
// whole frames when out is pixel-major (FrameWriter).
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void combine_planes(
    const Problem<scalar_t>& p,
    const acc_type<scalar_t>* gates,
    const acc_type<scalar_t>* fusion,
    const Frames<scalar_t>& out,
    int64_t plane_begin,
    int64_t plane_end) {
  const int64_t T = p.T, C = p.C;
  FrameReader<scalar_t> x_frames(p.x, T, 3);  // frames t - 1 .. t + 1
  FrameWriter<scalar_t> out_frames(out);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
    combine_plane(p, gates, fusion, x_frames, out_frames, b, t, c);
    if (c == C - 1) {
      out_frames.finish(b, t);
    }
  }
}

// Backward pass (1): df = sum_hw dz (ys - r) for the gated channels' planes.
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void fusion_gradient_planes(
    const Problem<scalar_t>& p,
    const Frames<const scalar_t>& grad_out,
    const acc_type<scalar_t>* gates,
    acc_type<scalar_t>* df,
    int64_t plane_begin,
    int64_t plane_end) {
  using acc_t = acc_type<scalar_t>;
  const int64_t T = p.T, P = p.P, half = P / 2, HW = p.H * p.W;
  FrameReader<scalar_t> x_frames(p.x, T, 3);  // frames t - 1 .. t + 1
  FrameReader<scalar_t> grad_frames(grad_out, T, 1);
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % P, t = (plane / P) % T, b = plane / (P * T);
    const int64_t k = c / half, tn = k == 0 ? t + 1 : t - 1;
    const scalar_t* xc = x_frames.plane(b, t, c);
    const scalar_t* dz = grad_frames.plane(b, t, output_channel(c, P, p.interleaved));
    const acc_t* g = gates + ((b * T + t) * 2 + k) * HW;
    acc_t sum = 0;
    if (tn >= 0 && tn < T) {
      const acc_t* gn = gates + ((b * T + tn) * 2 + k) * HW;
      const scalar_t* xn = x_frames.plane(b, tn, c);
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = widen<acc_t>(xc[i]);
        sum += widen<acc_t>(dz[i]) * (gn[i] * widen<acc_t>(xn[i]) - (xv - g[i] * xv));
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = widen<acc_t>(xc[i]);
        sum -= widen<acc_t>(dz[i]) * (xv - g[i] * xv);
      }
    }
    df[table_index(b, t, 0, c, T, 1, P)] = sum;
  }
}

// Forward pass (2): f = sigmoid(fusion logit) into row 2 of the (B, T, 3, P) table
// `fz`, whose rows 0 and 1 hold the means, for (clip, gated channel) pairs
// [bc_begin, bc_end). V (2, 2, 3, 3) and e (2) are the fusion convolutions.
template <typename acc_t>
void fusion_weight_rows(acc_t* fz, const acc_t* V, const acc_t* e, int64_t T, int64_t P, int64_t bc_begin,
                        int64_t bc_end) {
  const int64_t half = P / 2;
  for (int64_t bc = bc_begin; bc < bc_end; ++bc) {
    const int64_t b = bc / P, c = bc % P;
    const int k = c < half ? 0 : 1;
    for (int64_t t = 0; t < T; ++t) {
      const acc_t logit = fuse_logit(fz, T, P, b, k, c - k * half, t, V, e[k]);
      fz[table_index(b, t, 2, c, T, 3, P)] = acc_t(1) / (acc_t(1) + std::exp(-logit));
    }
  }
}

// Backward pass (2), serial and tiny: df -> ds = df f (1 - f) in place, then the
// fusion convolution's parameter gradients dV (36) and de (2), summed in a fixed order.
template <typename acc_t>
void fusion_parameter_gradients(acc_t* ds, const acc_t* fz, int64_t B, int64_t T, int64_t P, acc_t* dV, acc_t* de) {
  const int64_t half = P / 2;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < P; ++c) {
        const acc_t f = fz[table_index(b, t, 2, c, T, 3, P)];
        ds[table_index(b, t, 0, c, T, 1, P)] *= f * (acc_t(1) - f);
      }
    }
  }
  for (int k = 0; k < 2; ++k) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t cq = 0; cq < half; ++cq) {
          de[k] += ds[table_index(b, t, 0, k * half + cq, T, 1, P)];
        }
      }
      for (int ch = 0; ch < 2; ++ch) {
        for (int i = 0; i < 3; ++i) {
          for (int j = 0; j < 3; ++j) {
            dV[((k * 2 + ch) * 3 + i) * 3 + j] += fuse_weight_grad(ds, fz, T, P, b, k, ch, i, j);
          }
        }
      }
    }
  }
}

// Backward pass (2), per (clip, gated channel) in [bc_begin, bc_end): the means'
// gradients, through the transposed convolution, become per-element offsets,
// dr = (1 - f) dz + drm / HW and dys = f dz + dym / HW, written as the (B, T, 4, P)
// coefficient table cf of the gate-shift backward (BackwardBuffers).
template <typename acc_t>
void fusion_coefficient_rows(const acc_t* ds, const acc_t* fz, const acc_t* V, int64_t T, int64_t P, int64_t HW,
                             acc_t* cf, int64_t bc_begin, int64_t bc_end) {
  const int64_t half = P / 2;
  for (int64_t bc = bc_begin; bc < bc_end; ++bc) {
    const int64_t b = bc / P, c = bc % P;
    const int k = c < half ? 0 : 1;
    for (int64_t t = 0; t < T; ++t) {
      const acc_t f = fz[table_index(b, t, 2, c, T, 3, P)];
      const acc_t dym = fuse_image_grad(ds, T, P, b, k, 0, c - k * half, t, V);
      const acc_t drm = fuse_image_grad(ds, T, P, b, k, 1, c - k * half, t, V);
      cf[table_index(b, t, 0, c, T, 4, P)] = acc_t(1) - f;
      cf[table_index(b, t, 1, c, T, 4, P)] = drm / static_cast<acc_t>(HW);
      cf[table_index(b, t, 2, c, T, 4, P)] = f;
      cf[table_index(b, t, 3, c, T, 4, P)] = dym / static_cast<acc_t>(HW);
    }
  }
}

}  // namespace gateshift::cpu
