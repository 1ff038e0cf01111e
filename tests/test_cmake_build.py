"""The CMake build of csrc/ (see CMakeLists.txt) produces a working op library, and
AOTInductor packages that call the ops run on it, from Python and from C++.

CI builds it and sets GATESHIFT_CMAKE_LIBRARY to the result (and GATESHIFT_AOTI_RUNNER to
the C++ runner, examples/cpp/aoti_run.cpp). The library is
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


LOAD_PACKAGE = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])  # the CMake-built library registers the ops; gateshift is not imported
model = torch._inductor.aoti_load_package(sys.argv[2])
for x, expected in torch.load(sys.argv[3]):
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
assert "gateshift" not in sys.modules
print("ok")
"""


def gsm_package(tmp_path, gen):
    """An AOTInductor package of a small GSM network (dynamic clip count, T = 4), built in
    this process, and (input, output) pairs of 1 and 3 clips computed in eager."""
    import torch

    import gateshift
    from gateshift.tsn import TSNResNet

    net = TSNResNet(gateshift.GSM, num_segments=4, num_classes=3, widths=(8, 16), stem_channels=8).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, gateshift.GSM):
                m.conv3D.weight.copy_(torch.randn(m.conv3D.weight.shape, generator=gen) * 0.2)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    clips = torch.export.Dim("clips", min=1)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: 4 * clips},))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "gsm.pt2"))
    io = []
    for n in (1, 3):
        xi = torch.randn(4 * n, 3, 16, 16, generator=gen)
        with torch.no_grad():
            io.append((xi, net(xi)))
    return package, io


@pytest.mark.skipif(LIBRARY is None, reason="GATESHIFT_CMAKE_LIBRARY not set (CI sets it after the CMake build)")
def test_aoti_package_runs_on_the_cmake_library(tmp_path, gen):
    # A Python process that loads the library CMake built, not the gateshift package.
    import torch

    package, io = gsm_package(tmp_path, gen)
    torch.save(io, tmp_path / "io.pt")
    run = subprocess.run([sys.executable, "-c", LOAD_PACKAGE, LIBRARY, package, str(tmp_path / "io.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr[-2000:]


RUNNER = os.environ.get("GATESHIFT_AOTI_RUNNER")


@pytest.mark.skipif(RUNNER is None, reason="GATESHIFT_AOTI_RUNNER not set (CI builds examples/cpp/aoti_run.cpp)")
def test_aoti_package_runs_from_cpp(tmp_path, gen):
    package, io = gsm_package(tmp_path, gen)
    for i, (x, expected) in enumerate(io):
        x.numpy().tofile(tmp_path / f"x{i}.bin")
        expected.numpy().tofile(tmp_path / f"y{i}.bin")
        run = subprocess.run([RUNNER, package, str(tmp_path / f"x{i}.bin"), str(tmp_path / f"y{i}.bin"),
                              *map(str, x.shape)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr[-2000:]
