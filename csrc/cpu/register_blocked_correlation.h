// The gate convolution's inner loops on the CPU, register-blocked.
//
// Forward (correlate_channels): a chunk of input channels of one frame into up to
// three gate frames at once. For the NT gate frames m that input frame s feeds
// (tap i_m = s - tg_m + 1):
//     acc_m[o] += sum_{c in chunk} sum_{jj, ll} w_m[c][3 * jj + ll] * u_c[o + jj * Wp + ll]
// over the flat strided loop o in [0, n) of gate_shift_kernel.h's plane layout.
// A loop over one channel at a time reads and writes the NT accumulator planes for
// every channel (3 loads and 3 stores per 27 FMAs) and leaves each vector's 27 FMAs
// in three dependent chains. Here a strip of V vectors of every target stays in
// registers for the whole chunk: each loaded input vector feeds NT FMAs, each
// broadcast weight feeds V, and the 3 * V accumulators are independent chains
// (enough to keep two FMA pipes busy at 4 cycles' latency).
//
// Backward (correlate_backward): one channel and one da frame, the transposed
// convolution and the weight gradient in one pass over da:
//     du[o]  += sum_m kf[m] * da[o + off(m)],   dkf[m] += sum_o u[o] * da[o + off(m)]
// with off(m) = (m / 3) * Wp + m % 3. Each da vector is loaded once for its two
// FMAs, and the nine weight-gradient sums stay in vector registers over the loop.
//
// Loads. x86 FMAs take a memory operand, and GCC folds a load into every FMA that
// uses it: NT (or 2) times the loads, most split across cache lines (taps 1 and 2
// of a row are 4 and 8 bytes off), which made the loops bound by loads at about
// half their FMA rate. A compiler fence after the loads stops that: memory may have
// changed after it, so the loaded values are reused.
//
// Vector shapes. GCC/Clang vector extensions, so the code is portable (x86, aarch64)
// and the compiler keeps it in registers: 64-byte vectors where the CPU has 32
// vector registers of 512 bits; 32-byte vectors on AVX2's 16 registers; 16-byte
// vectors elsewhere (NEON's 32). Every output's sum runs in the same order for
// every shape (forward: channels, then taps; weight gradient: o in order per lane,
// then the lanes in a fixed tree, sum_of_lanes), which depends on the CPU's vector
// width but never on threads.

#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/compile_target.h"

namespace gateshift::cpu {

// A vector of `bytes` bytes of acc_t, with unaligned loads and stores.
template <typename acc_t, int bytes>
struct SimdOf {
  // The integer type of acc_t's size (shuffle masks).
  using index_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;
  typedef acc_t type __attribute__((vector_size(bytes)));
  static constexpr int kLanes = bytes / int(sizeof(acc_t));
  static GATESHIFT_ALWAYS_INLINE type load(const acc_t* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static GATESHIFT_ALWAYS_INLINE void store(acc_t* p, type v) {
    std::memcpy(p, &v, sizeof(v));
  }
  static GATESHIFT_ALWAYS_INLINE type splat(acc_t s) {
#if defined(__clang__)
    return s - type{};  // s - 0 is s for every s, -0 included: one broadcast
#else
    // GCC expands `s - type{}` lane by lane in large functions; a shuffle of lane 0
    // is always one broadcast.
    typedef index_t mask __attribute__((vector_size(bytes)));
    return __builtin_shuffle(type{s}, mask{});
#endif
  }
};

// One strip of V vectors at o: accumulators loaded from the targets, the chunk's
// channels added in order, stored back.
template <typename Simd, int V, int NT, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_strip(
    const acc_t* __restrict u,
    int64_t plane_stride,
    int64_t channels,
    int64_t Wp,
    const acc_t* const* weights,
    acc_t* const* targets,
    int64_t o) {
  using vec = typename Simd::type;
  constexpr int L = Simd::kLanes;
  vec acc[NT][V];
  for (int m = 0; m < NT; ++m) {
    for (int v = 0; v < V; ++v) {
      acc[m][v] = Simd::load(targets[m] + o + v * L);
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t* uc = u + c * plane_stride + o;
    const acc_t* w[NT];
    for (int m = 0; m < NT; ++m) {
      w[m] = weights[m] + c * 27;  // (P/2, 27) per group: channels 27 apart
    }
#pragma GCC unroll 3
    for (int jj = 0; jj < 3; ++jj) {
#pragma GCC unroll 3
      for (int ll = 0; ll < 3; ++ll) {
        const acc_t* at = uc + jj * Wp + ll;
        vec in[V];
        for (int v = 0; v < V; ++v) {
          in[v] = Simd::load(at + v * L);
        }
        std::atomic_signal_fence(std::memory_order_seq_cst);  // loaded once (see the top)
        for (int m = 0; m < NT; ++m) {
          const vec wv = Simd::splat(w[m][3 * jj + ll]);
          for (int v = 0; v < V; ++v) {
            acc[m][v] += wv * in[v];
          }
        }
      }
    }
  }
  for (int m = 0; m < NT; ++m) {
    for (int v = 0; v < V; ++v) {
      Simd::store(targets[m] + o + v * L, acc[m][v]);
    }
  }
}

// The whole loop: strips of V vectors, then single vectors. n must be a multiple
// of the vector's lanes (the plane layout rounds it to 16 elements).
template <int bytes, int V, int NT, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_channels_shaped(
    const acc_t* u, int64_t plane_stride, int64_t channels, int64_t Wp, int64_t n,
    const acc_t* const* weights, acc_t* const* targets) {
  using Simd = SimdOf<acc_t, bytes>;
  constexpr int64_t strip = int64_t(Simd::kLanes) * V;
  int64_t o = 0;
  for (; o + strip <= n; o += strip) {
    correlate_strip<Simd, V, NT>(u, plane_stride, channels, Wp, weights, targets, o);
  }
  for (; o < n; o += Simd::kLanes) {
    correlate_strip<Simd, 1, NT>(u, plane_stride, channels, Wp, weights, targets, o);
  }
}

// Which vector shape this CPU's registers suit (see the note at the top).
enum class VectorShape { k512x32, k256x16, k128x32 };

inline VectorShape native_vector_shape() {
#if defined(__x86_64__) && defined(__GNUC__)
#if defined(GATESHIFT_CPU_NO_AVX512)  // no AVX-512 clone was built (compile_target.h)
  static const bool avx512 = false;
#else
  static const bool avx512 = __builtin_cpu_supports("avx512f");
#endif
  static const VectorShape shape = avx512
      ? VectorShape::k512x32
      : (__builtin_cpu_supports("avx2") ? VectorShape::k256x16 : VectorShape::k128x32);
  return shape;
#else
  return VectorShape::k128x32;
#endif
}

// Test-only: the shape the kernels use instead of native_vector_shape(), -1 for none.
// Set by gateshift::_set_cpu_vector_bits (gate_shift.cpp), so that one machine's tests
// run every shape's loops (the vector types are the compiler's: a shape wider than the
// CPU's registers compiles to several narrower instructions, slower but exact).
inline std::atomic<int> vector_shape_override{-1};

inline VectorShape cpu_vector_shape() {
  const int forced = vector_shape_override.load(std::memory_order_relaxed);
  return forced < 0 ? native_vector_shape() : static_cast<VectorShape>(forced);
}

// The widest vector, in bytes, that loops may use on a CPU of `shape`. Generic vectors
// wider than the registers compile, but not always to a few narrower instructions: in
// the AVX2 clone GCC built a 64-byte vector's compare (the gate input's ReLU) lane by
// lane through the stack, which took three quarters of the forward on an AVX2-only CPU.
inline int widest_vector_bytes(VectorShape shape) {
  switch (shape) {
    case VectorShape::k512x32:
      return 64;
    case VectorShape::k256x16:
      return 32;
    default:
      return 16;
  }
}

// acc_m[o] += the chunk's correlation (the note at the top), for the NT targets m:
// u holds `channels` zero-padded planes plane_stride apart; weights[m] is the first
// channel's 3x3 kernel of target m's frame tap.
template <int NT, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_channels(
    VectorShape shape, const acc_t* u, int64_t plane_stride, int64_t channels, int64_t Wp, int64_t n,
    const acc_t* const* weights, acc_t* const* targets) {
  switch (shape) {
    case VectorShape::k512x32:
      correlate_channels_shaped<64, 4, NT>(u, plane_stride, channels, Wp, n, weights, targets);
      break;
    case VectorShape::k256x16:
      correlate_channels_shaped<32, 3, NT>(u, plane_stride, channels, Wp, n, weights, targets);
      break;
    default:
      correlate_channels_shaped<16, 4, NT>(u, plane_stride, channels, Wp, n, weights, targets);
      break;
  }
}

// The sum of v's lanes by halving: the upper half added to the lower until 16 bytes
// are left, then those lanes pairwise. One order for each vector width, whatever the
// thread count. Two instructions a halving (an extract and an add): adding the lanes
// one by one took two a lane, and on 7x7 planes, where a channel's plane is four
// 512-bit vectors, the nine sums of a call cost more than its 72 FMAs.
template <typename acc_t, int bytes>
GATESHIFT_ALWAYS_INLINE acc_t sum_of_lanes(typename SimdOf<acc_t, bytes>::type v) {
  if constexpr (bytes > 16) {
    using Half = SimdOf<acc_t, bytes / 2>;
    typename Half::type low, high;
    std::memcpy(&low, &v, sizeof(low));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(low), sizeof(high));
    return sum_of_lanes<acc_t, bytes / 2>(low + high);
  } else if constexpr (SimdOf<acc_t, bytes>::kLanes == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    acc_t sum = 0;
    for (int lane = 0; lane < SimdOf<acc_t, bytes>::kLanes; ++lane) {
      sum += v[lane];
    }
    return sum;
  }
}

// The backward pass over strips of V vectors at o, then single vectors; s[m]
// collects the weight gradient of tap m lane by lane.
template <typename Simd, int V, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_backward_strip(
    const acc_t* __restrict da,
    int64_t Wp,
    const acc_t* kernel_flipped,
    const acc_t* __restrict u,
    acc_t* __restrict du,
    typename Simd::type* s,
    int64_t o) {
  using vec = typename Simd::type;
  constexpr int L = Simd::kLanes;
  vec d[V], uu[V];
  for (int v = 0; v < V; ++v) {
    d[v] = Simd::load(du + o + v * L);
    uu[v] = Simd::load(u + o + v * L);
  }
#pragma GCC unroll 3
  for (int jj = 0; jj < 3; ++jj) {
#pragma GCC unroll 3
    for (int ll = 0; ll < 3; ++ll) {
      const int m = 3 * jj + ll;
      const acc_t* at = da + o + jj * Wp + ll;
      vec a[V];
      for (int v = 0; v < V; ++v) {
        a[v] = Simd::load(at + v * L);
      }
      std::atomic_signal_fence(std::memory_order_seq_cst);  // loaded once (see the top)
      const vec k = Simd::splat(kernel_flipped[m]);
      for (int v = 0; v < V; ++v) {
        d[v] += k * a[v];
        s[m] += uu[v] * a[v];
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    Simd::store(du + o + v * L, d[v]);
  }
}

template <int bytes, int V, typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_backward_shaped(
    const acc_t* da, int64_t Wp, int64_t n, const acc_t* kernel_flipped, const acc_t* u, acc_t* du, acc_t* dkf) {
  using Simd = SimdOf<acc_t, bytes>;
  using vec = typename Simd::type;
  constexpr int64_t strip = int64_t(Simd::kLanes) * V;
  vec s[9];
  for (auto& v : s) {
    v = Simd::splat(acc_t(0));
  }
  int64_t o = 0;
  for (; o + strip <= n; o += strip) {
    correlate_backward_strip<Simd, V>(da, Wp, kernel_flipped, u, du, s, o);
  }
  for (; o < n; o += Simd::kLanes) {
    correlate_backward_strip<Simd, 1>(da, Wp, kernel_flipped, u, du, s, o);
  }
  for (int m = 0; m < 9; ++m) {
    dkf[m] += sum_of_lanes<acc_t, bytes>(s[m]);
  }
}

// du[o] += the transposed convolution of da, dkf[m] += the weight gradient (the
// note at the top) for one channel and da frame. u must be zero on the junk
// columns; n a multiple of 16.
template <typename acc_t>
GATESHIFT_ALWAYS_INLINE void correlate_backward(
    VectorShape shape, const acc_t* da, int64_t Wp, int64_t n, const acc_t* kernel_flipped, const acc_t* u,
    acc_t* du, acc_t* dkf) {
  switch (shape) {
    case VectorShape::k512x32:  // 9 sums, 3 x 4 strip vectors, 1 weight: 22 of 32 registers
      correlate_backward_shaped<64, 4>(da, Wp, n, kernel_flipped, u, du, dkf);
      break;
    case VectorShape::k256x16:  // 9 sums, 3 x 2, 1: 16 of 16
      correlate_backward_shaped<32, 2>(da, Wp, n, kernel_flipped, u, du, dkf);
      break;
    default:
      correlate_backward_shaped<16, 4>(da, Wp, n, kernel_flipped, u, du, dkf);
      break;
  }
}

}  // namespace gateshift::cpu
