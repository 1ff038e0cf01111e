"""What the built CUDA kernels use per thread, read from the extension's cubins with
cuobjdump (the system toolkit has none; torch's triton dependency ships one).

Used by tests/test_cuda_build.py (no stack, no local memory, registers within the
occupancy the tiling is designed for) and by tools/kernel_registers.py, which keeps
the register counts the GPU model (gpu_model.py) reads in kernel_registers.json.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

__all__ = ["KERNELS", "DTYPES", "cuobjdump", "resource_usage"]

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
# Itanium-mangled first template arguments -> names.
DTYPES = {"f": "float", "d": "double", "N3c104HalfE": "half", "N3c108BFloat16E": "bfloat16"}


def cuobjdump() -> Path | None:
    """triton's cuobjdump, or None when triton (or its binary) is missing."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


def run(library: str, *args: str) -> str:
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("no cuobjdump: install triton (a dependency of CUDA builds of torch)")
    return subprocess.run([str(tool), *args, library], capture_output=True, text=True, check=True).stdout


def resource_usage(library: str) -> dict[tuple[str, str, str], dict[str, int]]:
    """{(arch, kernel, dtype): {"REG": .., "STACK": .., "LOCAL": .., ...}} of every kernel
    instantiation in ``library``; a second template argument shows in the kernel's name
    (gate_shift_forward_kernel<means>: GSF's first pass; sum_partials_kernel<float affine>)."""
    usage, arch = {}, None
    function = None
    for line in run(library, "--dump-resource-usage").splitlines():
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


def register_table(library: str) -> dict[str, dict[str, int]]:
    """{arch: {"kernel dtype": registers per thread}}, as kernel_registers.json holds it."""
    table: dict[str, dict[str, int]] = {}
    for (arch, kernel, dtype), values in sorted(resource_usage(library).items()):
        table.setdefault(arch, {})[f"{kernel} {dtype}"] = values["REG"]
    return table
