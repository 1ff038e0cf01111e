"""Build of gateshift's C++/CUDA extension, ``gateshift._C``.

    pip install --no-build-isolation .        # or -e . for development

The CUDA kernels are built whenever torch is a CUDA build and nvcc is found (no
GPU needed); otherwise the CPU kernels alone. Environment:

    GATESHIFT_FORCE_CUDA=1   a CUDA build is required: fail if it cannot be done
    GATESHIFT_FORCE_CPU=1    skip CUDA even when it could be built
    GATESHIFT_CPU_NO_AVX512=1  x86-64 CPU kernels for AVX2 and baseline only (no AVX-512 clone)
    TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;8.6;8.9;9.0+PTX")
    MAX_JOBS                 parallel compile jobs (default: 2)
    CUDA_HOME                the CUDA toolkit (default: the one nvcc on PATH runs from)
"""

import glob
import os
import shutil
import subprocess

from setuptools import find_packages, setup


def cuda_toolkit_root():
    """The CUDA toolkit that nvcc belongs to, or None.

    nvcc on PATH may be a wrapper script, whose folder torch would mistake for the
    toolkit; nvcc reports the toolkit it really runs from (TOP) in a dry run.
    """
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            return os.environ[name]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        run = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in (run.stdout + run.stderr).splitlines():
            if "TOP=" in line:
                return os.path.normpath(line.split("TOP=", 1)[1].strip().strip('"'))
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# torch.utils.cpp_extension reads CUDA_HOME when it is imported.
if cuda_toolkit_root() is not None:
    os.environ["CUDA_HOME"] = cuda_toolkit_root()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def find_nvcc():
    if CUDA_HOME is not None:
        candidate = os.path.join(CUDA_HOME, "bin", "nvcc")
        if os.path.exists(candidate):
            return candidate
    return shutil.which("nvcc")


def want_cuda() -> bool:
    if env_flag("GATESHIFT_FORCE_CPU"):
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if find_nvcc() is None or CUDA_HOME is None:
        reasons.append("nvcc / CUDA_HOME not found")
    if reasons:
        if env_flag("GATESHIFT_FORCE_CUDA"):
            raise RuntimeError("GATESHIFT_FORCE_CUDA=1 but " + " and ".join(reasons))
        print("gateshift: building the CPU kernels only (" + "; ".join(reasons) + ")")
        return False
    return True


def sources(pattern: str):
    return sorted(glob.glob(os.path.join(CSRC, pattern)))


def shared_sources():
    """What every backend shares: argument checks and layout rules (common/)."""
    return sources(os.path.join("common", "*.cpp"))


def make_emulator_extension():
    """The CUDA kernels' device code built for the CPU under the execution emulator
    (gateshift.testing.cuda_emulator): always built, no CUDA needed."""
    return CppExtension(
        "gateshift._cuda_emulator",
        sources("emulator/*.cpp") + shared_sources(),
        include_dirs=[os.path.join(ROOT, CSRC)],
        extra_compile_args={"cxx": ["-std=c++20", "-O2", "-pthread", "-Wall", "-Wno-unknown-pragmas"]},
        extra_link_args=["-pthread"],
    )


def make_extension():
    # -Wno-psabi: the CPU kernels' SIMD vectors (cpu/register_blocked_correlation.h) never
    # cross a call, so GCC's notes that their calling convention differs between the
    # target clones do not apply.
    # C++20 (std::bit_cast, template lambdas): torch 2.14's own default, spelled out so
    # that older torch (>= 2.6, whose default is C++17) builds the same sources.
    # -fno-trapping-math: the kernels never read the floating-point exception flags. While
    # GCC must keep them exact, it leaves every select on a float comparison a branch and
    # does not vectorise the loop around it, c10::Half's conversions included (float16
    # data ran element by element). Values are the same either way.
    cxx_flags = ["-std=c++20", "-O3", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    if env_flag("GATESHIFT_CPU_NO_AVX512"):
        cxx_flags.append("-DGATESHIFT_CPU_NO_AVX512")
    link_flags = ["-fopenmp"]
    cpp_sources = sources("*.cpp") + shared_sources() + sources(os.path.join("cpu", "*.cpp"))
    include_dirs = [os.path.join(ROOT, CSRC)]
    if not want_cuda():
        return CppExtension(
            "gateshift._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    nvcc_flags = [
        "-std=c++20",
        "-O3",
        "-lineinfo",
        # Per-kernel register/stack/spill report in the build log; tests read the
        # same figures from the built cubins with cuobjdump.
        "-Xptxas=-v",
        # torch defines these to keep half operators out of its own headers; our
        # kernels convert explicitly and do not rely on either setting.
        "--expt-relaxed-constexpr",
    ]
    if env_flag("GATESHIFT_FAST_MATH"):  # opt-in only: tanh precision matters
        nvcc_flags.append("--use_fast_math")
    return CUDAExtension(
        "gateshift._C",
        cpp_sources + sources(os.path.join("cuda", "*.cu")),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


os.environ.setdefault("MAX_JOBS", "2")

setup(
    name="gateshift",
    version="0.1.0",
    description="Fused Gate-Shift (GSM) operators for PyTorch: CPU and CUDA kernels",
    packages=find_packages(include=["gateshift", "gateshift.*"]),
    # The GPU model's register counts, read from the built cubins (tools/kernel_registers.py).
    package_data={"gateshift.testing": ["kernel_registers.json"]},
    python_requires=">=3.10",
    # numpy: torch warns at import without it ("Failed to initialize NumPy").
    install_requires=["torch>=2.6", "tqdm", "numpy"],
    extras_require={
        # ziglang: the clang cross-compiler of tests/test_portability.py (aarch64 Linux, macOS)
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib", "torchvision", "onnx", "onnxscript", "onnxruntime",
                 "ziglang"],
        "plot": ["matplotlib"],
        "onnx": ["onnx", "onnxscript"],  # gateshift.onnx.export (torch.onnx's exporter needs both)
    },
    ext_modules=[make_extension(), make_emulator_extension()],
    cmdclass={"build_ext": BuildExtension},
    entry_points={
        "console_scripts": ["gateshift-bench=gateshift.bench:main", "gateshift-check=gateshift.check:main"]
    },
)
