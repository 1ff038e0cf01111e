// CPU implementation of the fused Gate-Shift-Fuse ops (DESIGN.md section 2).
//
// The fusion weights need the spatial means of the shifted part and of the
// residual before any output can be written, so GSF takes three passes:
//
// forward  (1) gates, and the means ym, rm per (clip, frame, channel): the GSM
//              tasks in their kFuseMeans mode, reading x once;
//          (2) the fusion convolution and sigmoid over (channel, frame): tiny;
//          (3) the combine f ys + (1 - f) r from the stored gates: reads x (the
//              frame and its neighbour, from cache) and writes the output once.
// backward (1) df = sum_hw dz (ys - r) per (clip, frame, channel);
//          (2) the fusion convolution's backward: its parameters' gradients and
//              the coefficients that turn dz into the gradients of the residual
//              and of the shifted part;
//          (3) the GSM backward tasks with those coefficients.
// Nothing of x's size is allocated besides the output and dx.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../gate_shift_checks.h"
#include "../gate_shift_fuse_math.h"
#include "../gate_shift_indexing.h"
#include "gate_shift_ops.h"
#include "gate_shift_tasks.h"

namespace gateshift::cpu {
namespace {

template <typename acc_t>
std::vector<acc_t> to_acc_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  return std::vector<acc_t>(c.const_data_ptr<acc_t>(), c.const_data_ptr<acc_t>() + c.numel());
}

// Forward pass (3): out[t] = f ys + (1 - f) r, with ys = g[tn] x[tn] (tn = t + 1 for
// group 0, t - 1 for group 1, zero past the clip) and r = (1 - g[t]) x[t].
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void combine_planes(
    const Problem<scalar_t>& p,
    const at::opmath_type<scalar_t>* gates,
    const at::opmath_type<scalar_t>* fusion,
    scalar_t* out,
    int64_t out_sb,
    int64_t out_st,
    int64_t out_sc,
    int64_t plane_begin,
    int64_t plane_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = p.T, C = p.C, P = p.P, half = P / 2, HW = p.H * p.W;
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % C, t = (plane / C) % T, b = plane / (C * T);
    const scalar_t* xc = p.x_plane(b, t, c);
    if (c >= P) {  // pass-through channel
      std::copy(xc, xc + HW, out + b * out_sb + t * out_st + c * out_sc);
      continue;
    }
    const int64_t k = c / half, tn = k == 0 ? t + 1 : t - 1;
    const acc_t* g = gates + ((b * T + t) * 2 + k) * HW;
    const acc_t f = fusion[table_index(b, t, 2, c, T, 3, P)];
    scalar_t* o = out + b * out_sb + t * out_st + output_channel(c, P, p.interleaved) * out_sc;
    if (tn >= 0 && tn < T) {
      const acc_t* gn = gates + ((b * T + tn) * 2 + k) * HW;
      const scalar_t* xn = p.x_plane(b, tn, c);
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = static_cast<acc_t>(xc[i]);
        o[i] = static_cast<scalar_t>(f * gn[i] * static_cast<acc_t>(xn[i]) + (acc_t(1) - f) * (xv - g[i] * xv));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = static_cast<acc_t>(xc[i]);
        o[i] = static_cast<scalar_t>((acc_t(1) - f) * (xv - g[i] * xv));
      }
    }
  }
}

// Backward pass (1): df = sum_hw dz (ys - r) for the gated channels' planes.
template <typename scalar_t>
GATESHIFT_CPU_MULTIVERSION void fusion_gradient_planes(
    const Problem<scalar_t>& p,
    const at::Tensor& grad_out,
    const at::opmath_type<scalar_t>* gates,
    at::opmath_type<scalar_t>* df,
    int64_t plane_begin,
    int64_t plane_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = p.T, P = p.P, half = P / 2, HW = p.H * p.W;
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  for (int64_t plane = plane_begin; plane < plane_end; ++plane) {
    const int64_t c = plane % P, t = (plane / P) % T, b = plane / (P * T);
    const int64_t k = c / half, tn = k == 0 ? t + 1 : t - 1;
    const scalar_t* xc = p.x_plane(b, t, c);
    const scalar_t* dz = go + b * grad_out.stride(0) + t * grad_out.stride(1) +
        output_channel(c, P, p.interleaved) * grad_out.stride(2);
    const acc_t* g = gates + ((b * T + t) * 2 + k) * HW;
    acc_t sum = 0;
    if (tn >= 0 && tn < T) {
      const acc_t* gn = gates + ((b * T + tn) * 2 + k) * HW;
      const scalar_t* xn = p.x_plane(b, tn, c);
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = static_cast<acc_t>(xc[i]);
        sum += static_cast<acc_t>(dz[i]) * (gn[i] * static_cast<acc_t>(xn[i]) - (xv - g[i] * xv));
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t xv = static_cast<acc_t>(xc[i]);
        sum -= static_cast<acc_t>(dz[i]) * (xv - g[i] * xv);
      }
    }
    df[table_index(b, t, 0, c, T, 1, P)] = sum;
  }
}

template <typename scalar_t>
void fuse_forward(
    const GateShiftSizes& s,
    bool interleaved,
    const at::Tensor& x,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    const at::Tensor& fuse_bias,
    at::Tensor& out,
    at::Tensor& gates,
    at::Tensor& fusion) {
  using acc_t = at::opmath_type<scalar_t>;
  const Problem<scalar_t> p = make_problem<scalar_t>(s, interleaved, x, weight, bias, bn_scale, bn_shift);
  acc_t* const fz = fusion.mutable_data_ptr<acc_t>();
  const ForwardOutputs<scalar_t> means{nullptr, 0, 0, 0, gates.mutable_data_ptr<acc_t>(), fz};
  at::parallel_for(0, p.B * p.tasks_per_clip(), 1, [&](int64_t begin, int64_t end) {
    forward_tasks<scalar_t, ForwardMode::kFuseMeans>(p, means, begin, end);
  });
  const std::vector<acc_t> V = to_acc_vector<acc_t>(fuse_weight), e = to_acc_vector<acc_t>(fuse_bias);
  const int64_t T = p.T, P = p.P, half = P / 2;
  at::parallel_for(0, p.B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / P, c = bc % P;
      const int k = c < half ? 0 : 1;
      for (int64_t t = 0; t < T; ++t) {
        const acc_t logit = fuse_logit(fz, T, P, b, k, c - k * half, t, V.data(), e[k]);
        fz[table_index(b, t, 2, c, T, 3, P)] = acc_t(1) / (acc_t(1) + std::exp(-logit));
      }
    }
  });
  at::parallel_for(0, p.B * T * p.C, 16, [&](int64_t begin, int64_t end) {
    combine_planes<scalar_t>(
        p, gates.const_data_ptr<acc_t>(), fz, out.mutable_data_ptr<scalar_t>(), out.stride(0), out.stride(1),
        out.stride(2), begin, end);
  });
}

// Backward passes (1) and (2): fills the fusion convolution's gradients and returns
// the (B, T, 4, P) coefficient table of the GSM backward tasks.
template <typename scalar_t>
at::Tensor fuse_backward_coefficients(
    const GateShiftSizes& s,
    bool interleaved,
    const at::Tensor& grad_out,
    const at::Tensor& x,
    const at::Tensor& gates,
    const at::Tensor& fusion,
    const at::Tensor& weight,
    const at::Tensor& fuse_weight,
    at::Tensor& grad_fuse_weight,
    at::Tensor& grad_fuse_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const Problem<scalar_t> p =
      make_problem<scalar_t>(s, interleaved, x, weight, std::nullopt, std::nullopt, std::nullopt);
  const int64_t B = p.B, T = p.T, P = p.P, half = P / 2, HW = p.H * p.W;
  const auto acc_options = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor ds_table = at::empty({B, T, 1, P}, acc_options);
  acc_t* const ds = ds_table.mutable_data_ptr<acc_t>();
  const acc_t* const gt = gates.const_data_ptr<acc_t>();
  const acc_t* const fz = fusion.const_data_ptr<acc_t>();
  at::parallel_for(0, B * T * P, 16, [&](int64_t begin, int64_t end) {
    fusion_gradient_planes<scalar_t>(p, grad_out, gt, ds, begin, end);
  });
  // Through the sigmoid: ds = df * f (1 - f).
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < P; ++c) {
        const acc_t f = fz[table_index(b, t, 2, c, T, 3, P)];
        ds[table_index(b, t, 0, c, T, 1, P)] *= f * (acc_t(1) - f);
      }
    }
  }
  // The fusion convolution's parameter gradients, summed in a fixed order.
  std::vector<acc_t> dV(36, acc_t(0)), de(2, acc_t(0));
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
  std::copy(dV.begin(), dV.end(), grad_fuse_weight.mutable_data_ptr<acc_t>());
  std::copy(de.begin(), de.end(), grad_fuse_bias.mutable_data_ptr<acc_t>());
  // The means' gradients, through the transposed convolution, become per-element
  // offsets: dr = (1 - f) dz + drm / HW, dys = f dz + dym / HW.
  const std::vector<acc_t> V = to_acc_vector<acc_t>(fuse_weight);
  at::Tensor coef = at::empty({B, T, 4, P}, acc_options);
  acc_t* const cf = coef.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / P, c = bc % P;
      const int k = c < half ? 0 : 1;
      for (int64_t t = 0; t < T; ++t) {
        const acc_t f = fz[table_index(b, t, 2, c, T, 3, P)];
        const acc_t dym = fuse_image_grad(ds, T, P, b, k, 0, c - k * half, t, V.data());
        const acc_t drm = fuse_image_grad(ds, T, P, b, k, 1, c - k * half, t, V.data());
        cf[table_index(b, t, 0, c, T, 4, P)] = acc_t(1) - f;
        cf[table_index(b, t, 1, c, T, 4, P)] = drm / static_cast<acc_t>(HW);
        cf[table_index(b, t, 2, c, T, 4, P)] = f;
        cf[table_index(b, t, 3, c, T, 4, P)] = dym / static_cast<acc_t>(HW);
      }
    }
  });
  return coef;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gate_shift_fuse_forward_cpu(
    const at::Tensor& x_in,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    const at::Tensor& fuse_bias,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s =
      check_forward_args(x_in, weight, bias, bn_scale, bn_shift, channels, interleaved);
  check_fuse_args(x_in, fuse_weight, fuse_bias);
  const at::Tensor x = with_contiguous_planes(x_in);
  at::Tensor out = empty_output_like(x);
  const auto acc_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor gates = at::empty({s.batch, s.frames, 2, s.height, s.width}, acc_options);
  at::Tensor fusion = at::empty({s.batch, s.frames, 3, s.gated}, acc_options);
  if (x.numel() == 0) {
    return {out, gates, fusion};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_fuse_forward_cpu", [&] {
    fuse_forward<scalar_t>(s, interleaved, x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias, out, gates,
                           fusion);
  });
  return {out, gates, fusion};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gate_shift_fuse_backward_cpu(
    const at::Tensor& grad_out_in,
    const at::Tensor& x_in,
    const at::Tensor& gates_in,
    const at::Tensor& fusion_in,
    const at::Tensor& weight,
    const std::optional<at::Tensor>& bn_scale,
    const std::optional<at::Tensor>& bn_shift,
    const at::Tensor& fuse_weight,
    int64_t channels,
    bool interleaved) {
  const GateShiftSizes s = check_backward_args(
      grad_out_in, x_in, gates_in, weight, bn_scale, bn_shift, channels, interleaved);
  check_fuse_args(x_in, fuse_weight, std::nullopt);
  check_fusion_table(fusion_in, s, x_in);
  const at::Tensor x = with_contiguous_planes(x_in);
  const at::Tensor grad_out = with_contiguous_planes(grad_out_in);
  const at::Tensor gates = gates_in.contiguous(), fusion = fusion_in.contiguous();
  const auto acc_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor grad_fuse_weight = at::zeros({2, 2, 3, 3}, acc_options);
  at::Tensor grad_fuse_bias = at::zeros({2}, acc_options);
  at::Tensor coef;
  if (x.numel() != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "gate_shift_fuse_backward_cpu", [&] {
          coef = fuse_backward_coefficients<scalar_t>(
              s, interleaved, grad_out, x, gates, fusion, weight, fuse_weight, grad_fuse_weight, grad_fuse_bias);
        });
  }
  auto [grad_x, grad_weight, grad_bias, grad_scale, grad_shift] =
      gate_shift_backward_impl(grad_out, x, gates, weight, bn_scale, bn_shift, channels, interleaved, coef);
  return {grad_x, grad_weight, grad_bias, grad_scale, grad_shift,
          grad_fuse_weight.to(fuse_weight.scalar_type()), grad_fuse_bias.to(fuse_weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(gateshift, CPU, m) {
  m.impl("gate_shift_fuse_forward", &gate_shift_fuse_forward_cpu);
  m.impl("gate_shift_fuse_backward", &gate_shift_fuse_backward_cpu);
}

}  // namespace gateshift::cpu
