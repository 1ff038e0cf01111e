// The small fusion step of Gate-Shift-Fuse (DESIGN.md section 2), shared by the
// CPU kernels, the CUDA kernels and their emulation.
//
// For each group k, the spatial means of the shifted part (ym) and the residual
// (rm) form a 2-channel image of height P/2 (the in-group channel c') and width T.
// A 3x3 convolution V_k with bias e_k and zero padding, then a sigmoid, gives the
// fusion weight f[b, k, c', t]:
//     s = e_k + sum_{ch, i, j} V_k[ch][i][j] * image_ch[c' + i - 1][t + j - 1]
//
// Tables are (B, T, M, P) in the accumulation type: `fusion` holds M = 3 rows
// (ym, rm, f) and the gradient tables M = 1 row (df or ds).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "compile_target.h"

namespace gateshift {

// Element (b, t, m, c) of a (B, T, M, P) table.
GATESHIFT_HOST_DEVICE inline int64_t table_index(int64_t b, int64_t t, int64_t m, int64_t c, int64_t T, int64_t M,
                                                 int64_t P) {
  return ((b * T + t) * M + m) * P + c;
}

// The fusion logit s of group k at in-group channel cq and frame t; `fusion` is
// the (B, T, 3, P) table with the means in rows 0 (ym) and 1 (rm). V is (2, 2, 3, 3).
// (Pointer and Weights: const acc_t*, or the CUDA kernels' device_ptr<const acc_t>.)
template <typename acc_t, typename Pointer, typename Weights>
GATESHIFT_HOST_DEVICE inline acc_t fuse_logit(Pointer fusion, int64_t T, int64_t P, int64_t b, int k,
                                              int64_t cq, int64_t t, Weights V, acc_t e) {
  const int64_t half = P / 2;
  acc_t s = e;
  for (int ch = 0; ch < 2; ++ch) {
    for (int i = 0; i < 3; ++i) {
      const int64_t c2 = cq + i - 1;
      if (c2 < 0 || c2 >= half) {
        continue;
      }
      for (int j = 0; j < 3; ++j) {
        const int64_t t2 = t + j - 1;
        if (t2 < 0 || t2 >= T) {
          continue;
        }
        s += V[((k * 2 + ch) * 3 + i) * 3 + j] * fusion[table_index(b, t2, ch, k * half + c2, T, 3, P)];
      }
    }
  }
  return s;
}

// The transposed convolution: d image_ch at (c2, t2) of group k from ds, the
// (B, T, 1, P) table of the logits' gradient.
template <typename Pointer, typename Weights,
          typename acc_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<Weights>()[0])>>>
GATESHIFT_HOST_DEVICE inline acc_t fuse_image_grad(Pointer ds, int64_t T, int64_t P, int64_t b, int k, int ch,
                                                   int64_t c2, int64_t t2, Weights V) {
  const int64_t half = P / 2;
  acc_t g = acc_t(0);
  for (int i = 0; i < 3; ++i) {
    const int64_t cq = c2 - i + 1;
    if (cq < 0 || cq >= half) {
      continue;
    }
    for (int j = 0; j < 3; ++j) {
      const int64_t t = t2 - j + 1;
      if (t < 0 || t >= T) {
        continue;
      }
      g += V[((k * 2 + ch) * 3 + i) * 3 + j] * ds[table_index(b, t, 0, k * half + cq, T, 1, P)];
    }
  }
  return g;
}

// The contribution of clip b to the gradient of V_k[ch][i][j]: the sum over (c', t)
// of ds * image_ch[c' + i - 1][t + j - 1], in a fixed order.
template <typename acc_t>
GATESHIFT_HOST_DEVICE inline acc_t fuse_weight_grad(const acc_t* ds, const acc_t* fusion, int64_t T, int64_t P,
                                                    int64_t b, int k, int ch, int i, int j) {
  const int64_t half = P / 2;
  acc_t g = acc_t(0);
  for (int64_t cq = 0; cq < half; ++cq) {
    const int64_t c2 = cq + i - 1;
    if (c2 < 0 || c2 >= half) {
      continue;
    }
    for (int64_t t = 0; t < T; ++t) {
      const int64_t t2 = t + j - 1;
      if (t2 < 0 || t2 >= T) {
        continue;
      }
      g += ds[table_index(b, t, 0, k * half + cq, T, 1, P)] * fusion[table_index(b, t2, ch, k * half + c2, T, 3, P)];
    }
  }
  return g;
}

}  // namespace gateshift
