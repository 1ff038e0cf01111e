// The one header that device code and shared index helpers include to learn how
// they are being compiled: by nvcc as real CUDA, by the host compiler under the
// CPU execution emulator (tests only), or as plain host C++ (the CPU kernels).
#pragma once

#if defined(__CUDACC__)
#define GATESHIFT_HOST_DEVICE __host__ __device__
#elif defined(GATESHIFT_CUDA_EMULATION)
#include "emulator/cuda_emulation.h"
#define GATESHIFT_HOST_DEVICE
#else
#define GATESHIFT_HOST_DEVICE
#endif
