"""Proof that the emulator tests catch broken CUDA kernels: each mutant below breaks the
device code in one known way (a missing barrier, a missing bounds check, an
uninitialised workspace, ...); the tool builds the emulator library from the mutated
source and runs the emulator's tests on it, which must fail.

    python tools/emulator_mutants.py            # every mutant (about 3 minutes each on 2 cores)
    python tools/emulator_mutants.py --list
    python tools/emulator_mutants.py forward-staging-barrier

Exits non-zero if any mutant survives (its tests pass). Not part of CI: each mutant is
a full build of the emulated kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under csrc/
    original: str  # must occur exactly once
    mutated: str


MUTANTS = [
    Mutant(
        "forward-staging-barrier",
        "cuda/gate_shift_kernel.cuh",
        "        __syncthreads();\n        for (int cc = slice; cc < chunk; cc += kSlices) {",
        "        for (int cc = slice; cc < chunk; cc += kSlices) {",
    ),
    Mutant(
        "backward-staging-barrier",
        "cuda/gate_shift_kernel.cuh",
        "        dzn_s[cc * kStageStride + pix] = dzn;\n      }\n      __syncthreads();\n",
        "        dzn_s[cc * kStageStride + pix] = dzn;\n      }\n",
    ),
    Mutant(
        "gate-store-bounds-check",
        "cuda/gate_shift_kernel.cuh",
        "if (tg >= bw.t0 && tg < bw.t1 && h < n.H && w < n.W) {",
        "if (tg >= bw.t0 && tg < bw.t1) {",
    ),
    Mutant(
        "partials-initialisation",
        "cuda/gate_shift_kernel.cuh",
        "    partial[e] = acc_t(0);\n",
        "",
    ),
    Mutant(
        "clip-end-padding-term",
        "cuda/gate_shift_kernel.cuh",
        "        a += edge_s[k * 2 + 0];\n",
        "",
    ),
    Mutant(
        "temporal-shift-direction",
        "cuda/temporal_shift_kernel.cuh",
        "at.c < p.fold ? p.first : (at.c < 2 * p.fold ? -p.first : 0)",
        "at.c < p.fold ? -p.first : (at.c < 2 * p.fold ? p.first : 0)",
    ),
    Mutant(
        "plane-pixel-tail",  # the last batch of a plane stores past its end
        "cuda/element_cursor.cuh",
        "      if (i < HW) {\n        store(i, value[k]);",
        "      if (i < HW + 32) {\n        store(i, value[k]);",
    ),
    Mutant(
        "element-cursor-frame-carry",
        "cuda/element_cursor.cuh",
        "    t += step.t + carry;\n",
        "    t += step.t;\n",
    ),
    Mutant(
        "partials-strands-dropped",
        "cuda/gate_shift_kernel.cuh",
        "for (int s = 1; s < kPartialStrands; ++s) {",
        "for (int s = 1; s < 1; ++s) {",
    ),
    Mutant(
        "batch-stats-runs-dropped",
        "cuda/batch_stats_kernel.cuh",
        "for (int64_t run = tid; run < p.runs; run += kStatsThreads) {",
        "for (int64_t run = tid; run < 1; run += kStatsThreads) {",
    ),
    Mutant(
        "fusion-means-strands-dropped",
        "cuda/gate_shift_fuse_kernel.cuh",
        "for (int w = 1; w < kTileStrands; ++w) {",
        "for (int w = 1; w < 1; ++w) {",
    ),
    Mutant(
        "fusion-weight-gradient-lane-dropped",
        "cuda/gate_shift_fuse_kernel.cuh",
        "for (int64_t cq = lane; cq < half; cq += 32) {",
        "for (int64_t cq = lane; cq < half && lane != 1; cq += 32) {",
    ),
]

# The tests that run the emulated kernels.
TESTS = [
    "tests/test_gate_shift.py",
    "tests/test_gate_shift_fuse.py",
    "tests/test_temporal_shift.py",
    "tests/test_batch_stats.py",
    "tests/test_layouts.py",
    "tests/test_ecosystem.py",
]


def build(csrc: str, build_dir: str) -> str:
    """The emulator library built from ``csrc``; returns the path of the shared library.
    In a child process: building loads the library, and one process can hold only one
    library that defines the gateshift_emulated namespace."""
    subprocess.run([sys.executable, os.path.abspath(__file__), "--build", csrc, build_dir], check=True)
    return os.path.join(build_dir, "gateshift_emulator_mutant.so")


def build_here(csrc: str, build_dir: str) -> None:
    from torch.utils import cpp_extension

    sources = [os.path.join(csrc, "emulator", f) for f in sorted(os.listdir(os.path.join(csrc, "emulator")))
               if f.endswith(".cpp")]
    sources += [os.path.join(csrc, "common", f) for f in sorted(os.listdir(os.path.join(csrc, "common")))
                if f.endswith(".cpp")]
    cpp_extension.load(
        name="gateshift_emulator_mutant",
        sources=sources,
        extra_include_paths=[csrc],
        extra_cflags=["-O2", "-pthread", "-std=c++20"],
        extra_ldflags=["-pthread"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def run_mutant(m: Mutant) -> bool:
    """True when the tests catch the mutant (fail on it)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        csrc = os.path.join(tmp, "csrc")
        shutil.copytree(os.path.join(ROOT, "csrc"), csrc)
        path = os.path.join(csrc, m.path)
        with open(path) as f:
            text = f.read()
        if text.count(m.original) != 1:
            raise SystemExit(f"{m.name}: the text to mutate occurs {text.count(m.original)} times in {m.path}")
        with open(path, "w") as f:
            f.write(text.replace(m.original, m.mutated))
        library = build(csrc, os.path.join(tmp, "build"))
        env = dict(os.environ, GATESHIFT_EMULATOR_LIBRARY=library)
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", "-k", "cuda_emulator", *TESTS],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        lines = tests.stdout.strip().splitlines() or ["(no output)"]
        failed = [line for line in lines if line.startswith("FAILED")][:1]
        print(f"  {lines[-1]}" + (f"; first: {failed[0][:160]}" if failed else ""))
        return tests.returncode != 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants")
    parser.add_argument("--build", nargs=2, metavar=("CSRC", "BUILD_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_here(*args.build)
        return 0
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: {m.path}")
        return 0
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    survivors = []
    for m in chosen:
        start = time.perf_counter()
        print(f"{m.name} ({m.path})", flush=True)
        caught = run_mutant(m)
        print(f"  {'caught' if caught else 'SURVIVED'} in {time.perf_counter() - start:.0f} s", flush=True)
        if not caught:
            survivors.append(m.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants caught" + (f"; survived: {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
