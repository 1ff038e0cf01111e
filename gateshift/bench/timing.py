"""The instruments: how long a call takes (and the page faults it takes), the device's
copy bandwidth, what autograd keeps for backward, peak device memory, and profiler traces.

A measurement is ``warmup`` untimed calls, then ``repeat`` calls each timed on its own;
the median and interquartile range of those samples are what is reported. The clock is
``torch.utils.benchmark``'s, which synchronises the GPU before every reading so that
asynchronous CUDA work is counted; the timing loop is Python's ``timeit``, the one
``torch.utils.benchmark.Timer`` wraps, which keeps the garbage collector out of the
timed calls. ``Timer.timeit`` itself is not used: it runs two warm-up calls before every
sample, which would triple the calls of a measurement, and its autorange methods choose
how many calls to time, where ``--repeat`` names the number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import mmap
import statistics
import timeit
from collections.abc import Callable

import torch
from torch import Tensor

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None


def _import_torch_benchmark():
    # torch.utils.benchmark imports torch.utils.cpp_extension (for its C++ timers), which
    # on a CUDA build of torch without a GPU logs "No CUDA runtime is found, using
    # CUDA_HOME=...": a note for people building extensions that a user running the
    # benchmark reads as an error. Nothing here builds anything: keep it quiet.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        logger.setLevel(level)
    return benchmark


benchmark = _import_torch_benchmark()


@dataclasses.dataclass(frozen=True)
class CallTimes:
    """The durations of individually timed calls, in seconds, and the minor page faults
    the process took per timed call (NaN where not counted: an OS without the count, or
    :func:`time_interleaved`'s rounds)."""

    seconds: tuple[float, ...]
    minor_faults: float = math.nan

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3

    @property
    def iqr_ms(self) -> float:
        # statistics' default (exclusive) quartiles: the definition every result so far used
        q1, _, q3 = statistics.quantiles(self.seconds, n=4)
        return (q3 - q1) * 1e3


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, repeat: int) -> CallTimes:
    """``repeat`` calls of ``fn``, each timed on its own, after ``warmup`` untimed calls,
    and the page faults the timed calls took (:func:`minor_page_faults`, read outside the
    timed region). ``fn``'s work runs on ``device``."""
    # The synchronising clock on CUDA, made current below so that the right GPU is
    # waited for; on the CPU there is nothing to wait for.
    clock = benchmark.timer if device.type == "cuda" else timeit.default_timer
    timer = timeit.Timer(fn, timer=clock)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for _ in range(warmup):
            fn()
        faults = minor_page_faults()
        seconds = tuple(timer.timeit(number=1) for _ in range(repeat))
        return CallTimes(seconds, (minor_page_faults() - faults) / repeat)


def minor_page_faults() -> float:
    """The minor page faults this process has taken so far (getrusage's ``ru_minflt``);
    NaN where the OS does not count them (Windows, or sandboxes whose getrusage leaves it
    0). In a benchmark's steady state they are mostly memory the allocator handed back to
    the OS and took again, which the kernel maps and zeroes page by page at the first
    touch (README, "Page faults from the allocator")."""
    if not _counts_page_faults():
        return math.nan
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def touch_fresh_pages(pages: int) -> None:
    """Maps ``pages`` pages of private anonymous memory and writes to each: fresh memory,
    so each page faults at its first write (huge pages, where the kernel gives them, once
    per huge page)."""
    with mmap.mmap(-1, pages * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        for i in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            m[i] = 1


@functools.cache
def _counts_page_faults() -> bool:
    if resource is None:
        return False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_fresh_pages(4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt > before


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int,
                     repeat: int) -> dict[str, CallTimes]:
    """Like :func:`time_calls` for several functions at once, in rounds: each round times
    one call of each, in an order that rotates from round to round. A whole network's
    step takes a second on a CPU, long enough for a shared machine's speed to drift
    between one implementation's samples and the next's; interleaved, every
    implementation sees the same drift, so their ratios hold."""
    clock = benchmark.timer if device.type == "cuda" else timeit.default_timer
    timers = {name: timeit.Timer(fn, timer=clock) for name, fn in fns.items()}
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for r in range(repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:
                samples[name].append(timers[name].timeit(number=1))
    return {name: CallTimes(tuple(values)) for name, values in samples.items()}


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, repeat: int = 10) -> float:
    """The device's dense matrix-product rate in FLOP/s (``2 n^3`` per ``n x n`` product,
    sgemm in float32), measured now on the threads the benchmark runs on: the compute
    ceiling a convolution-bound op is measured against."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = time_calls(lambda: torch.mm(a, b), device, warmup=3, repeat=repeat)
    return 2 * size**3 / (times.median_ms / 1e3)


def copy_bandwidth(device: torch.device, repeat: int = 10) -> float:
    """The device's copy bandwidth in bytes/s (read + write), measured now."""
    numel = (64 if device.type == "cpu" else 256) * 2**20 // 4
    src = torch.empty(numel, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_calls(lambda: dst.copy_(src), device, warmup=3, repeat=repeat).median_ms
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(t: Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak device memory allocated while ``fn`` runs, above what was allocated before
    (CUDA only: None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def write_profile(fn: Callable[[], object], device: torch.device, directory: str, name: str) -> None:
    """A ``torch.profiler`` trace (TensorBoard format) of two calls of ``fn``, after one
    that warms the profiler up."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    handler = torch.profiler.tensorboard_trace_handler(directory, worker_name=name.replace(" ", "_"))
    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=0, warmup=1, active=2),
        on_trace_ready=handler,
        record_shapes=True,
        profile_memory=True,
        acc_events=True,
    ) as prof:
        for _ in range(3):
            fn()
            prof.step()
