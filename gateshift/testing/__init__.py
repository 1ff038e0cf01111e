"""Testing utilities of gateshift: the CPU emulator of the CUDA kernels."""
