"""The CUDA kernels are really built, for the architectures users run, without
register spills or local-memory stack frames (read from the built cubins with
cuobjdump, which torch's triton dependency ships)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import gateshift  # noqa: F401  (loads gateshift._C)
from gateshift import _C
from gateshift.testing import cubin, gpu_model
from gateshift.testing.cubin import DTYPES, KERNELS

has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("gateshift::gate_shift_forward", "CUDA")
required = os.environ.get("GATESHIFT_FORCE_CUDA", "0") == "1"
pytestmark = pytest.mark.skipif(
    not has_cuda_kernels and not required,
    reason="gateshift was built without CUDA kernels (CPU-only torch or no nvcc); GATESHIFT_FORCE_CUDA=1 requires them",
)


def run(*args: str) -> str:
    if cubin.cuobjdump() is None:
        pytest.skip("no cuobjdump (torch's triton dependency ships it)")
    return cubin.run(_C.__file__, *args)


def resource_usage() -> dict[tuple[str, str, str], dict[str, int]]:
    run("--list-elf")  # skips without cuobjdump
    return cubin.resource_usage(_C.__file__)


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


def test_gpu_models_register_table_matches_the_build():
    # gpu_model reads registers from kernel_registers.json (no GPU toolchain needed to
    # run it): regenerate it with tools/kernel_registers.py whenever this fails.
    resource_usage()  # skips without cuobjdump
    shipped = json.loads(gpu_model._REGISTERS_FILE.read_text())
    built = cubin.register_table(_C.__file__)
    for arch in ("sm_80", "sm_90"):
        assert shipped.get(arch) == built[arch], f"kernel_registers.json is stale for {arch}: run tools/kernel_registers.py"
