// CUDA kernels of Gate-Shift-Fuse (DESIGN.md section 2) besides the gate-shift
// kernels it reuses (gate_shift_kernel.cuh). Device code only.
//
// forward  (1) gate_shift_forward_kernel<scalar_t, true>: gates, and per tile the
//              sums of the shifted part ys and of the residual r;
//          (2) fuse_weights_kernel: one block per (clip, group) sums the tiles into
//              means (a warp per strand of tiles) and applies the 3x3 (channel x
//              frame) convolution and sigmoid;
//          (3) fuse_combine_kernel: out = f ys + (1 - f) r from the stored gates.
// backward (1) fuse_gradient_kernel: df = sum_hw dz (ys - r), one warp per plane;
//          (2) fuse_backward_kernel: one block per (clip, group): through the
//              sigmoid and the convolution, the per-element coefficients for the
//              gate-shift backward and per-clip partials of the convolution's
//              parameter gradients (a warp per parameter);
//          (3) gate_shift_backward_kernel with those coefficients, and
//              sum_partials_kernel, which also sums the per-clip partials.
//
// Bytes per element of x (fp32): forward reads x in (1) and again in (3) (its
// frame and the neighbour's, the second from L2), writes the output once: 12
// bytes, 1.5x the 8-byte floor. Backward reads x and dz in (1) and again in (3):
// about 20 bytes, 1.7x the 12-byte floor. The means, the fusion table and the
// coefficients are (B, T, <= 4, P): 4/(H W) of x or less.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "../common/dtypes.h"
#include "../common/channel_order.h"
#include "../common/compile_target.h"
#include "../common/fusion_math.h"
#include "../common/layout.h"
#include "element_cursor.cuh"
#include "gate_shift_kernel.cuh"

namespace gateshift::cuda {

constexpr int kFuseThreads = 256;
constexpr int kFuseParams = 2 * 2 * 3 * 3 + 2;  // the two groups' convolutions: weights and biases

GATESHIFT_DEVICE float device_sigmoid(float v) {
  return 1.0f / (1.0f + expf(-v));
}
GATESHIFT_DEVICE double device_sigmoid(double v) {
  return 1.0 / (1.0 + exp(-v));
}

template <typename scalar_t>
struct FuseWeightsParams {
  using acc_t = acc_type<scalar_t>;
  int64_t T, P, tiles, HW;
  device_ptr<const acc_t> tile_sums;       // (B, T, tiles, 2, P)
  device_ptr<acc_t> fusion;                // (B, T, 3, P): ym, rm, f
  device_ptr<const scalar_t> fuse_weight;  // (2, 2, 3, 3)
  device_ptr<const scalar_t> fuse_bias;    // (2)
};

// Warps of fuse_weights_kernel, each summing every kTileStrands-th tile.
constexpr int kTileStrands = kFuseThreads / 32;

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kFuseThreads) fuse_weights_kernel(const FuseWeightsParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(acc_t, params_s);          // [kFuseParams]
  const device_ptr<acc_t> strand_s = params_s + kFuseParams;     // [2][kTileStrands][32]
  const int tid = threadIdx.x, lane = tid % 32, strand = tid / 32;
  const int64_t b = blockIdx.x / 2, half = p.P / 2;
  const int k = blockIdx.x % 2;
  if (tid < kFuseParams) {
    params_s[tid] = static_cast<acc_t>(tid < 36 ? p.fuse_weight[tid] : p.fuse_bias[tid - 36]);
  }
  // The means of this group's channels, 32 channels of one frame at a time (a lane
  // each: side by side in the tables): warp s sums the tiles s, s + kTileStrands, ...
  // in order, and the warps' sums are added in warp order (bits fixed by the shape).
  const int64_t chunks = (half + 31) / 32;
  for (int64_t row = 0; row < p.T * chunks; ++row) {
    const int64_t t = row / chunks, c = k * half + (row % chunks) * 32 + lane;
    const bool in_group = c < (k + 1) * half;
    for (int m = 0; m < 2; ++m) {
      acc_t sum = acc_t(0);
      if (in_group) {
        for (int64_t tile = strand; tile < p.tiles; tile += kTileStrands) {
          sum += p.tile_sums[(((b * p.T + t) * p.tiles + tile) * 2 + m) * p.P + c];
        }
      }
      strand_s[(m * kTileStrands + strand) * 32 + lane] = sum;
    }
    __syncthreads();
    if (tid < 64) {  // warp 0 the shifted parts' means, warp 1 the residuals'
      const int m = tid / 32;
      acc_t sum = strand_s[m * kTileStrands * 32 + lane];
      for (int w = 1; w < kTileStrands; ++w) {
        sum += strand_s[(m * kTileStrands + w) * 32 + lane];
      }
      if (in_group) {
        p.fusion[table_index(b, t, m, c, p.T, 3, p.P)] = sum / static_cast<acc_t>(p.HW);
      }
    }
    __syncthreads();  // strand_s is refilled by the next row
  }
  __syncthreads();  // the convolution reads neighbours' means, written by other threads of this block
  for (int64_t e = tid; e < half * p.T; e += kFuseThreads) {
    const int64_t cq = e % half, t = e / half;
    const acc_t logit = fuse_logit(p.fusion, p.T, p.P, b, k, cq, t, params_s, params_s[36 + k]);
    p.fusion[table_index(b, t, 2, k * half + cq, p.T, 3, p.P)] = device_sigmoid(logit);
  }
}

template <typename scalar_t>
struct FuseCombineParams {
  using acc_t = acc_type<scalar_t>;
  GateShiftSizes n;
  DevicePlanes<const scalar_t> x;
  DevicePlanes<scalar_t> out;
  device_ptr<const acc_t> gates;   // (B, T, 2, H, W)
  device_ptr<const acc_t> fusion;  // (B, T, 3, P)
};

// out = f ys + (1 - f) r; pass-through channels copied. Plane-wise
// (element_cursor.cuh): the fusion weight f, the gate planes, the neighbour frame's
// plane and the output channel once per plane.
template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kFuseThreads) fuse_combine_kernel(const FuseCombineParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  const GateShiftSizes& n = p.n;
  const PlaneGrid grid{n.B, n.T, n.C, n.H * n.W};
  const int64_t half = n.P / 2;
  for_each_plane_of_warp<kFuseThreads>(grid, [&](const ElementCursor& at) {
    const int64_t b = at.b, t = at.t, c = at.c;
    const device_ptr<const scalar_t> x = p.x.plane(b, t, c);
    if (c >= n.P) {  // pass-through channel
      const device_ptr<scalar_t> out = p.out.plane(b, t, c);
      for_each_pixel_of_lane<scalar_t>(
          grid.HW, [&](int64_t i) { return x[i]; }, [&](int64_t i, scalar_t v) { out[i] = v; });
      return;
    }
    const int k = c >= half ? 1 : 0;
    const int64_t tn = k == 0 ? t + 1 : t - 1;
    const bool has_next = tn >= 0 && tn < n.T;
    const acc_t f = p.fusion[table_index(b, t, 2, c, n.T, 3, n.P)];
    const device_ptr<const acc_t> g = p.gates + ((b * n.T + t) * 2 + k) * grid.HW;
    const device_ptr<const acc_t> g_next = p.gates + ((b * n.T + (has_next ? tn : t)) * 2 + k) * grid.HW;
    const device_ptr<const scalar_t> x_next = p.x.plane(b, has_next ? tn : t, c);
    const device_ptr<scalar_t> out = p.out.plane(b, t, output_channel(c, n.P, n.interleaved));
    for_each_pixel_of_lane<acc_t>(
        grid.HW,
        [&](int64_t i) {
          const acc_t xv = static_cast<acc_t>(x[i]);
          const acc_t ys = has_next ? g_next[i] * static_cast<acc_t>(x_next[i]) : acc_t(0);
          return f * ys + (acc_t(1) - f) * (xv - g[i] * xv);
        },
        [&](int64_t i, acc_t v) { out[i] = static_cast<scalar_t>(v); });
  });
}

template <typename scalar_t>
struct FuseGradientParams {
  using acc_t = acc_type<scalar_t>;
  GateShiftSizes n;
  DevicePlanes<const scalar_t> grad_out;
  DevicePlanes<const scalar_t> x;
  device_ptr<const acc_t> gates;
  device_ptr<acc_t> df;  // (B, T, 1, P)
};

// df = sum_hw dz (ys - r) for each gated (clip, frame, channel): one warp per
// plane, the lanes' sums combined by a fixed shuffle tree.
template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kFuseThreads) fuse_gradient_kernel(const FuseGradientParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  const GateShiftSizes& n = p.n;
  const int64_t HW = n.H * n.W, half = n.P / 2;
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * (kFuseThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (plane >= n.B * n.T * n.P) {
    return;  // the whole warp leaves together: its shuffles below stay full-warp
  }
  const int64_t c = plane % n.P, t = (plane / n.P) % n.T, b = plane / (n.P * n.T);
  const int k = c >= half ? 1 : 0;
  const int64_t tn = k == 0 ? t + 1 : t - 1;
  const bool has_next = tn >= 0 && tn < n.T;
  device_ptr<const scalar_t> dz = p.grad_out.plane(b, t, output_channel(c, n.P, n.interleaved));
  device_ptr<const scalar_t> xc = p.x.plane(b, t, c);
  device_ptr<const acc_t> g = p.gates + ((b * n.T + t) * 2 + k) * HW;
  acc_t sum = acc_t(0);
  for (int64_t i = lane; i < HW; i += 32) {
    const acc_t xv = static_cast<acc_t>(xc[i]);
    acc_t ys = acc_t(0);
    if (has_next) {
      ys = p.gates[((b * n.T + tn) * 2 + k) * HW + i] * static_cast<acc_t>(p.x.plane(b, tn, c)[i]);
    }
    sum += static_cast<acc_t>(dz[i]) * (ys - (xv - g[i] * xv));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  if (lane == 0) {
    p.df[table_index(b, t, 0, c, n.T, 1, n.P)] = sum;
  }
}

template <typename scalar_t>
struct FuseBackwardParams {
  using acc_t = acc_type<scalar_t>;
  int64_t T, P, HW;
  device_ptr<const acc_t> fusion;          // (B, T, 3, P)
  device_ptr<acc_t> ds;                    // (B, T, 1, P): df in, the logits' gradient out
  device_ptr<acc_t> coef;                  // (B, T, 4, P), see GateShiftBackwardKernelParams::fuse_coef
  device_ptr<const scalar_t> fuse_weight;  // (2, 2, 3, 3)
  device_ptr<acc_t> fuse_partials;         // (B, kFuseParams): each clip's share of the convolution's gradients
};

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kFuseThreads) fuse_backward_kernel(const FuseBackwardParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(acc_t, weight_s);  // [36]
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x / 2, half = p.P / 2;
  const int k = blockIdx.x % 2;
  if (tid < 36) {
    weight_s[tid] = static_cast<acc_t>(p.fuse_weight[tid]);
  }
  // Through the sigmoid: ds = df f (1 - f). Consecutive threads take consecutive
  // channels, side by side in the tables.
  for (int64_t e = tid; e < half * p.T; e += kFuseThreads) {
    const int64_t c = k * half + e % half, t = e / half;
    const acc_t f = p.fusion[table_index(b, t, 2, c, p.T, 3, p.P)];
    p.ds[table_index(b, t, 0, c, p.T, 1, p.P)] *= f * (acc_t(1) - f);
  }
  __syncthreads();  // the transposed convolution reads neighbours' ds
  // The means' gradients become offsets: dr = (1 - f) dz + drm / HW, dys = f dz + dym / HW.
  for (int64_t e = tid; e < half * p.T; e += kFuseThreads) {
    const int64_t cq = e % half, t = e / half, c = k * half + cq;
    const acc_t f = p.fusion[table_index(b, t, 2, c, p.T, 3, p.P)];
    const acc_t dym = fuse_image_grad(p.ds, p.T, p.P, b, k, 0, cq, t, weight_s);
    const acc_t drm = fuse_image_grad(p.ds, p.T, p.P, b, k, 1, cq, t, weight_s);
    p.coef[table_index(b, t, 0, c, p.T, 4, p.P)] = acc_t(1) - f;
    p.coef[table_index(b, t, 1, c, p.T, 4, p.P)] = drm / static_cast<acc_t>(p.HW);
    p.coef[table_index(b, t, 2, c, p.T, 4, p.P)] = f;
    p.coef[table_index(b, t, 3, c, p.T, 4, p.P)] = dym / static_cast<acc_t>(p.HW);
  }
  // This clip's share of the convolution's gradients: the 18 weights of group k,
  // then its bias, each a sum over (channel, frame) taken by one warp. Lane l sums
  // the channels l, l + 32, ... (every frame of each, in order); a fixed shuffle
  // tree adds the lanes: the same bits on every run.
  const int warp = tid / 32, lane = tid % 32;
  for (int q = warp; q < 19; q += kFuseThreads / 32) {
    acc_t sum = acc_t(0);
    const int ch = q / 9, i = (q % 9) / 3, j = q % 3;  // the weight's indices (q < 18)
    for (int64_t cq = lane; cq < half; cq += 32) {
      const int64_t c2 = cq + i - 1;
      if (q < 18 && (c2 < 0 || c2 >= half)) {
        continue;
      }
      for (int64_t t = 0; t < p.T; ++t) {
        const acc_t d = p.ds[table_index(b, t, 0, k * half + cq, p.T, 1, p.P)];
        if (q == 18) {
          sum += d;
          continue;
        }
        const int64_t t2 = t + j - 1;
        if (t2 >= 0 && t2 < p.T) {
          sum += d * p.fusion[table_index(b, t2, ch, k * half + c2, p.T, 3, p.P)];
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      p.fuse_partials[b * kFuseParams + (q < 18 ? ((k * 2 + ch) * 3 + i) * 3 + j : 36 + k)] = sum;
    }
  }
}

}  // namespace gateshift::cuda
