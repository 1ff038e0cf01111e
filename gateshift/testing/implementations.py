"""The implementations of gateshift's ops that tests and ``gateshift-check`` compare
with the reference: the CPU kernels, the CUDA kernels run on the CPU by the emulator,
and the CUDA kernels on a GPU.

Each :class:`Implementation` calls the same Python entry points as the public API
(:func:`gateshift.gate_shift`, ...) on its own op library, and says on which device
its tensors live, so that one test body serves all three (as torchvision's op
testers parametrise over devices)::

    @pytest.mark.parametrize("impl", ["cpu", "cuda_emulator", "cuda"])
    def test_something(impl):
        impl = implementation(impl)
        out = impl.gate_shift(x.to(impl.device), ...)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import Tensor

from .. import functional

NAMES = ("cpu", "cuda_emulator", "cuda")


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation: its name, its op library and the device of its tensors."""

    name: str
    ops: Any  # torch.ops.gateshift or torch.ops.gateshift_emulated
    device: str

    def gate_shift(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, **kwargs) -> Tensor:
        """:func:`gateshift.gate_shift` on this implementation's kernels."""
        return functional._gate_shift(self.ops, x, weight, bias, **kwargs)

    def gate_shift_fuse(self, x, weight, bias, fuse_weight, fuse_bias, **kwargs) -> Tensor:
        """:func:`gateshift.gate_shift_fuse` on this implementation's kernels."""
        return functional._gate_shift_fuse(self.ops, x, weight, bias, fuse_weight, fuse_bias, **kwargs)

    def temporal_shift(self, x: Tensor, num_segments: int | None = None, fold_div: int = 8, **kwargs) -> Tensor:
        """:func:`gateshift.temporal_shift` on this implementation's kernels."""
        return functional._temporal_shift(self.ops, x, num_segments, fold_div, **kwargs)

    def batch_stats(self, x5: Tensor, channels: int) -> tuple[Tensor, Tensor]:
        """The per-channel batch mean and biased variance of ``x5`` ``(B, T, C, H, W)``."""
        return self.ops.batch_stats(x5, channels)

    def to(self, t: Tensor | None) -> Tensor | None:
        """``t`` on this implementation's device (``None`` stays ``None``)."""
        return None if t is None else t.to(self.device)


@functools.cache
def implementation(name: str) -> Implementation:
    """The implementation called ``name``: ``"cpu"``, ``"cuda_emulator"`` or ``"cuda"``."""
    if name == "cpu":
        return Implementation("cpu", torch.ops.gateshift, "cpu")
    if name == "cuda":
        return Implementation("cuda", torch.ops.gateshift, "cuda")
    if name == "cuda_emulator":
        from . import cuda_emulator  # builds nothing: loads the emulated library

        return Implementation("cuda_emulator", cuda_emulator.ops, "cpu")
    raise ValueError(f"unknown implementation {name!r}; choose from {NAMES}")
