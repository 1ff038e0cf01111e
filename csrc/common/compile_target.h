// How the code including this header is being compiled, and the macros that
// depend on it. Three targets:
//
//  * nvcc, for GPUs: device code is real CUDA;
//  * the host compiler under the CPU execution emulator of the CUDA kernels
//    (tests only, GATESHIFT_CUDA_EMULATION): device code runs on emulated threads;
//  * the host compiler for the CPU kernels, which are built for several x86-64
//    instruction sets and pick the best at load time.
#pragma once

#if defined(__CUDACC__)

#define GATESHIFT_HOST_DEVICE __host__ __device__
#define GATESHIFT_DEVICE __device__ __forceinline__
#define GATESHIFT_GLOBAL __global__
// `extern __shared__` cannot be re-spelled by a plain macro in the emulator, and
// one untyped array avoids clashes between template instantiations.
#define GATESHIFT_DYNAMIC_SHARED(type, name)                               \
  extern __shared__ __align__(16) unsigned char gateshift_dynamic_shared[]; \
  ::gateshift::device_ptr<type> name = reinterpret_cast<type*>(gateshift_dynamic_shared)

#elif defined(GATESHIFT_CUDA_EMULATION)

#include "../emulator/counted_pointer.h"
#include "../emulator/runtime.h"
#define GATESHIFT_HOST_DEVICE
#define GATESHIFT_DEVICE inline
#define GATESHIFT_GLOBAL
#define GATESHIFT_DYNAMIC_SHARED(type, name)       \
  ::gateshift::device_ptr<type> name =             \
      reinterpret_cast<type*>(::gateshift::emulation::dynamic_shared_memory())

#else

#define GATESHIFT_HOST_DEVICE

#endif

// The pointers through which CUDA kernels reach global and shared memory: plain
// pointers, except under the emulator, whose counting pointers report every access
// while it counts them (emulator/counted_pointer.h).
namespace gateshift {
#if defined(GATESHIFT_CUDA_EMULATION) && !defined(__CUDACC__)
template <typename T>
using device_ptr = emulation::CountedPointer<T>;
#else
template <typename T>
using device_ptr = T*;
#endif
}  // namespace gateshift

// CPU kernels: compiled for AVX-512, AVX2 and baseline x86-64, the best one picked
// at load time (GCC function multiversioning), so the package runs everywhere
// without being built with -march=native. Elsewhere (other compilers, aarch64)
// the compiler's own target. GATESHIFT_CPU_NO_AVX512 (setup.py's environment
// variable of that name) leaves the AVX-512 clone out: for CPUs that slow their
// clock under AVX-512, and to measure the AVX2 code on an AVX-512 machine.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && defined(__x86_64__) && defined(__linux__)
#if defined(GATESHIFT_CPU_NO_AVX512)
#define GATESHIFT_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GATESHIFT_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#else
#define GATESHIFT_CPU_MULTIVERSION
#endif
#define GATESHIFT_ALWAYS_INLINE __attribute__((always_inline)) inline
// Lambdas are separate functions that target_clones does not clone: inline them.
#define GATESHIFT_INLINE_LAMBDA __attribute__((always_inline))
