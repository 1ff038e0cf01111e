"""The extra memory of the fused ops stays a bounded fraction of x, whatever the shape:

* the CPU kernels tile planes too large for a thread's scratch (one 1 x 4M plane,
  say) and give the same results, tiled or not;
* the parameter-gradient partials of backward (per group of frames on the CPU, per
  block on CUDA) are bounded by a fraction of x: the CUDA backward gives each block
  several clips when there are many small ones;
* measured: the peak resident memory of a forward and backward, in a fresh process,
  minus what the outputs and gradients themselves hold, is at most half of x on the
  shapes that used to take 2 GB (+1.96 GB of partials, 16 scratch planes of 4M).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch
from helpers import Case, assert_close_to_reference, forward_and_backward, fuse_inputs, restored_after_test

import gateshift
from gateshift import reference
from gateshift.testing import cuda_emulator


@pytest.fixture
def cpu_scratch_limit():
    """Sets the bytes of scratch a CPU thread may hold (0: the default rule) for one test."""
    yield from restored_after_test(torch.ops.gateshift._set_cpu_scratch_limit)


# Limits from a single scratch float per plane (1 x 1 tiles) to row bands and squares.
@pytest.mark.parametrize("limit", [1, 14 * 4 * 30, 14 * 4 * 100, 14 * 4 * 400])
@pytest.mark.parametrize("op", ["gate_shift", "gate_shift_fuse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiled_cpu_planes_match_the_reference(op, limit, dtype, cpu_scratch_limit, gen):
    case = Case(2, 3, 8, 13, 29)
    inputs = fuse_inputs(case, gen)
    grad_out = torch.randn(case.B * case.T, case.C, case.H, case.W, generator=gen, dtype=torch.float64)
    expected = forward_and_backward(reference, op, case, inputs, grad_out)
    cpu_scratch_limit(limit)
    got = forward_and_backward(gateshift, op, case, [t.to(dtype) for t in inputs], grad_out.to(dtype))
    for name, a, b in zip(("out", "x", "weight", "bias", "bn_scale", "bn_shift", "fuse_weight", "fuse_bias"),
                          got, expected):
        assert_close_to_reference(a, b, what=f"{name} (limit {limit} B)")


def test_tiles_do_not_change_a_bit_of_float64_results(cpu_scratch_limit, gen):
    # Every sum keeps its order across tiles: the untiled and tiled float64 results are
    # equal to the last rounding of the tile seams, and the default rule is one tile here.
    case = Case(1, 4, 8, 9, 11)
    inputs = fuse_inputs(case, gen)
    grad_out = torch.randn(case.B * case.T, case.C, case.H, case.W, generator=gen, dtype=torch.float64)
    whole = forward_and_backward(gateshift, "gate_shift", case, inputs, grad_out)
    cpu_scratch_limit(14 * 8 * 25)
    tiled = forward_and_backward(gateshift, "gate_shift", case, inputs, grad_out)
    torch.testing.assert_close(tiled[0], whole[0], rtol=0, atol=0)  # the forward: no sum crosses tiles
    torch.testing.assert_close(tiled, whole, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op", ["gate_shift", "gate_shift_fuse"])
@pytest.mark.parametrize("num_sms", [1, 4])
def test_cuda_backward_with_several_clips_per_block(op, num_sms, gen):
    # min_partials_bytes(0): the partials may take only half of x, so each block reduces
    # several clips (many small clips, as a batch of 1x1 planes).
    case = Case(7, 2, 8, 2, 3)
    inputs = fuse_inputs(case, gen)
    grad_out = torch.randn(case.B * case.T, case.C, case.H, case.W, generator=gen, dtype=torch.float64)
    expected = forward_and_backward(reference, op, case, inputs, grad_out)
    with cuda_emulator.min_partials_bytes(0), cuda_emulator.num_sms(num_sms):
        got = forward_and_backward(cuda_emulator, op, case, [t.float() for t in inputs], grad_out.float())
    for a, b in zip(got, expected):
        assert_close_to_reference(a, b, what=op)


PEAK_MEMORY = pathlib.Path(__file__).resolve().parents[1] / "tools" / "peak_memory.py"


# GSF's per-(frame, channel) tables (the fusion weights saved for backward, and the
# backward's coefficients) are 8 / (H*W) of x in float32: small next to x for real planes,
# 8x x for 1x1 planes. That shape is measured for GSM only.
@pytest.mark.parametrize(
    "op,shape",
    [
        ("gate_shift", (1, 1, 8, 1, 2**22)),  # one 4M plane: 16 scratch planes of 4M floats, 2.1 GB, before tiling
        ("gate_shift_fuse", (1, 1, 8, 1, 2**22)),
        ("gate_shift", (4096, 8, 512, 1, 1)),  # 32768 1x1 frames: +331 MB of partials before grouping
    ],
    ids=str,
)
def test_extra_cpu_memory_is_at_most_half_of_x(op, shape):
    result = subprocess.run([sys.executable, str(PEAK_MEMORY), op, *map(str, shape)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    slack = 32 << 20  # allocator and thread-pool overhead, whatever the shape
    extra, x = measured["extra_bytes"], measured["x_bytes"]
    assert extra <= x // 2 + slack, f"{op}{shape}: {extra / 2**20:.0f} MB beyond the results for a {x / 2**20:.0f} MB x"
