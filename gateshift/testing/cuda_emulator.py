"""gateshift's CUDA kernels, executed on the CPU by an emulator.

The device code of ``csrc/cuda/*.cuh`` is compiled by the host compiler under a
small emulation layer (``csrc/emulator``): every block's threads run as real
concurrent threads with real ``__syncthreads`` barriers, per-block shared memory
and warp shuffles, launched with the configuration the real launcher computes.
Inputs are copied into NaN-guarded buffers, outputs are NaN-poisoned inside
guard margins that are checked after every launch.

:func:`gate_shift`, :func:`gate_shift_fuse` and :func:`temporal_shift` have the
signatures of the public functions, and their autograd runs the emulated backward
kernels: it is how the CUDA kernels are tested on machines without a GPU. They
take CPU tensors. (``gateshift.testing.implementations`` has the same as its
``"cuda_emulator"`` implementation.)
"""

from __future__ import annotations

import contextlib
import os

import torch

from .. import functional
from .._ops import register_fake_and_autograd

__all__ = [
    "gate_shift", "gate_shift_fuse", "temporal_shift", "ops", "set_num_sms", "num_sms", "min_partials_bytes",
    "block_schedule", "architecture", "record_launches", "BLOCK_SCHEDULES",
]

# How a launch runs its blocks (csrc/emulator/runtime.h): in grid order, one at a time
# in a random order, or two at a time in a random order.
BLOCK_SCHEDULES = ("in_order", "shuffled", "concurrent")

# GATESHIFT_EMULATOR_LIBRARY: a rebuilt emulator library to load instead of the
# installed one (tools/emulator_mutants.py runs the tests on deliberately broken kernels).
if os.environ.get("GATESHIFT_EMULATOR_LIBRARY"):
    torch.ops.load_library(os.environ["GATESHIFT_EMULATOR_LIBRARY"])
else:
    from .. import _cuda_emulator  # noqa: F401  (registers torch.ops.gateshift_emulated)

register_fake_and_autograd("gateshift_emulated", pixel_major_frames=False)  # copied, as on CUDA
ops = torch.ops.gateshift_emulated


def gate_shift(x, weight, bias=None, **kwargs):
    """:func:`gateshift.gate_shift`, computed by the emulated CUDA kernels (CPU tensors)."""
    return functional._gate_shift(ops, x, weight, bias, **kwargs)


def gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **kwargs):
    """:func:`gateshift.gate_shift_fuse`, computed by the emulated CUDA kernels (CPU tensors)."""
    return functional._gate_shift_fuse(ops, x, weight, bias, fuse_weight, fuse_bias, **kwargs)


def temporal_shift(x, num_segments=None, fold_div=8, **kwargs):
    """:func:`gateshift.temporal_shift`, computed by the emulated CUDA kernel (CPU tensors)."""
    return functional._temporal_shift(ops, x, num_segments, fold_div, **kwargs)


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


@contextlib.contextmanager
def min_partials_bytes(count: int):
    """``with min_partials_bytes(n):`` lets the backward's parameter-gradient partials
    always take only ``n`` bytes (2 MB on a GPU) beyond half of x, so that backward
    blocks take several clips even on a small problem (csrc/cuda/launch_config.h)."""
    previous = int(ops.set_min_partials_bytes(count))
    try:
        yield
    finally:
        ops.set_min_partials_bytes(previous)


@contextlib.contextmanager
def block_schedule(schedule: str, seed: int = 0):
    """``with block_schedule("concurrent", seed):`` runs the emulated launches' blocks in
    a random order drawn from ``seed`` (``"shuffled"``: one block at a time; ``"concurrent"``:
    two at a time, as a GPU runs several), instead of in grid order (``"in_order"``). A
    kernel whose results depend on the blocks' order or that races between blocks gives
    other results than in grid order."""
    if schedule not in BLOCK_SCHEDULES:
        raise ValueError(f"schedule must be one of {BLOCK_SCHEDULES}, got {schedule!r}")
    previous = int(ops.set_block_schedule(BLOCK_SCHEDULES.index(schedule), seed))
    try:
        yield
    finally:
        ops.set_block_schedule(previous, 0)


@contextlib.contextmanager
def architecture(sm: int):
    """``with architecture(90):`` checks the emulated launches' shared memory against the
    opt-in maximum of compute capability ``sm`` (80, 86, 89 or 90) instead of sm_86's,
    the strictest of the architectures the package is built for."""
    previous = int(ops.set_architecture(sm))
    try:
        yield
    finally:
        ops.set_architecture(previous)


# The fields of a launch record (csrc/emulator/runtime.h, LaunchRecord), after the kernel's name.
_RECORD_FIELDS = ("blocks", "threads", "shared_bytes", "barriers", "shuffles")
_COUNT_FIELDS = ("sampled_blocks", "global_requests", "global_sectors", "unique_global_bytes", "shared_requests",
                 "shared_wavefronts", "grid_unique_global_bytes")


@contextlib.contextmanager
def record_launches(count_accesses: bool = False, sample_blocks: int | None = None):
    """``with record_launches() as launches:`` fills ``launches``, on leaving the block,
    with a dict per emulated launch in it: ``kernel`` (name and template arguments),
    ``blocks``, ``threads`` (per block), ``shared_bytes`` (dynamic, per block),
    ``barriers`` (``__syncthreads()`` completed, summed over blocks) and ``shuffles``
    (warp-wide shuffles, summed over warps). Counts of what ran, not timings.

    With ``count_accesses=True`` every global and shared memory access of the kernels
    is counted as a GPU issues it, per warp: ``global_requests`` and the 32-byte
    ``global_sectors`` they move, ``unique_global_bytes`` (32 bytes per distinct sector
    touched: the compulsory DRAM traffic), ``grid_unique_global_bytes`` (the same for the
    whole grid, estimated from the blocks that ran: per tensor of the op, its sampled
    distinct sectors scaled to the grid, at most the tensor's own), ``shared_requests`` and their
    ``shared_wavefronts`` (bank conflicts counted exactly), and ``reuse_log2_bytes``: the
    global sectors requested again, by reuse distance within their block (entry 0:
    distance 0; entry k: [2**(k-1), 2**k) bytes of sectors first touched in between, a
    lower bound of the LRU stack distance). ``sample_blocks=n`` then
    runs only n blocks (and at least 1 in 256) of each larger launch, in runs of up to 4
    consecutive blocks (neighbouring tiles), one at a fixed pseudo-random place in each of
    as many equal parts of its grid; the other
    blocks' outputs are left unwritten (for a model, not for results). Every count,
    barriers and shuffles included, is of the ``sampled_blocks`` that ran.
    """
    if sample_blocks is not None and (not count_accesses or sample_blocks < 1):
        raise ValueError(f"sample_blocks must be a positive count and needs count_accesses=True, got {sample_blocks!r}")
    launches: list[dict] = []
    ops.record_launches(True, (sample_blocks or 0) if count_accesses else -1)
    try:
        yield launches
    finally:
        text = ops.record_launches(False)
        for line in text.splitlines():
            kernel, *numbers, reuse = line.split("\t")
            values = dict(zip(_RECORD_FIELDS + _COUNT_FIELDS, map(int, numbers)))
            record = dict(kernel=kernel, **{k: values[k] for k in _RECORD_FIELDS})
            if count_accesses:
                record.update({k: values[k] for k in _COUNT_FIELDS})
                record["reuse_log2_bytes"] = [int(v) for v in reuse.split(",")]
                record["sampled_blocks"] = record["sampled_blocks"] or record["blocks"]
            launches.append(record)
