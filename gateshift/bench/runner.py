"""Running the cases: each implementation of a case on the same inputs, one
:class:`Record` per (case, implementation)."""

from __future__ import annotations

import copy
import dataclasses
import math
import platform
import sys
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from gateshift.bench.timing import (
    CallTimes, matmul_rate as measure_matmul_rate, peak_bytes, saved_bytes, time_calls, time_interleaved, write_profile,
)
from gateshift.bench.workloads import Workload


@dataclasses.dataclass
class Record:
    """One (case, implementation) result: a row of the table and of the JSON/CSV.

    The field names are the JSON keys and CSV columns; files written by earlier versions
    are read by name (``benchmarks/summarize.py``), so they do not change.
    """

    op: str
    impl: str
    shape: str
    label: str
    dtype: str
    device: str
    numel: int
    fwd_ms: float
    fwd_ms_iqr: float
    fwd_bwd_ms: float
    fwd_bwd_ms_iqr: float
    infer_ms: float
    saved_bytes: int
    saved_ratio: float  # saved_bytes / bytes of the input
    peak_bytes: int | None
    fwd_bw_frac: float  # the forward's bandwidth floor time over fwd_ms (not "forward+backward")
    fwd_bwd_bw_frac: float  # the same for forward+backward
    max_abs_err: float
    speedup_vs_eager: float = math.nan
    speedup_vs_compile: float = math.nan
    # Network cases: the temporal modules' share of a training step (forward+backward)
    # and of an inference pass, 1 - (the backbone without them) / (this network).
    temporal_share: float = math.nan
    temporal_share_infer: float = math.nan
    # --roofline: the useful FLOP rate (the gate convolution's: 54 FLOP per element of x
    # forward, 162 forward+backward) over the device's matrix-product rate, same run.
    matmul_frac: float = math.nan
    matmul_frac_fwd_bwd: float = math.nan
    matmul_frac_infer: float = math.nan  # the eval-mode inference pass's (54 FLOP per element)
    # --roofline on the CPU: minor page faults per training step (forward+backward), the
    # mean over its timed calls (timing.minor_page_faults); NaN where not counted.
    fwd_bwd_faults: float = math.nan
    # --roofline: the matrix-product rate the fractions above are taken against, in
    # GFLOP/s, measured just before this case (a shared machine's speed drifts during a run).
    matmul_gflops: float = math.nan

    @property
    def saved_mb(self) -> float:
        return self.saved_bytes / 2**20


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def with_memory_format(module: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """``module`` with its 2-D convolutions' weights in ``memory_format`` (channels_last
    networks keep them so, and their convolutions then return channels_last); the 3-D
    gate convolutions' 5-D weights, which ``Module.to(memory_format=)`` refuses, stay."""
    if memory_format != torch.contiguous_format:
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=memory_format)
    return module


def benchmark_workload(
    w: Workload,
    dtype: torch.dtype,
    device: torch.device,
    impls: Sequence[str],
    *,
    warmup: int,
    repeat: int,
    bandwidth: float,
    gen: torch.Generator,
    profile_dir: str | None = None,
    matmul_rate: float | None = None,
    page_faults: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[Record]:
    """Time and measure each of ``impls`` on one case; ``bandwidth`` (bytes/s) turns the
    case's floor bytes into floor times, ``matmul_rate`` (FLOP/s, optional) its useful
    FLOP into fractions of the compute ceiling; ``page_faults``: the training step's page
    faults are recorded (on the CPU). ``memory_format`` is the input's and the
    output gradient's (and a network's weights'): ``torch.channels_last`` stands for the
    activations of a channels_last network."""
    # Every case compiles the same forward code anew; without a reset dynamo would
    # reach its recompile limit after a few shapes and silently run eager.
    torch._dynamo.reset()
    models = {}
    for impl in impls:
        source = {"fused": w.fused, "op": w.op_alone}.get(impl, w.published)
        if source is None:  # impl "op" of a case without one (TSM, GST, networks)
            continue
        m = with_memory_format(copy.deepcopy(source).to(device=device, dtype=dtype), memory_format)
        models[impl] = torch.compile(m) if impl == "compile" else m
    if w.baseline is not None:
        models["baseline"] = with_memory_format(copy.deepcopy(w.baseline).to(device=device, dtype=dtype), memory_format)
    x = torch.randn(w.input_shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    x_leaf = x.clone().requires_grad_()

    # The output every implementation is compared with: the published module in
    # eval mode (no BN statistics updates, so every implementation sees one state).
    ref = copy.deepcopy(w.published).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        expected = ref(x).float()
    grad = torch.randn(expected.shape, generator=gen).to(device=device, dtype=dtype)
    grad = grad.contiguous(memory_format=memory_format) if grad.dim() == 4 else grad

    x_bytes = x.numel() * x.element_size()
    floor_fwd_ms = floor_fwd_bwd_ms = math.nan
    if not w.is_model:
        fwd_bytes, bwd_bytes = w.floor_bytes(x_bytes)
        floor_fwd_ms = fwd_bytes / bandwidth * 1e3
        floor_fwd_bwd_ms = (fwd_bytes + bwd_bytes) / bandwidth * 1e3

    def infer_call(model):
        return lambda: model(x)

    def forward_call(model):
        return lambda: model(x_leaf)

    def step_call(model):
        def step():
            # The input stands for the previous layer's output: a fresh gradient
            # every step, not one accumulated into .grad (an extra full-size add).
            x_leaf.grad = None
            model(x_leaf).backward(grad)

        return step

    def measure(make_call) -> dict[str, CallTimes]:
        calls = {impl: make_call(model) for impl, model in models.items()}
        if w.is_model:  # seconds per call: interleave, so that every network sees the same drift
            return time_interleaved(calls, device, warmup=warmup, repeat=repeat)
        return {impl: time_calls(call, device, warmup=warmup, repeat=repeat) for impl, call in calls.items()}

    errors = {}
    for impl, model in models.items():
        model.eval()
    with torch.no_grad():
        for impl, model in models.items():
            # The baseline is another network: it has no reference output.
            errors[impl] = math.nan if impl == "baseline" else (model(x).float() - expected).abs().max().item()
        infer = measure(infer_call)
    for model in models.values():
        model.train()
    fwd = measure(forward_call)
    fwd_bwd = measure(step_call)

    records = []
    for impl, model in models.items():
        saved = saved_bytes(forward_call(model))
        peak = peak_bytes(step_call(model), device)
        if profile_dir is not None:
            write_profile(step_call(model), device, profile_dir, f"{w.op}-{impl}-{w.shape}-{dtype_name(dtype)}")
        model.zero_grad(set_to_none=True)
        x_leaf.grad = None
        records.append(
            Record(
                op=w.op,
                impl=impl,
                shape=w.shape,
                label=w.label,
                dtype=dtype_name(dtype),
                device=device_name(device),
                numel=x.numel(),
                fwd_ms=fwd[impl].median_ms,
                fwd_ms_iqr=fwd[impl].iqr_ms,
                fwd_bwd_ms=fwd_bwd[impl].median_ms,
                fwd_bwd_ms_iqr=fwd_bwd[impl].iqr_ms,
                infer_ms=infer[impl].median_ms,
                saved_bytes=saved,
                saved_ratio=math.nan if w.is_model else saved / x_bytes,
                peak_bytes=peak,
                fwd_bw_frac=floor_fwd_ms / fwd[impl].median_ms,
                fwd_bwd_bw_frac=floor_fwd_bwd_ms / fwd_bwd[impl].median_ms,
                max_abs_err=errors[impl],
            )
        )
        if matmul_rate and w.flop_per_element is not None:
            fwd_flop = w.flop_per_element[0] * x.numel()
            fwd_bwd_flop = sum(w.flop_per_element) * x.numel()
            records[-1].matmul_frac = fwd_flop / (fwd[impl].median_ms / 1e3) / matmul_rate
            records[-1].matmul_frac_fwd_bwd = fwd_bwd_flop / (fwd_bwd[impl].median_ms / 1e3) / matmul_rate
            records[-1].matmul_frac_infer = fwd_flop / (infer[impl].median_ms / 1e3) / matmul_rate
            records[-1].matmul_gflops = matmul_rate / 1e9
        if page_faults and device.type == "cpu":
            records[-1].fwd_bwd_faults = fwd_bwd[impl].minor_faults
    by_impl = {r.impl: r for r in records}
    for r in records:
        if r.impl == "baseline":  # another network: its time is the temporal modules' baseline, not a rival's
            continue
        if "eager" in by_impl:
            r.speedup_vs_eager = by_impl["eager"].fwd_bwd_ms / r.fwd_bwd_ms
        if "compile" in by_impl:
            r.speedup_vs_compile = by_impl["compile"].fwd_bwd_ms / r.fwd_bwd_ms
        if "baseline" in by_impl:
            base = by_impl["baseline"]
            r.temporal_share = 1 - base.fwd_bwd_ms / r.fwd_bwd_ms
            r.temporal_share_infer = 1 - base.infer_ms / r.infer_ms
    return records


def network_warmup(warmup: int) -> int:
    """A network step costs as much as hundreds of op calls: fewer warm-up calls..."""
    return max(1, warmup // 2)


def network_repeat(repeat: int) -> int:
    """... and fewer timed rounds (interleaved, so the ratios still hold)."""
    return max(5, repeat // 2)


def progress_bar(total: int, *, enabled: bool) -> tqdm:
    """Cases done so far, on stderr; shown only when stderr is a terminal."""
    # disable=None is tqdm's "off unless the stream is a TTY": logs and pipes stay clean.
    return tqdm(total=total, desc="gateshift-bench", unit="case", file=sys.stderr, disable=None if enabled else True)


def benchmark_all(
    workloads: Sequence[Callable[[], Workload]],
    dtype: torch.dtype,
    device: torch.device,
    impls: Sequence[str],
    *,
    warmup: int,
    repeat: int,
    bandwidth: float,
    gen: torch.Generator,
    compile_model: bool = False,
    profile_dir: str | None = None,
    progress: bool = True,
    roofline: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[Record]:
    """Every case in order, with the model-level case's own rules. ``workloads`` are
    factories: a case is built just before it runs, so one case's modules are in memory at
    a time and ``gen`` is drawn in one order (a case's weights, then its inputs), which
    keeps a seed's weights and inputs what they have been. ``roofline``: the matrix-product
    rate is measured just before each case with useful FLOP (a fraction taken against one
    rate measured at the start mixed two moments of a drifting machine)."""
    records: list[Record] = []
    with progress_bar(len(workloads), enabled=progress) as bar:
        for make in workloads:
            w = make()
            bar.set_postfix_str(f"{w.op} {w.shape}")
            case_impls = list(impls)
            model_case = w.is_model
            if model_case and len(case_impls) > 1 and not compile_model:
                # Compiling a whole network takes minutes on a CPU: a network case compares
                # eager and fused unless --impls names compile alone or --compile-model is given.
                case_impls = [i for i in case_impls if i != "compile"]
            rate = measure_matmul_rate(device) if roofline and w.flop_per_element is not None else None
            records += benchmark_workload(
                w, dtype, device, case_impls,
                warmup=network_warmup(warmup) if model_case else warmup,
                repeat=network_repeat(repeat) if model_case else repeat,
                bandwidth=bandwidth, gen=gen, profile_dir=profile_dir, matmul_rate=rate, page_faults=roofline,
                memory_format=memory_format,
            )
            bar.update()
    return records
