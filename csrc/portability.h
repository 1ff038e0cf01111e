// The one header that device code and shared index helpers include to learn how
// they are being compiled: by nvcc as real CUDA, by the host compiler under the
// CPU execution emulator (tests only), or as plain host C++ (the CPU kernels).
#pragma once

#if defined(__CUDACC__)

#define GATESHIFT_HOST_DEVICE __host__ __device__
#define GATESHIFT_DEVICE __device__ __forceinline__
#define GATESHIFT_GLOBAL __global__
// `extern __shared__` cannot be re-spelled by a plain macro in the emulator, and
// one untyped array avoids clashes between template instantiations.
#define GATESHIFT_DYNAMIC_SHARED(type, name)                               \
  extern __shared__ __align__(16) unsigned char gateshift_dynamic_shared[]; \
  type* name = reinterpret_cast<type*>(gateshift_dynamic_shared)

#elif defined(GATESHIFT_CUDA_EMULATION)

#include "emulator/cuda_emulation.h"
#define GATESHIFT_HOST_DEVICE
#define GATESHIFT_DEVICE inline
#define GATESHIFT_GLOBAL
#define GATESHIFT_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::gateshift::emulation::dynamic_shared_memory())

#else

#define GATESHIFT_HOST_DEVICE

#endif
