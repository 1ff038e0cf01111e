// Launch configuration of the Gate-Shift CUDA kernels, computed in ONE place for
// the real launcher (gate_shift.cu, via gate_shift_launch.h) and the CPU emulator, so that the
// emulated launch cannot drift from the real one. Plain C++: no CUDA headers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../common/layout.h"

namespace gateshift::cuda {

// A block owns one clip, one 8 x 8 tile of (H, W) and a run of frames. Small
// tiles keep a block's working set (a few frames of the tile and its halo, all
// channels) small enough to stay in L2 between the reads of the same data.
constexpr int kTileH = 8;
constexpr int kTileW = 8;
constexpr int kTilePixels = kTileH * kTileW;
constexpr int kHaloH = kTileH + 2;  // the 3x3 convolutions need one more pixel on each side
constexpr int kHaloW = kTileW + 2;
constexpr int kHaloPixels = kHaloH * kHaloW;
constexpr int kThreads = 256;

// Forward: 16 pixel lanes (each a strip of 4 pixels of a tile row) x 16 channel slices.
// A warp holds 4 slices x 8 lanes: 4 channels x 4 tile rows x 2 strips.
constexpr int kStrip = 4;
constexpr int kPixelLanes = kTilePixels / kStrip;
constexpr int kSlices = kThreads / kPixelLanes;
constexpr int kSlicesPerWarp = 4;
constexpr int kLanesPerWarp = 32 / kSlicesPerWarp;
constexpr int kForwardChunk = 32;  // channels of u staged in shared memory at once
constexpr int kWeightStride = 28;  // 27 taps, padded
// Layout of the staged u: halo rows kURowStride apart, channels kUChannelStride apart.
// A warp's read of one tap, 4 channels x 4 rows x 2 strips (4 apart), then falls in 32
// different banks for each of the three row taps: row stride 11 and channel stride
// 120 = 24 (mod 32) is the smallest such layout (the plain 10 and 100 took 1.7
// wavefronts a read).
constexpr int kURowStride = 11;
constexpr int kUChannelStride = 120;
static_assert(kUChannelStride >= kHaloH * kURowStride, "a channel's halo rows must fit its stride");
static_assert(kTileW / kStrip == 2 && kPixelLanes == 2 * kLanesPerWarp && kSlices % kSlicesPerWarp == 0,
              "the strides above were chosen for two strips a row and a warp on half the tile's rows");
// The slices' partial gate sums, kPartStride apart (65 = 1 mod 32): a warp's 4 slices
// store their strips (at columns 0 and 4) into 32 different banks.
constexpr int kPartStride = kTilePixels + 1;

// Backward, gradient of the gates (da): 128 halo-pixel lanes x 2 channel slices.
constexpr int kDaLanes = 128;
constexpr int kDaSlices = kThreads / kDaLanes;
// Backward, dx and the parameter gradients: 32 channel lanes x 8 pixel groups, the
// pixel group fastest, so that the 8 partial sums of a channel sit in 8 adjacent
// lanes of one warp and are combined with shuffles.
constexpr int kPixelGroups = 8;
constexpr int kChannelLanes = kThreads / kPixelGroups;
// Row stride of the staged (channel, pixel) tiles: a warp reads 4 channels x 8
// pixels, and 72 = 8 (mod 32) puts those 32 reads in 32 different banks.
constexpr int kStageStride = 72;


struct LaunchConfig {
  int64_t tiles_h, tiles_w;    // tiles covering a plane
  int64_t frames_per_chunk;    // frames of a clip one block owns
  int64_t chunks;              // runs of frames per clip
  int64_t blocks;              // clips x chunks x tiles, a 1-D grid (forward)
  // Backward: a block owns clips_per_block clips (the same run of frames and tile of
  // each), so that its per-block parameter-gradient partials stay within half of x.
  int64_t clips_per_block;
  int64_t backward_blocks;     // ceil(B / clips_per_block) x chunks x tiles
  std::size_t forward_shared;  // bytes of dynamic shared memory
  std::size_t backward_shared;

  int64_t tiles() const {
    return tiles_h * tiles_w;
  }
};

// Blocks the GPU holds at once: two per SM, the gate-shift kernels' register budget.
inline int64_t block_slots(int64_t num_sms) {
  return 2 * std::max<int64_t>(num_sms, 1);
}

// Input frames a block of the forward stages for its run [t0, t1) of a clip of T
// frames: the run and two on either side (the gates next to the run need them).
inline int64_t staged_frames(int64_t t0, int64_t t1, int64_t T) {
  return std::min(t1 + 2, T) - std::max<int64_t>(t0 - 2, 0);
}

// The forward's time, in frames staged by one block slot (block_slots), when each
// clip is cut into `chunks` runs of frames and `per_chunk` blocks take each run: the
// larger of a latency view (each wave of blocks lasts as long as its longest block)
// and a throughput view (every staged frame, spread over all slots). Cutting finer fills more slots but restages the
// frames around each cut: 14 x 14 planes (4 tiles) of 32 clips of 8 frames on 132
// SMs take 2 runs (256 blocks, one wave), not 3 (384 blocks, two waves, and 2x x's
// frames staged instead of 1.5x).
inline int64_t chunk_cost(int64_t T, int64_t chunks, int64_t per_chunk, int64_t num_sms) {
  const int64_t frames = (T + chunks - 1) / chunks;
  const int64_t slots = block_slots(num_sms);
  int64_t longest = 0, total = 0, runs = 0;
  for (int64_t t0 = 0; t0 < T; t0 += frames, ++runs) {
    const int64_t staged = staged_frames(t0, std::min(t0 + frames, T), T);
    longest = std::max(longest, staged);
    total += staged;
  }
  const int64_t waves = (per_chunk * runs + slots - 1) / slots;
  return std::max(waves * longest * slots, total * per_chunk);
}

// The sizes of x (B, T, C, H, W) with P gated channels; acc_bytes: sizeof the
// accumulation type (4 for float and half types, 8 for double).
// num_sms: multiprocessors of the device; the emulator passes its own count.
// min_partials_bytes: the partials may always take this much (2 MB on a GPU; tests of
// the emulator lower it to make blocks take several clips on small problems).
inline LaunchConfig make_launch_config(
    int64_t B, int64_t T, int64_t C, int64_t H, int64_t W, int64_t P, int64_t num_sms, std::size_t acc_bytes,
    int64_t min_partials_bytes) {
  LaunchConfig c{};
  c.tiles_h = (H + kTileH - 1) / kTileH;
  c.tiles_w = (W + kTileW - 1) / kTileW;
  // The backward's partials, one PartialsLayout row per block, may take half of x
  // (or min_partials_bytes): when clips are many and small (1 x 1 planes, say), a
  // block takes several, and runs of frames are cut no finer than that allows. x is
  // counted in the partials' own type, so that a half-precision x gets the grid of a
  // float one (its 7 x 7 planes were cut into half as many runs, leaving half the SMs
  // idle) for partials of at most x's own bytes.
  const int64_t row_bytes = PartialsLayout{P}.size() * static_cast<int64_t>(acc_bytes);
  const int64_t x_bytes = B * T * C * H * W * static_cast<int64_t>(acc_bytes);
  const int64_t max_rows = std::max<int64_t>(1, std::max<int64_t>(x_bytes / 2, min_partials_bytes) / row_bytes);
  const int64_t clip_rows = std::max<int64_t>(1, B) * c.tiles();
  c.clips_per_block = std::max<int64_t>(1, (clip_rows + max_rows - 1) / max_rows);
  const int64_t clip_groups = (B + c.clips_per_block - 1) / c.clips_per_block;
  // Late layers (7 x 7 planes: one tile) would leave a grid of B blocks, too few
  // to fill the device: clips are cut into runs of frames, as many as an estimate of
  // the forward's time prefers (chunk_cost), within what the partials allow.
  const int64_t per_chunk = std::max<int64_t>(1, clip_groups * c.tiles());
  const int64_t max_chunks = std::clamp<int64_t>(max_rows / per_chunk, 1, std::max<int64_t>(T, 1));
  // Past the first count that fills every block slot, cutting finer only adds waves and
  // restaged frames: the search stops there (and so stays short for long clips).
  const int64_t slots = block_slots(num_sms);
  int64_t chunks = 1;
  for (int64_t candidate = 2, best = chunk_cost(T, 1, per_chunk, num_sms);
       candidate <= max_chunks && per_chunk * (candidate - 1) < slots; ++candidate) {
    const int64_t cost = chunk_cost(T, candidate, per_chunk, num_sms);
    if (cost <= best) {  // a tie goes to more blocks: more warps to hide latency
      best = cost;
      chunks = candidate;
    }
  }
  c.frames_per_chunk = (T + chunks - 1) / chunks;
  c.chunks = (T + c.frames_per_chunk - 1) / std::max<int64_t>(c.frames_per_chunk, 1);
  c.blocks = B * c.chunks * c.tiles();
  c.backward_blocks = clip_groups * c.chunks * c.tiles();
  c.forward_shared = acc_bytes *
      (kForwardChunk * kUChannelStride      // u of a channel chunk, tile + halo
       + kForwardChunk * kWeightStride      // its gating weights
       + kSlices * 2 * kPartStride          // per-slice partial gate sums
       + 3 * 2 * kTilePixels                // finished gates, a ring of three frames
       + 4);                                // the zero padding's terms at the clip ends
  c.backward_shared = acc_bytes *
      (3 * 2 * kHaloPixels                  // da, a ring of three frames, tile + halo
       + kDaSlices * 2 * kDaLanes           // per-slice partial dg sums
       + 2 * kTilePixels                    // gates of the current frame
       + 3 * kChannelLanes * kStageStride); // staged x, dz and the neighbour frame's dz
  return c;
}

}  // namespace gateshift::cuda
