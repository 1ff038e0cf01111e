"""Writes gateshift/testing/kernel_registers.json: the registers per thread of every
kernel instantiation in the built extension, for the architectures the GPU model
(gateshift.testing.gpu_model) knows (sm_80: A100, sm_90: H100). Run after a CUDA build:

    python tools/kernel_registers.py
"""

from __future__ import annotations

import json

from gateshift import _C
from gateshift.testing import cubin, gpu_model

if __name__ == "__main__":
    table = cubin.register_table(_C.__file__)
    keep = {gpu.arch for gpu in gpu_model.GPUS.values()}
    missing = keep - set(table)
    if missing:
        raise SystemExit(f"the build has no cubin for {sorted(missing)}: build with a TORCH_CUDA_ARCH_LIST that has them")
    out = {arch: table[arch] for arch in sorted(keep)}
    gpu_model._REGISTERS_FILE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {gpu_model._REGISTERS_FILE} ({', '.join(sorted(keep))})")
