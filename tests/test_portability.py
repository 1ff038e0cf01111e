"""The C++ sources of the CPU build compile for platforms this machine cannot run:
aarch64 Linux (NEON), macOS on Apple silicon, and x86-64 Linux under clang rather than
GCC, with the clang cross-compiler that the ``ziglang`` wheel bundles.

Compilation only, at -O2 with OpenMP on as in the real build (a declaration-only
``omp.h`` stands in for the OpenMP runtime zig does not ship): this proves the sources
have no x86-only code on their only path and nothing clang rejects (clang, unlike GCC,
cannot capture structured bindings in OpenMP loops, which the kernels once did). It
does not link, load or run the library on those platforms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
# What setup.py's CPU extension compiles (the CUDA and emulator sources are not built
# for these platforms).
SOURCES = [
    "library.cpp",
    "python_module.cpp",
    "common/checks.cpp",
    "cpu/batch_stats.cpp",
    "cpu/gate_shift.cpp",
    "cpu/gate_shift_fuse.cpp",
    "cpu/temporal_shift.cpp",
]
TARGETS = ["aarch64-linux-gnu", "aarch64-macos", "x86_64-linux-gnu"]


def compile_source(target: str, source: str, out_dir: str) -> subprocess.CompletedProcess:
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    command = [
        sys.executable, "-m", "ziglang", "c++", "-target", target, "-std=c++20", "-O2", "-fopenmp",
        "-isystem", os.path.join(ROOT, "tests", "portability"),
        f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}", *includes,
        "-c", os.path.join(CSRC, source), "-o", os.path.join(out_dir, source.replace("/", "_") + ".o"),
    ]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize("target", TARGETS)
def test_cpu_sources_compile_for(target, tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: compile_source(target, s, str(tmp_path)), SOURCES))
    failures = [f"{source}:\n{r.stderr[-3000:]}" for source, r in zip(SOURCES, results) if r.returncode != 0]
    assert not failures, f"{target}: " + "\n".join(failures)
    for source in SOURCES:
        assert (tmp_path / (source.replace("/", "_") + ".o")).stat().st_size > 0
