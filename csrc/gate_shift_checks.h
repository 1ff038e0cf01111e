// Argument checks shared by the CPU and CUDA implementations of the gateshift ops.
//
// Every message names the op argument and what was expected. The public Python
// API validates the user's arguments first (with ValueError/TypeError); these
// checks guard direct calls of torch.ops.gateshift.* and keep the kernels safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace gateshift {

// Sizes of one gate-shift problem, read off the 5-D (B, T, C, H, W) view of x.
struct GateShiftSizes {
  int64_t batch;     // B: clips
  int64_t frames;    // T: frames per clip
  int64_t channels;  // C: all channels of x
  int64_t height;    // H
  int64_t width;     // W
  int64_t gated;     // P: channels [0, P) are gated and shifted, [P, C) pass through
};

// True when each (H, W) plane of a 5-D tensor is contiguous in memory: the only
// layout the kernels require (B, T and C may have any strides).
bool has_contiguous_planes(const at::Tensor& t);

// t itself when its planes are contiguous, otherwise a contiguous copy.
at::Tensor with_contiguous_planes(const at::Tensor& t);

// A new tensor of x's sizes and options that the kernels can write: every (H, W)
// plane contiguous, and no two elements sharing memory. x (5-D, contiguous planes)
// gives its own strides when it is non-overlapping and dense; otherwise (overlapping
// or gapped views, where at::empty_like would order the dimensions by x's strides
// and could put T or C between H and W) dense strides with the planes innermost and
// B, T, C in the order of x's strides.
std::vector<int64_t> output_strides(const at::Tensor& x);
at::Tensor empty_output_like(const at::Tensor& x);

GateShiftSizes check_forward_args(
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved);

GateShiftSizes check_backward_args(
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    int64_t channels,
    bool interleaved);

// batch_stats: returns the number of elements per channel, N = B * T * H * W.
int64_t check_batch_stats_args(const at::Tensor& x, int64_t channels);

int64_t check_batch_stats_backward_args(
    const at::Tensor& grad_mean,
    const at::Tensor& grad_var,
    const at::Tensor& x,
    const at::Tensor& mean,
    int64_t channels);

// Gate-Shift-Fuse's extra arguments (the gate-shift ones are checked as above).
void check_fuse_args(const at::Tensor& x, const at::Tensor& fuse_weight, const std::optional<at::Tensor>& fuse_bias);
void check_fusion_table(const at::Tensor& fusion, const GateShiftSizes& s, const at::Tensor& x);

void check_temporal_shift_args(const at::Tensor& x, int64_t fold);

}  // namespace gateshift
