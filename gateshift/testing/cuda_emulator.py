"""gateshift's CUDA kernels, executed on the CPU by an emulator.

The device code of ``csrc/cuda/*.cuh`` is compiled by the host compiler under a
small emulation layer (``csrc/emulator``): every block's threads run as real
concurrent threads with real ``__syncthreads`` barriers, per-block shared memory
and warp shuffles, launched with the configuration the real launcher computes.
Inputs are copied into NaN-guarded buffers, outputs are NaN-poisoned inside
guard margins that are checked after every launch.

:func:`gate_shift` has the signature of :func:`gateshift.gate_shift` and its
autograd runs the emulated backward kernels: it is how the CUDA kernels are
tested on machines without a GPU. It takes CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch

from .. import _cuda_emulator  # noqa: F401  (registers torch.ops.gateshift_emulated)
from .._ops import register_fake_and_autograd
from ..functional import gate_shift_fuse_with, gate_shift_with, temporal_shift_with

__all__ = ["gate_shift", "gate_shift_fuse", "temporal_shift", "ops", "set_num_sms", "num_sms"]

register_fake_and_autograd("gateshift_emulated")
ops = torch.ops.gateshift_emulated


def gate_shift(x, weight, bias=None, **kwargs):
    """:func:`gateshift.gate_shift`, computed by the emulated CUDA kernels (CPU tensors)."""
    return gate_shift_with(ops.gate_shift_forward, x, weight, bias, **kwargs)


def gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **kwargs):
    """:func:`gateshift.gate_shift_fuse`, computed by the emulated CUDA kernels (CPU tensors)."""
    return gate_shift_fuse_with(ops.gate_shift_fuse_forward, x, weight, bias, fuse_weight, fuse_bias, **kwargs)


def temporal_shift(x, num_segments=None, fold_div=8, **kwargs):
    """:func:`gateshift.temporal_shift`, computed by the emulated CUDA kernel (CPU tensors)."""
    return temporal_shift_with(ops.temporal_shift, x, num_segments, fold_div, **kwargs)


def set_num_sms(count: int) -> int:
    """Sets the multiprocessor count the emulated launch configuration sees; returns the old one.

    Fewer SMs than blocks of a problem keep whole clips per block; more make the
    launch configuration cut clips into runs of frames (as on a large GPU with a
    small batch).
    """
    return int(ops.set_num_sms(count))


@contextlib.contextmanager
def num_sms(count: int):
    """``with num_sms(n):`` runs the emulated launches as on a device with ``n`` SMs."""
    previous = set_num_sms(count)
    try:
        yield
    finally:
        set_num_sms(previous)
