"""The CUDA kernels are really built, for the architectures users run, without
register spills or local-memory stack frames (read from the built cubins with
cuobjdump, which torch's triton dependency ships)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import gateshift  # noqa: F401  (loads gateshift._C)
from gateshift import _C

KERNELS = (
    "gate_shift_forward_kernel",
    "gate_shift_backward_kernel",
    "sum_partials_kernel",
    "fuse_weights_kernel",
    "fuse_combine_kernel",
    "fuse_gradient_kernel",
    "fuse_backward_kernel",
    "batch_stats_partials_kernel",
    "batch_stats_finish_kernel",
    "batch_stats_backward_kernel",
    "temporal_shift_kernel",
)
DTYPES = {"f": "float", "d": "double", "N3c104HalfE": "half", "N3c108BFloat16E": "bfloat16"}

has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("gateshift::gate_shift_forward", "CUDA")
required = os.environ.get("GATESHIFT_FORCE_CUDA", "0") == "1"
pytestmark = pytest.mark.skipif(
    not has_cuda_kernels and not required,
    reason="gateshift was built without CUDA kernels (CPU-only torch or no nvcc); GATESHIFT_FORCE_CUDA=1 requires them",
)


def cuobjdump() -> str:
    try:
        import triton
    except ImportError:
        pytest.skip("triton (which ships cuobjdump) is not installed")
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        pytest.skip(f"no cuobjdump at {path}")
    return str(path)


def run(*args: str) -> str:
    return subprocess.run([cuobjdump(), *args, _C.__file__], capture_output=True, text=True, check=True).stdout


def resource_usage() -> dict[tuple[str, str, str], dict[str, int]]:
    """{(arch, kernel, dtype): {"REG": .., "STACK": .., "LOCAL": .., ...}} of every kernel
    instantiation; a second template argument shows in the kernel's name
    (gate_shift_forward_kernel<means>: GSF's first pass; sum_partials_kernel<float affine>)."""
    usage, arch = {}, None
    function = None
    for line in run("--dump-resource-usage").splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            function = m.group(1)
        elif function and "REG:" in line:
            values = dict((k, int(v)) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            kernel = next(k for k in KERNELS if f"{len(k)}{k}I" in function)
            code, dtype = next((c, n) for c, n in DTYPES.items() if f"{kernel}I{c}" in function)
            rest = function.split(f"{kernel}I{code}", 1)[1]
            if rest.startswith("Lb1E"):
                kernel += "<means>"
            elif kernel == "sum_partials_kernel" and rest.startswith("fE") and dtype in ("half", "bfloat16"):
                kernel += "<float affine>"
            usage[(arch, kernel, dtype)] = values
            function = None
    return usage


def test_cuda_kernels_are_registered():
    assert has_cuda_kernels, "GATESHIFT_FORCE_CUDA=1 but gateshift._C has no CUDA kernels"


def test_built_for_ampere_hopper_and_ptx():
    elf = run("--list-elf")
    for arch in ("sm_80", "sm_90"):
        assert f".{arch}.cubin" in elf, f"no {arch} cubin in {_C.__file__}:\n{elf}"
    assert ".ptx" in run("--list-ptx"), "no PTX for forward compatibility"


def test_no_spills_no_stack_no_local_memory():
    usage = resource_usage()
    archs = sorted({arch for arch, _, _ in usage})
    assert archs, "cuobjdump found no kernels"
    for arch in archs:
        for kernel in (*KERNELS, "gate_shift_forward_kernel<means>"):
            for dtype in DTYPES.values():
                assert (arch, kernel, dtype) in usage, f"{kernel} for {dtype} missing for {arch}"
    report = []
    for (arch, kernel, dtype), r in sorted(usage.items()):
        report.append(f"{arch} {kernel} {dtype}: {r['REG']} registers, stack {r['STACK']}, local {r['LOCAL']}")
        assert r["STACK"] == 0 and r["LOCAL"] == 0, report[-1]
    print("\n".join(report))


def test_hot_kernels_fit_two_blocks_per_sm():
    # 256 threads per block: at most 128 registers each leaves room for two blocks
    # (65536 registers per SM), the occupancy the tiling is designed for.
    for (arch, kernel, dtype), r in resource_usage().items():
        if kernel.startswith("gate_shift") and dtype != "double":
            assert r["REG"] <= 128, f"{arch} {kernel}<{dtype}> uses {r['REG']} registers"
