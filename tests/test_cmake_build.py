"""The CMake build of csrc/ (see CMakeLists.txt) produces a working op library.

CI builds it and sets GATESHIFT_CMAKE_LIBRARY to the result. The library is
loaded in a fresh interpreter, because the ops of gateshift._C (imported by the
other tests) cannot be registered twice in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = os.environ.get("GATESHIFT_CMAKE_LIBRARY")
REFERENCE = Path(__file__).resolve().parents[1] / "gateshift" / "reference.py"

CHECK = r"""
import importlib.util, sys, torch
torch.ops.load_library(sys.argv[1])
spec = importlib.util.spec_from_file_location("reference", sys.argv[2])
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
g = torch.Generator().manual_seed(int(sys.argv[3]))
x = torch.randn(2, 4, 8, 5, 6, generator=g, dtype=torch.float64)
w = torch.randn(2, 4, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3
b, s, h = (torch.randn(n, generator=g, dtype=torch.float64) for n in (2, 8, 8))
out, gates = torch.ops.gateshift.gate_shift_forward(x, w, b, s, h, 8, True)
expected = reference.gate_shift(x.flatten(0, 1), w, b, num_segments=4, bn_scale=s, bn_shift=h)
torch.testing.assert_close(out.flatten(0, 1), expected)
mean, var = torch.ops.gateshift.batch_stats(x, 8)
torch.testing.assert_close(var, x.var(dim=(0, 1, 3, 4), correction=0))
if sys.argv[4] == "1":
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gateshift::gate_shift_forward", "CUDA"), "no CUDA kernels"
print("ok")
"""
# CI builds the CMake library with GATESHIFT_WITH_CUDA=ON and says so here.
WITH_CUDA = os.environ.get("GATESHIFT_CMAKE_WITH_CUDA", "0")


@pytest.mark.skipif(LIBRARY is None, reason="GATESHIFT_CMAKE_LIBRARY not set (CI sets it after the CMake build)")
def test_cmake_library_loads_and_computes(gen):
    seed = str(gen.initial_seed())
    run = subprocess.run(
        [sys.executable, "-c", CHECK, LIBRARY, str(REFERENCE), seed, WITH_CUDA],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
