// CUDA kernels of the fused Gate-Shift op (DESIGN.md section 1).
//
// Device code only: it includes nothing but the shared headers of common/ (the
// compile-target macros, layouts, accumulation type, channel order), the launch
// configuration and c10's scalar types, so that the same source is built by nvcc
// for GPUs and by the host compiler under the CPU emulator (tests).
//
// TILING. A block owns one clip b, one 8 x 8 tile of the (H, W) plane and a run
// of frames [t0, t1) (launch_config.h). It slides over the frames keeping a
// window of three, so each frame of the tile is pulled from DRAM once and its
// re-reads come within two or three steps, from L2.
//
// FORWARD, per element of x (fp32, all channels gated):
//   reads   x once from DRAM for the gate conv (u = relu(scale * x + shift) is
//           formed while staging); the tile's halo, (10 * 10) / (8 * 8) = 1.56x
//           of the tile, comes from L2 because neighbouring tiles read it too;
//           the output step re-reads x[t] and x[t +- 1] of the tile two steps
//           later, from L2;
//   writes  the output once, and the gates: 2 planes per frame, 2/C of x.
//   DRAM:   4 + 4 + 4 * 2/C bytes = 1.0x (C = 64: 1.03x) of the 8-byte floor.
//   L2 -> SM: 4 * (1.56 + 2) + 4 bytes.
//   FLOP:   27 multiply-adds per gated channel and frame (54 FLOP), as in DESIGN.md.
//   Shared memory loads per multiply-add: a thread updates a strip of 4 pixels for
//   3 gate frames (108 FMA per channel) from 18 staged inputs and 27 weights.
// BACKWARD, per element:
//   reads   x and dz (the output gradient, channel order undone) for da, the gate
//           gradient, over the tile and halo; x, dz and dz of the neighbour frame
//           again for dx, within two steps, from L2; the gates (2/C);
//   writes  dx once; per-block partial sums of the parameter gradients,
//           (29 P + 2) floats per block, read back by one small kernel.
//   DRAM:   4 + 4 + 4 bytes (+ 2/C) = 1.0x of the 12-byte floor, plus the
//           partials: written and read once, 2 * 29 * 4 / (64 * F) bytes per
//           element for a block of F frames of a full 8 x 8 tile. Negligible when
//           blocks own whole clips; 3.6 bytes (0.3x the floor) when the launch
//           configuration cuts clips into single frames, as on 7 x 7 planes.
//
// The sliding windows' re-reads are L2 hits when the blocks resident at once keep
// their last ~4 frames (tile + halo, all channels) in L2: 8 * 100 * C * 4 bytes
// per block, e.g. 132 SMs x 2 blocks at C = 64 is 27 MB (H100: 50 MB of L2). At
// larger C fewer re-reads hit; the worst case, every re-read from DRAM, is
// 12 bytes forward (1.5x) and 20 backward (1.67x).
//
// DETERMINISM. No atomics: every sum runs in a fixed order (per-slice partials
// combined in slice order, pixel groups combined by a fixed shuffle tree, block
// partials summed in a fixed order by sum_partials_kernel). Parameter gradients are
// bitwise reproducible on every run, deterministic mode or not.
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
#include "launch_config.h"

namespace gateshift::cuda {

GATESHIFT_DEVICE float device_tanh(float v) {
  return tanhf(v);
}
GATESHIFT_DEVICE double device_tanh(double v) {
  return tanh(v);
}

template <typename T>
GATESHIFT_DEVICE T relu(T v) {
  return v < T(0) ? T(0) : v;  // keeps NaN, as torch.relu does
}

template <typename T>
GATESHIFT_DEVICE T min_of(T a, T b) {
  return a < b ? a : b;
}

template <typename T>
GATESHIFT_DEVICE T max_of(T a, T b) {
  return a < b ? b : a;
}

// Sums v over the 8 adjacent lanes of a pixel-group set, in a fixed tree.
template <typename T>
GATESHIFT_DEVICE T sum_over_pixel_groups(T v) {
  static_assert(kPixelGroups == 8, "the shuffle tree below combines 8 lanes");
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v;
}

// Which clips, frames and tile a block owns (the grid is 1-D: groups of clips x
// chunks x tiles). The forward's groups are single clips; the backward's may hold
// several (launch_config.h), which the block takes one after the other: b is the
// clip at hand, from b_first to b_last - 1.
struct BlockWork {
  int64_t b, b_first, b_last, t0, t1, h0, w0, tile;
};

struct GridShape {
  int64_t tiles, tiles_w, chunks, frames_per_chunk, clips_per_block;
};

GATESHIFT_DEVICE BlockWork block_work(int64_t block, const GridShape& g, int64_t B, int64_t T) {
  BlockWork w;
  const int64_t tile = block % g.tiles;
  const int64_t rest = block / g.tiles;
  w.b_first = rest / g.chunks * g.clips_per_block;
  w.b_last = min_of(B, w.b_first + g.clips_per_block);
  w.b = w.b_first;
  w.t0 = (rest % g.chunks) * g.frames_per_chunk;
  w.t1 = min_of(T, w.t0 + g.frames_per_chunk);
  w.h0 = (tile / g.tiles_w) * kTileH;
  w.w0 = (tile % g.tiles_w) * kTileW;
  w.tile = tile;
  return w;
}

// x, out, grad_out and grad_x are (B, T, C, H, W) with contiguous (H, W) planes and
// 64-bit strides for B, T and C (common/layout.h).
template <typename scalar_t>
struct GateShiftForwardKernelParams {
  using acc_t = acc_type<scalar_t>;
  GateShiftSizes n;
  GridShape grid;
  DevicePlanes<const scalar_t> x;
  DevicePlanes<scalar_t> out;
  device_ptr<acc_t> gates;  // (B, T, 2, H, W)
  device_ptr<const scalar_t> weight;  // (2, P/2, 3, 3, 3)
  device_ptr<const scalar_t> bias;    // (2) or null
  device_ptr<const acc_t> scale;      // (P) or null, converted to the accumulation type by the launcher
  device_ptr<const acc_t> shift;      // (P) or null
  // Gate-Shift-Fuse's first pass instead of the output: per tile, the sums of the
  // shifted part ys and of the residual r, (B, T, tiles, 2, P).
  device_ptr<acc_t> tile_sums = nullptr;
};

template <typename scalar_t>
struct GateShiftBackwardKernelParams {
  using acc_t = acc_type<scalar_t>;
  GateShiftSizes n;
  GridShape grid;
  DevicePlanes<const scalar_t> grad_out;
  DevicePlanes<const scalar_t> x;
  device_ptr<const acc_t> gates;
  device_ptr<const scalar_t> weight;
  device_ptr<const acc_t> scale;  // (P) or null
  device_ptr<const acc_t> shift;
  DevicePlanes<scalar_t> grad_x;
  device_ptr<acc_t> partials;  // (blocks, PartialsLayout{P}.size()): common/layout.h
  // Gate-Shift-Fuse only (null for GSM): (B, T, 4, P) coefficients turning dz of
  // channel c at frame t into the residual's gradient a_r dz + b_r (rows 0, 1) and
  // the shifted part's a_y dz + b_y (rows 2, 3). GSM: a = 1, b = 0.
  device_ptr<const acc_t> fuse_coef = nullptr;

  // a * dz + b with the (a, b) of `row` (0: residual, 2: shifted part) at (bi, t, c).
  GATESHIFT_DEVICE acc_t fused(int row, int64_t bi, int64_t t, int64_t c, acc_t dz) const {
    if (fuse_coef == nullptr) {
      return dz;
    }
    device_ptr<const acc_t> e = fuse_coef + table_index(bi, t, row, c, n.T, 4, n.P);
    return e[0] * dz + e[n.P];
  }
};

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

// Two blocks per SM for the float accumulators (at most 128 registers), one for
// double: capped at 128 registers, its instantiation spills.
template <typename scalar_t>
constexpr int kForwardMinBlocks = sizeof(acc_type<scalar_t>) == 4 ? 2 : 1;

template <typename scalar_t, bool fuse_means = false>
GATESHIFT_GLOBAL void __launch_bounds__(kThreads, kForwardMinBlocks<scalar_t>)
    gate_shift_forward_kernel(const GateShiftForwardKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(acc_t, shared);
  const device_ptr<acc_t> u_s = shared;                                    // [kForwardChunk][kHaloH][kURowStride]
  const device_ptr<acc_t> w_s = u_s + kForwardChunk * kUChannelStride;     // [kForwardChunk][kWeightStride]
  const device_ptr<acc_t> part_s = w_s + kForwardChunk * kWeightStride;    // [2][kSlices][kPartStride]
  const device_ptr<acc_t> gate_s = part_s + kSlices * 2 * kPartStride;     // [3][2][kTilePixels]
  const device_ptr<acc_t> edge_s = gate_s + 3 * 2 * kTilePixels;           // [2 groups][2 clip ends]

  const GateShiftSizes& n = p.n;
  const int tid = threadIdx.x;

  // What the conv's zero padding in time adds to the gates of the clip's first frame
  // (tap 0 meets frame -1) and last frame (tap 2 meets frame T): the sum of 0 * w over
  // that tap, 0 unless a weight there is NaN or infinite, as in the published conv3d.
  // For each (group, end) in turn, each thread over a stride of the tap's weights, then
  // the warps' sums in a fixed order. First thing, one accumulator at a time, 32-bit
  // indices: the kernel is at its register cap, and a few loads per thread cost less
  // than a spill in the main loop.
  {
    const int taps_per_group = static_cast<int>(n.P / 2) * 9;
#pragma unroll 1
    for (int m = 0; m < 4; ++m) {  // m = group * 2 + end; end 0 is tap 0, end 1 tap 2
      const device_ptr<const scalar_t> w = p.weight + (m / 2) * taps_per_group * 3 + (m % 2) * 18;
      acc_t z = acc_t(0);
      for (int e = tid; e < taps_per_group; e += kThreads) {
        z += acc_t(0) * static_cast<acc_t>(w[(e / 9) * 27 + e % 9]);
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        z += __shfl_xor_sync(0xffffffffu, z, offset);
      }
      if (tid % 32 == 0) {
        part_s[(tid / 32) * 4 + m] = z;
      }
    }
    __syncthreads();
    if (tid < 4) {
      acc_t sum = acc_t(0);
      for (int warp = 0; warp < kThreads / 32; ++warp) {
        sum += part_s[warp * 4 + tid];
      }
      edge_s[tid] = sum;
    }
    __syncthreads();  // part_s is written again by the first finished gate frame
  }
  const BlockWork bw = block_work(blockIdx.x, p.grid, n.B, n.T);
  const int64_t half = n.P / 2;
  // Output frames [t0, t1) need gate frames [glo, ghi), which need input frames [slo, shi).
  const int64_t glo = max_of<int64_t>(bw.t0 - 1, 0), ghi = min_of(bw.t1 + 1, n.T);
  const int64_t slo = max_of<int64_t>(glo - 1, 0), shi = min_of(ghi + 1, n.T);
  const bool affine = p.scale != nullptr;


  // Gate-conv role: a strip of kStrip pixels of one tile row, and a slice of the channels.
  // A warp takes 4 slices of half the tile's rows (launch_config.h: conflict-free reads).
  const int warp_id = tid / 32, warp_lane = tid % 32;
  const int lane = (warp_id % 2) * kLanesPerWarp + warp_lane % kLanesPerWarp;
  const int slice = (warp_id / 2) * kSlicesPerWarp + warp_lane / kLanesPerWarp;
  const int row = lane / (kTileW / kStrip), col0 = (lane % (kTileW / kStrip)) * kStrip;

  // acc[m][k][q]: gate frame s - 1 + m, group k, pixel q of the strip (input frame s).
  acc_t acc[3][2][kStrip];
#pragma unroll
  for (int m = 0; m < 3; ++m)
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int q = 0; q < kStrip; ++q)
        acc[m][k][q] = acc_t(0);

  // Gate frame tg is complete in acc_frame: combine the slices, add the bias, tanh.
  const auto finish_gate_frame = [&](int64_t tg, const acc_t (&acc_frame)[2][kStrip]) {
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int q = 0; q < kStrip; ++q)
        part_s[(k * kSlices + slice) * kPartStride + row * kTileW + col0 + q] = acc_frame[k][q];
    __syncthreads();
    if (tid < 2 * kTilePixels) {
      const int k = tid / kTilePixels, pix = tid % kTilePixels;
      acc_t a = p.bias != nullptr ? static_cast<acc_t>(p.bias[k]) : acc_t(0);
      if (tg == 0) {
        a += edge_s[k * 2 + 0];
      }
      if (tg == n.T - 1) {
        a += edge_s[k * 2 + 1];
      }
      for (int sl = 0; sl < kSlices; ++sl) {
        a += part_s[(k * kSlices + sl) * kPartStride + pix];
      }
      const acc_t g = device_tanh(a);
      gate_s[((tg % 3) * 2 + k) * kTilePixels + pix] = g;
      const int64_t h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
      if (tg >= bw.t0 && tg < bw.t1 && h < n.H && w < n.W) {
        p.gates[((bw.b * n.T + tg) * 2 + k) * n.H * n.W + h * n.W + w] = g;
      }
    }
    __syncthreads();
  };

  // out[t] = (1 - g[t]) x[t] + g[t +- 1] x[t +- 1]: group 0 takes from the next
  // frame, group 1 from the previous one, zero at the clip ends. Coalesced along W.
  const auto write_output_frame = [&](int64_t t) {
    for (int64_t e = tid; e < n.C * kTilePixels; e += kThreads) {
      const int64_t c = e / kTilePixels;
      const int pix = static_cast<int>(e % kTilePixels);
      const int64_t h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
      if (h >= n.H || w >= n.W) {
        continue;
      }
      const int64_t hw = h * n.W + w;
      const scalar_t xv_raw = p.x.plane(bw.b, t, c)[hw];
      if (c >= n.P) {  // pass-through channel
        p.out.plane(bw.b, t, c)[hw] = xv_raw;
        continue;
      }
      const int k = c >= half ? 1 : 0;
      const acc_t xv = static_cast<acc_t>(xv_raw);
      const acc_t g = gate_s[((t % 3) * 2 + k) * kTilePixels + pix];
      acc_t v = xv - g * xv;
      const int64_t tn = k == 0 ? t + 1 : t - 1;
      if (tn >= 0 && tn < n.T) {
        const acc_t gn = gate_s[((tn % 3) * 2 + k) * kTilePixels + pix];
        v += gn * static_cast<acc_t>(p.x.plane(bw.b, tn, c)[hw]);
      }
      p.out.plane(bw.b, t, output_channel(c, n.P, n.interleaved))[hw] = static_cast<scalar_t>(v);
    }
  };

  // Gate-Shift-Fuse's first pass: instead of the output, the sums of ys = g[t +- 1]
  // x[t +- 1] and r = (1 - g[t]) x[t] over the tile's pixels, per gated channel.
  // Four channels at a time, 64 threads (two warps) each: a shuffle tree in each
  // warp, then the two warps in order (reproducible bits; no atomics).
  const auto write_means_frame = [&](int64_t t) {
    const int warp = tid / 32, lane = tid % 32;
    for (int64_t c0 = 0; c0 < n.P; c0 += kThreads / kTilePixels) {
      const int64_t c = c0 + tid / kTilePixels;
      const int pix = tid % kTilePixels;
      const int64_t h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
      acc_t ys = acc_t(0), r = acc_t(0);
      if (c < n.P && h < n.H && w < n.W) {
        const int64_t hw = h * n.W + w;
        const int k = c >= half ? 1 : 0;
        const acc_t xv = static_cast<acc_t>(p.x.plane(bw.b, t, c)[hw]);
        r = xv - gate_s[((t % 3) * 2 + k) * kTilePixels + pix] * xv;
        const int64_t tn = k == 0 ? t + 1 : t - 1;
        if (tn >= 0 && tn < n.T) {
          ys = gate_s[((tn % 3) * 2 + k) * kTilePixels + pix] * static_cast<acc_t>(p.x.plane(bw.b, tn, c)[hw]);
        }
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        ys += __shfl_xor_sync(0xffffffffu, ys, offset);
        r += __shfl_xor_sync(0xffffffffu, r, offset);
      }
      if (lane == 0) {  // part_s is free between gate frames
        part_s[warp * 2] = ys;
        part_s[warp * 2 + 1] = r;
      }
      __syncthreads();
      if (tid < kThreads / kTilePixels && c0 + tid < n.P) {
        const int64_t out = (((bw.b * n.T + t) * p.grid.tiles + bw.tile) * 2) * n.P + c0 + tid;
        p.tile_sums[out] = part_s[4 * tid] + part_s[4 * tid + 2];
        p.tile_sums[out + n.P] = part_s[4 * tid + 1] + part_s[4 * tid + 3];
      }
      __syncthreads();
    }
  };

  const auto finish_frame = [&](int64_t t) {
    if constexpr (fuse_means) {
      write_means_frame(t);
    } else {
      write_output_frame(t);
    }
  };

  for (int64_t s = slo; s < shi; ++s) {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      for (int64_t c0 = k * half; c0 < (k + 1) * half; c0 += kForwardChunk) {
        const int chunk = static_cast<int>(min_of<int64_t>(kForwardChunk, (k + 1) * half - c0));
        // Stage u = relu(scale * x + shift) of the chunk over tile + halo; zero
        // outside the plane (the conv's zero padding applies to u), and the weights.
        for (int e = tid; e < chunk * kHaloPixels; e += kThreads) {
          const int cc = e / kHaloPixels, hp = e % kHaloPixels;
          const int64_t h = bw.h0 + hp / kHaloW - 1, w = bw.w0 + hp % kHaloW - 1;
          acc_t v = acc_t(0);
          if (h >= 0 && h < n.H && w >= 0 && w < n.W) {
            const int64_t c = c0 + cc;
            const acc_t xv = static_cast<acc_t>(p.x.plane(bw.b, s, c)[h * n.W + w]);
            v = affine ? relu(p.scale[c] * xv + p.shift[c]) : xv;
          }
          u_s[cc * kUChannelStride + (hp / kHaloW) * kURowStride + hp % kHaloW] = v;
        }
        for (int e = tid; e < chunk * 27; e += kThreads) {
          w_s[(e / 27) * kWeightStride + e % 27] = static_cast<acc_t>(p.weight[c0 * 27 + e]);
        }
        __syncthreads();
        for (int cc = slice; cc < chunk; cc += kSlices) {
          device_ptr<const acc_t> u = u_s + cc * kUChannelStride + row * kURowStride + col0;
          device_ptr<const acc_t> wt = w_s + cc * kWeightStride;
#pragma unroll
          for (int j = 0; j < 3; ++j) {
            acc_t r[kStrip + 2];
#pragma unroll
            for (int q = 0; q < kStrip + 2; ++q) {
              r[q] = u[j * kURowStride + q];
            }
#pragma unroll
            for (int l = 0; l < 3; ++l) {
              // Tap i links input frame s with gate frame s + 1 - i.
              const acc_t w_prev = wt[2 * 9 + j * 3 + l];  // i = 2: gate frame s - 1
              const acc_t w_cur = wt[1 * 9 + j * 3 + l];   // i = 1: gate frame s
              const acc_t w_next = wt[0 * 9 + j * 3 + l];  // i = 0: gate frame s + 1
#pragma unroll
              for (int q = 0; q < kStrip; ++q) {
                acc[0][k][q] += w_prev * r[q + l];
                acc[1][k][q] += w_cur * r[q + l];
                acc[2][k][q] += w_next * r[q + l];
              }
            }
          }
        }
        __syncthreads();
      }
    }
    // Gate frame s - 1 has all its inputs now; so has frame s when it is the clip's
    // last. Output frame t needs gate frames t - 1 .. t + 1, so it follows frame t + 1.
    if (s - 1 >= glo) {
      finish_gate_frame(s - 1, acc[0]);
      if (s - 2 >= bw.t0 && s - 2 < bw.t1) {
        finish_frame(s - 2);
      }
    }
    if (s == n.T - 1 && s >= glo && s < ghi) {
      finish_gate_frame(s, acc[1]);
      if (s - 1 >= bw.t0 && s - 1 < bw.t1) {
        finish_frame(s - 1);
      }
      if (s >= bw.t0 && s < bw.t1) {
        finish_frame(s);
      }
    }
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int q = 0; q < kStrip; ++q) {
        acc[0][k][q] = acc[1][k][q];
        acc[1][k][q] = acc[2][k][q];
        acc[2][k][q] = acc_t(0);
      }
  }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

template <typename scalar_t>
GATESHIFT_GLOBAL void __launch_bounds__(kThreads) gate_shift_backward_kernel(const GateShiftBackwardKernelParams<scalar_t> p) {
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(acc_t, shared);
  const device_ptr<acc_t> da_s = shared;                                 // [3][2][kHaloPixels]
  const device_ptr<acc_t> dg_s = da_s + 3 * 2 * kHaloPixels;             // [kDaSlices][2][kDaLanes]
  const device_ptr<acc_t> gate_s = dg_s + kDaSlices * 2 * kDaLanes;      // [2][kTilePixels]
  const device_ptr<acc_t> x_s = gate_s + 2 * kTilePixels;                // [kChannelLanes][kStageStride]
  const device_ptr<acc_t> dz_s = x_s + kChannelLanes * kStageStride;     // the same for dz
  const device_ptr<acc_t> dzn_s = dz_s + kChannelLanes * kStageStride;   // and dz of the neighbour frame

  const GateShiftSizes& n = p.n;
  const int tid = threadIdx.x;
  BlockWork bw = block_work(blockIdx.x, p.grid, n.B, n.T);
  const int64_t half = n.P / 2, HW = n.H * n.W;
  const bool affine = p.scale != nullptr;
  const PartialsLayout layout{n.P};
  const device_ptr<acc_t> partial = p.partials + static_cast<int64_t>(blockIdx.x) * layout.size();
  const device_ptr<acc_t> dbias = partial + layout.bias();
  const device_ptr<acc_t> dscale = partial + layout.bn_scale();
  const device_ptr<acc_t> dshift = partial + layout.bn_shift();

  for (int64_t e = tid; e < layout.size(); e += kThreads) {
    partial[e] = acc_t(0);
  }
  __syncthreads();

  // da_k[f] = (1 - g_k[f]^2) sum_{c in G_k} x_c[f] (dz_c[f -+ 1] - dz_c[f]) over tile +
  // halo: the adjoint of the shifts (group 0's frame f fed output f - 1, group 1's
  // output f + 1), through tanh. Zero outside the plane: the transposed conv's padding.
  const auto compute_da_frame = [&](int64_t f) {
    const int lane = tid % kDaLanes, slice = tid / kDaLanes;
    acc_t dg0 = acc_t(0), dg1 = acc_t(0);
    const int64_t h = bw.h0 + lane / kHaloW - 1, w = bw.w0 + lane % kHaloW - 1;
    if (lane < kHaloPixels && h >= 0 && h < n.H && w >= 0 && w < n.W) {
      const int64_t hw = h * n.W + w;
      // dr = the residual's gradient at f, dys = the shifted part's at the neighbour
      // (both dz for GSM, see GateShiftBackwardKernelParams::fused).
      for (int64_t c = slice; c < half; c += kDaSlices) {
        const int64_t oc = output_channel(c, n.P, n.interleaved);
        const acc_t dr = p.fused(0, bw.b, f, c, static_cast<acc_t>(p.grad_out.plane(bw.b, f, oc)[hw]));
        const acc_t dys =
            f >= 1 ? p.fused(2, bw.b, f - 1, c, static_cast<acc_t>(p.grad_out.plane(bw.b, f - 1, oc)[hw]))
                   : acc_t(0);
        dg0 += static_cast<acc_t>(p.x.plane(bw.b, f, c)[hw]) * (dys - dr);
      }
      for (int64_t c = half + slice; c < n.P; c += kDaSlices) {
        const int64_t oc = output_channel(c, n.P, n.interleaved);
        const acc_t dr = p.fused(0, bw.b, f, c, static_cast<acc_t>(p.grad_out.plane(bw.b, f, oc)[hw]));
        const acc_t dys = f + 1 < n.T
            ? p.fused(2, bw.b, f + 1, c, static_cast<acc_t>(p.grad_out.plane(bw.b, f + 1, oc)[hw]))
            : acc_t(0);
        dg1 += static_cast<acc_t>(p.x.plane(bw.b, f, c)[hw]) * (dys - dr);
      }
    }
    dg_s[(slice * 2 + 0) * kDaLanes + lane] = dg0;
    dg_s[(slice * 2 + 1) * kDaLanes + lane] = dg1;
    __syncthreads();
    if (tid < 2 * kHaloPixels) {
      const int k = tid / kHaloPixels, hp = tid % kHaloPixels;
      const int64_t hh = bw.h0 + hp / kHaloW - 1, ww = bw.w0 + hp % kHaloW - 1;
      acc_t da = acc_t(0);
      if (hh >= 0 && hh < n.H && ww >= 0 && ww < n.W) {
        acc_t dg = acc_t(0);
        for (int sl = 0; sl < kDaSlices; ++sl) {
          dg += dg_s[(sl * 2 + k) * kDaLanes + hp];
        }
        const acc_t g = p.gates[((bw.b * n.T + f) * 2 + k) * HW + hh * n.W + ww];
        da = dg * (acc_t(1) - g * g);
      }
      da_s[((f % 3) * 2 + k) * kHaloPixels + hp] = da;
    }
    __syncthreads();
    // dbias: da over the tile's own pixels and frames, summed in pixel order.
    if (f >= bw.t0 && f < bw.t1 && tid < 2) {
      acc_t sum = acc_t(0);
      for (int pix = 0; pix < kTilePixels; ++pix) {
        sum += da_s[((f % 3) * 2 + tid) * kHaloPixels + (pix / kTileW + 1) * kHaloW + pix % kTileW + 1];
      }
      dbias[tid] += sum;
    }
  };

  // dx, and the parameter gradients' partial sums, of frame t.
  const auto backward_frame = [&](int64_t t) {
    if (tid < 2 * kTilePixels) {
      const int k = tid / kTilePixels, pix = tid % kTilePixels;
      const int64_t h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
      gate_s[tid] = h < n.H && w < n.W ? p.gates[((bw.b * n.T + t) * 2 + k) * HW + h * n.W + w] : acc_t(0);
    }
    const int pg = tid % kPixelGroups, cl = tid / kPixelGroups;
    for (int64_t c0 = 0; c0 < n.C; c0 += kChannelLanes) {
      // Stage x, dz and the neighbour frame's dz of kChannelLanes channels, coalesced.
      // (Not unrolled: eight iterations of loads in flight cost 40 registers.)
#pragma unroll 1
      for (int e = tid; e < kChannelLanes * kTilePixels; e += kThreads) {
        const int cc = e / kTilePixels, pix = e % kTilePixels;
        const int64_t c = c0 + cc, h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
        acc_t xv = acc_t(0), dz = acc_t(0), dzn = acc_t(0);
        if (c < n.C && h < n.H && w < n.W) {
          const int64_t hw = h * n.W + w;
          if (c < n.P) {
            const int64_t oc = output_channel(c, n.P, n.interleaved);
            const int64_t tn = c < half ? t - 1 : t + 1;
            // Staged as the residual's gradient (dz) and the neighbour's shifted part's (dzn).
            xv = static_cast<acc_t>(p.x.plane(bw.b, t, c)[hw]);
            dz = p.fused(0, bw.b, t, c, static_cast<acc_t>(p.grad_out.plane(bw.b, t, oc)[hw]));
            if (tn >= 0 && tn < n.T) {
              dzn = p.fused(2, bw.b, tn, c, static_cast<acc_t>(p.grad_out.plane(bw.b, tn, oc)[hw]));
            }
          } else {
            dz = static_cast<acc_t>(p.grad_out.plane(bw.b, t, c)[hw]);
          }
        }
        x_s[cc * kStageStride + pix] = xv;
        dz_s[cc * kStageStride + pix] = dz;
        dzn_s[cc * kStageStride + pix] = dzn;
      }
      __syncthreads();

      const int64_t c = c0 + cl;
      acc_t dw[27];
#pragma unroll
      for (int e = 0; e < 27; ++e) {
        dw[e] = acc_t(0);
      }
      acc_t dsc = acc_t(0), dsh = acc_t(0);
      if (c < n.P) {
        const int k = c < half ? 0 : 1;
        acc_t wt[27];
#pragma unroll
        for (int e = 0; e < 27; ++e) {
          wt[e] = static_cast<acc_t>(p.weight[c * 27 + e]);
        }
        const acc_t sc = affine ? p.scale[c] : acc_t(1);
        const acc_t sh = affine ? p.shift[c] : acc_t(0);
#pragma unroll 1
        for (int pix = pg; pix < kTilePixels; pix += kPixelGroups) {
          const int py = pix / kTileW, px = pix % kTileW;
          if (bw.h0 + py >= n.H || bw.w0 + px >= n.W) {
            continue;
          }
          const acc_t xv = x_s[cl * kStageStride + pix];
          const acc_t u = affine ? relu(sc * xv + sh) : xv;
          acc_t du = acc_t(0);
          // Tap (i, j, l) links u at (t, h, w) with da at (t - i + 1, h - j + 1, w - l + 1).
#pragma unroll
          for (int i = 0; i < 3; ++i) {
            const int64_t f = t - i + 1;
            if (f < 0 || f >= n.T) {
              continue;
            }
            device_ptr<const acc_t> d = da_s + ((f % 3) * 2 + k) * kHaloPixels + (py + 2) * kHaloW + (px + 2);
#pragma unroll
            for (int j = 0; j < 3; ++j)
#pragma unroll
              for (int l = 0; l < 3; ++l) {
                const acc_t dv = d[-j * kHaloW - l];
                du += wt[i * 9 + j * 3 + l] * dv;
                dw[i * 9 + j * 3 + l] += u * dv;
              }
          }
          const acc_t g = gate_s[k * kTilePixels + pix];
          acc_t dx = (acc_t(1) - g) * dz_s[cl * kStageStride + pix] + g * dzn_s[cl * kStageStride + pix];
          if (affine) {
            // ReLU passes du where its input was positive; the affine scales it.
            const acc_t dum = sc * xv + sh > acc_t(0) ? du : acc_t(0);
            dx += dum * sc;
            dsc += dum * xv;
            dsh += dum;
          } else {
            dx += du;
          }
          x_s[cl * kStageStride + pix] = dx;  // this thread's own slot: dx, staged for the store
        }
      } else if (c < n.C) {  // pass-through channel: dx = dz
        for (int pix = pg; pix < kTilePixels; pix += kPixelGroups) {
          x_s[cl * kStageStride + pix] = dz_s[cl * kStageStride + pix];
        }
      }
      if (c0 < n.P) {  // block-uniform: every lane of every warp takes part in the shuffles
#pragma unroll
        for (int e = 0; e < 27; ++e) {
          dw[e] = sum_over_pixel_groups(dw[e]);
        }
        dsc = sum_over_pixel_groups(dsc);
        dsh = sum_over_pixel_groups(dsh);
        if (pg == 0 && c < n.P) {  // one owner per channel: no atomics
#pragma unroll
          for (int e = 0; e < 27; ++e) {
            partial[c * 27 + e] += dw[e];
          }
          dscale[c] += dsc;
          dshift[c] += dsh;
        }
      }
      __syncthreads();
      // No barrier after this store: the next chunk's staging writes each x_s slot
      // from the thread that reads it here, and every other shared array's readers
      // finished before the barrier above.
#pragma unroll 1
      for (int e = tid; e < kChannelLanes * kTilePixels; e += kThreads) {
        const int cc = e / kTilePixels, pix = e % kTilePixels;
        const int64_t cg = c0 + cc, h = bw.h0 + pix / kTileW, w = bw.w0 + pix % kTileW;
        if (cg < n.C && h < n.H && w < n.W) {
          p.grad_x.plane(bw.b, t, cg)[h * n.W + w] = static_cast<scalar_t>(x_s[cc * kStageStride + pix]);
        }
      }
    }
  };

  for (; bw.b < bw.b_last; ++bw.b) {
    // dx at frame t needs da at t - 1 .. t + 1: keep da one frame ahead.
    int64_t next_da = max_of<int64_t>(bw.t0 - 1, 0);
    for (int64_t t = bw.t0; t < bw.t1; ++t) {
      for (; next_da <= min_of(t + 1, n.T - 1); ++next_da) {
        compute_da_frame(next_da);
      }
      backward_frame(t);
    }
  }
}

// Sums the per-block partials into the parameter gradients. A block takes
// kPartialColumns consecutive parameters (one per lane: coalesced rows) and
// kPartialStrands warps; strand s sums the rows s, s + kPartialStrands, ... in
// order, and the strands' sums are added in strand order. The order depends on
// the number of rows alone (from the shape and the SM count, launch_config.h), so
// the bits are the same on every run on a device; the chains are blocks / 8 long,
// and the grid has a block per 32 parameters (one thread per parameter walking
// every row left the GPU nearly idle). The BN
// affine's gradients have the affine's dtype (affine_t), which may be the
// accumulation type. For Gate-Shift-Fuse the columns after the gate-shift
// parameters are the fusion convolution's kFuse parameters, summed over their
// per-clip partials (null for GSM).
constexpr int kPartialColumns = 32;
constexpr int kPartialStrands = kThreads / kPartialColumns;

template <typename scalar_t, typename affine_t>
GATESHIFT_GLOBAL void __launch_bounds__(kThreads) sum_partials_kernel(
    device_ptr<const acc_type<scalar_t>> partials,
    int64_t blocks,
    int64_t P,
    device_ptr<scalar_t> grad_weight,
    device_ptr<scalar_t> grad_bias,
    device_ptr<affine_t> grad_scale,  // null without the BN affine
    device_ptr<affine_t> grad_shift,
    device_ptr<const acc_type<scalar_t>> fuse_partials,  // (clips, kFuse) or null
    int64_t clips,
    int64_t kFuse,
    device_ptr<scalar_t> grad_fuse_weight,  // the first kFuse - 2 fusion parameters' gradients
    device_ptr<scalar_t> grad_fuse_bias) {  // the last two
  using acc_t = acc_type<scalar_t>;
  GATESHIFT_DYNAMIC_SHARED(acc_t, strand_s);  // [kPartialStrands][kPartialColumns]
  const PartialsLayout layout{P};
  const int64_t stride = layout.size();
  const int lane = threadIdx.x % kPartialColumns, strand = threadIdx.x / kPartialColumns;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kPartialColumns + lane;
  const bool fusion_column = j >= stride;
  const int64_t columns = stride + (fuse_partials != nullptr ? kFuse : 0);
  acc_t sum = acc_t(0);
  if (j < columns) {
    // Column j of a row-major table: the gate-shift partials, or the fusion's.
    device_ptr<const acc_t> column = fusion_column ? fuse_partials + (j - stride) : partials + j;
    const int64_t rows = fusion_column ? clips : blocks, row_stride = fusion_column ? kFuse : stride;
    for (int64_t r = strand; r < rows; r += kPartialStrands) {
      sum += column[r * row_stride];
    }
  }
  strand_s[strand * kPartialColumns + lane] = sum;
  __syncthreads();
  if (strand != 0 || j >= columns) {
    return;
  }
  for (int s = 1; s < kPartialStrands; ++s) {
    sum += strand_s[s * kPartialColumns + lane];
  }
  if (fusion_column) {
    const int64_t e = j - stride;
    if (e < kFuse - 2) {
      grad_fuse_weight[e] = static_cast<scalar_t>(sum);
    } else {
      grad_fuse_bias[e - (kFuse - 2)] = static_cast<scalar_t>(sum);
    }
  } else if (j < layout.bias()) {
    grad_weight[j] = static_cast<scalar_t>(sum);
  } else if (j < layout.bn_scale()) {
    grad_bias[j - layout.bias()] = static_cast<scalar_t>(sum);
  } else if (j < layout.bn_shift()) {
    if (grad_scale != nullptr) {
      grad_scale[j - layout.bn_scale()] = static_cast<affine_t>(sum);
    }
  } else if (grad_shift != nullptr) {
    grad_shift[j - layout.bn_shift()] = static_cast<affine_t>(sum);
  }
}

}  // namespace gateshift::cuda
