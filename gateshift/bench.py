"""``gateshift-bench``: how much faster and leaner the fused ops are than what users run today.

For each case (an op at a shape, dtype and device) and each implementation

* ``eager``   the published-semantics module (``gateshift.reference``), op for op;
* ``compile`` ``torch.compile`` of that module;
* ``fused``   ours;

on identical inputs and weights, it measures (the model-level case, a TSN-style
ResNet with a GSM in each block, runs through the same code: a training step of
the whole network with the published GSM against ours)

* ``fwd_ms``       a training-mode forward (autograd recording), median over repetitions;
* ``fwd_bwd_ms``   a training-mode forward + backward, median;
* ``infer_ms``     an eval-mode forward under ``torch.no_grad``, median;
* ``speedup_vs_*`` forward+backward time of ``eager``/``compile`` over this one's;
* ``saved_bytes``  bytes autograd keeps for backward (distinct storages, input included);
* ``peak_bytes``   peak device memory of forward + backward above the inputs (CUDA only);
* ``fwd_bw_frac``  the DESIGN.md bandwidth floor of forward (one read of x, one write of
  the output, at the device's copy bandwidth, measured in the same run) over ``fwd_ms``;
* ``max_abs_err``  the largest difference of the output from ``eager``'s.

Results go to an aligned table and, on request, to JSON, CSV, a PNG plot and
``torch.profiler`` traces. ``python -m gateshift.bench --help`` lists the options.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

import gateshift
from gateshift import reference
from gateshift.tsn import TSNResNet

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMPLS = ("eager", "compile", "fused")


# ---------------------------------------------------------------------------
# What is benchmarked
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    clips: int  # B
    frames: int  # T
    channels: int  # C
    height: int
    width: int
    label: str = ""

    @property
    def numel(self) -> int:
        return self.clips * self.frames * self.channels * self.height * self.width

    def __str__(self) -> str:
        return f"{self.clips}x{self.frames}x{self.channels}x{self.height}x{self.width}"


def _gate_floor(x_bytes: int) -> tuple[int, int]:
    # forward: read x, write out; backward: read x and dout, write dx (DESIGN.md section 3)
    return 2 * x_bytes, 3 * x_bytes


def _shift_floor(x_bytes: int) -> tuple[int, int]:
    # a pure shift: read and write once each way; backward needs no x
    return 2 * x_bytes, 2 * x_bytes


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """An op that joins the benchmark: its published-semantics and fused modules."""

    name: str
    published: Callable[[int, int], nn.Module]  # (channels, frames) -> module
    fused: Callable[[int, int], nn.Module]
    floor_bytes: Callable[[int], tuple[int, int]] = _gate_floor


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    # Fresh GSMs have zero gates (the identity): give every module trained-looking weights.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bn.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


OPS = {
    "gsm": OpSpec("gsm", lambda c, t: reference.GSM(c, t), lambda c, t: gateshift.GSM(c, t)),
    "gsf": OpSpec("gsf", lambda c, t: reference.GSF(c, t), lambda c, t: gateshift.GSF(c, t)),
    "tsm": OpSpec(
        "tsm",
        lambda c, t: reference.TemporalShift(None, t, 8),
        lambda c, t: gateshift.TemporalShift(None, t, 8),
        _shift_floor,
    ),
}


@dataclasses.dataclass
class Workload:
    """One benchmark case: a published-semantics module, its fused twin holding the
    same weights, and the input they run on."""

    op: str
    shape: str
    label: str
    published: nn.Module
    fused: nn.Module
    input_shape: tuple[int, ...]
    # Bytes a fused op must move at least (DESIGN.md section 3), or None for a model.
    floor_bytes: Callable[[int], tuple[int, int]] | None = None


def op_workload(spec: OpSpec, shape: Shape, gen: torch.Generator) -> Workload:
    published = spec.published(shape.channels, shape.frames)
    _randomise(published, gen)
    fused = spec.fused(shape.channels, shape.frames)
    fused.load_state_dict(published.state_dict())
    rows = shape.clips * shape.frames
    return Workload(
        spec.name, str(shape), shape.label, published, fused, (rows, shape.channels, shape.height, shape.width),
        floor_bytes=spec.floor_bytes,
    )


def model_workload(clips: int, frames: int, size: int, gen: torch.Generator) -> Workload:
    """A TSN-style ResNet with a GSM in each block: the published GSM against ours."""
    published = TSNResNet(reference.GSM, num_segments=frames)
    _randomise(published, gen)
    fused = TSNResNet(gateshift.GSM, num_segments=frames)
    fused.load_state_dict(published.state_dict())
    return Workload(
        "tsn-resnet", f"{clips}x{frames}x3x{size}x{size}", "model, GSM in 3 blocks", published, fused,
        (clips * frames, 3, size, size),
    )


# GSM placements in real networks (DESIGN.md section 4): (fPlane, H, W) per block.
_BN_INCEPTION = [(64, 28), (64, 28), (128, 28), (224, 14), (192, 14), (160, 14), (96, 14), (128, 14), (352, 7), (352, 7)]
_BN_INCEPTION_BLOCKS = ["3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
_INCEPTION_V3 = [(64, 27), (64, 27), (64, 27), (192, 13), (192, 13), (192, 13), (192, 13), (192, 13), (320, 6), (448, 6)]
_INCEPTION_V3_BLOCKS = ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b"]
_RESNET50 = [(64, 56), (128, 28), (256, 14), (512, 7)]
_RESNET50_STAGES = ["res2", "res3", "res4", "res5"]


def preset_shapes(name: str, clips: int, frames: Sequence[int]) -> list[Shape]:
    if name == "reference":  # the figures quoted in DESIGN.md section 3
        return [Shape(2, 8, 64, 28, 28, "DESIGN.md")]
    tables = {
        "bn-inception": (_BN_INCEPTION, _BN_INCEPTION_BLOCKS),
        "inception-v3": (_INCEPTION_V3, _INCEPTION_V3_BLOCKS),
        "resnet50": (_RESNET50, _RESNET50_STAGES),
    }
    if name not in tables:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    rows, labels = tables[name]
    return [
        Shape(clips, t, c, hw, hw, f"{name} {label}") for t in frames for (c, hw), label in zip(rows, labels)
    ]


PRESETS = ("reference", "bn-inception", "inception-v3", "resnet50")


def parse_shape(text: str) -> Shape:
    try:
        b, t, c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants B,T,C,H,W (five integers), got {text!r}") from None
    if min(b, t, c, h, w) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be positive, got {text!r}")
    return Shape(b, t, c, h, w, "custom")


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Wall times of ``fn`` in milliseconds, device-synchronised, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def copy_bandwidth(device: torch.device, repeat: int = 10) -> float:
    """The device's copy bandwidth in bytes/s (read + write), measured now."""
    numel = (64 if device.type == "cpu" else 256) * 2**20 // 4
    src = torch.empty(numel, device=device).uniform_()
    dst = torch.empty_like(src)
    times = time_ms(lambda: dst.copy_(src), device, warmup=3, repeat=repeat)
    return 2 * src.numel() * src.element_size() / (statistics.median(times) * 1e-3)


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


@dataclasses.dataclass
class Record:
    """One (case, implementation) result: a row of the table and of the JSON/CSV."""

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
    fwd_bw_frac: float
    fwd_bwd_bw_frac: float
    max_abs_err: float
    speedup_vs_eager: float = math.nan
    speedup_vs_compile: float = math.nan

    @property
    def saved_mb(self) -> float:
        return self.saved_bytes / 2**20


def _iqr(values: Sequence[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


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
) -> list[Record]:
    # Every case compiles the same forward code anew; without a reset dynamo would
    # reach its recompile limit after a few shapes and silently run eager.
    torch._dynamo.reset()
    models = {}
    for impl in impls:
        m = copy.deepcopy(w.fused if impl == "fused" else w.published).to(device=device, dtype=dtype)
        models[impl] = torch.compile(m) if impl == "compile" else m
    x = torch.randn(w.input_shape, generator=gen).to(device=device, dtype=dtype)
    x_leaf = x.clone().requires_grad_()

    # The output every implementation is compared with: the published module in
    # eval mode (no BN statistics updates, so every implementation sees one state).
    ref = copy.deepcopy(w.published).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        expected = ref(x).float()
    grad = torch.randn(expected.shape, generator=gen).to(device=device, dtype=dtype)

    x_bytes = x.numel() * x.element_size()
    floor_fwd = floor_fwd_bwd = math.nan
    if w.floor_bytes is not None:
        fwd_bytes, bwd_bytes = w.floor_bytes(x_bytes)
        floor_fwd = fwd_bytes / bandwidth * 1e3  # ms
        floor_fwd_bwd = (fwd_bytes + bwd_bytes) / bandwidth * 1e3

    records = []
    for impl, model in models.items():
        model.eval()
        with torch.no_grad():
            err = (model(x).float() - expected).abs().max().item()
            infer = time_ms(lambda: model(x), device, warmup, repeat)
        model.train()

        def forward():
            return model(x_leaf)

        def step():
            # The input stands for the previous layer's output: a fresh gradient
            # every step, not one accumulated into .grad (an extra full-size add).
            x_leaf.grad = None
            model(x_leaf).backward(grad)

        fwd = time_ms(forward, device, warmup, repeat)
        fwd_bwd = time_ms(step, device, warmup, repeat)
        saved = saved_bytes(forward)
        peak = None
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        if profile_dir is not None:
            _profile(step, device, profile_dir, f"{w.op}-{impl}-{w.shape}-{dtype_name(dtype)}")
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
                fwd_ms=statistics.median(fwd),
                fwd_ms_iqr=_iqr(fwd),
                fwd_bwd_ms=statistics.median(fwd_bwd),
                fwd_bwd_ms_iqr=_iqr(fwd_bwd),
                infer_ms=statistics.median(infer),
                saved_bytes=saved,
                saved_ratio=saved / x_bytes if w.floor_bytes is not None else math.nan,
                peak_bytes=peak,
                fwd_bw_frac=floor_fwd / statistics.median(fwd),
                fwd_bwd_bw_frac=floor_fwd_bwd / statistics.median(fwd_bwd),
                max_abs_err=err,
            )
        )
    by_impl = {r.impl: r for r in records}
    for r in records:
        if "eager" in by_impl:
            r.speedup_vs_eager = by_impl["eager"].fwd_bwd_ms / r.fwd_bwd_ms
        if "compile" in by_impl:
            r.speedup_vs_compile = by_impl["compile"].fwd_bwd_ms / r.fwd_bwd_ms
    return records


def _profile(step: Callable[[], None], device: torch.device, directory: str, name: str) -> None:
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
            step()
            prof.step()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

TABLE_COLUMNS = [
    ("op", "op", "{}"),
    ("shape", "B x T x C x H x W", "{}"),
    ("label", "where", "{}"),
    ("impl", "impl", "{}"),
    ("fwd_ms", "fwd ms", "{:.3f}"),
    ("fwd_bwd_ms", "fwd+bwd ms", "{:.3f}"),
    ("infer_ms", "infer ms", "{:.3f}"),
    ("speedup_vs_eager", "x eager", "{:.1f}"),
    ("speedup_vs_compile", "x compile", "{:.1f}"),
    ("saved_mb", "saved MB", "{:.1f}"),
    ("saved_ratio", "saved/x", "{:.2f}"),
    ("fwd_bw_frac", "fwd bw", "{:.0%}"),
    ("max_abs_err", "max err", "{:.1e}"),
]


def format_table(records: Sequence[Record]) -> str:
    header = [title for _, title, _ in TABLE_COLUMNS]
    rows = []
    for r in records:
        row = []
        for key, _, fmt in TABLE_COLUMNS:
            value = getattr(r, key)
            row.append("-" if isinstance(value, float) and math.isnan(value) else fmt.format(value))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def write_json(path: str, records: Sequence[Record], meta: dict) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "records": [dataclasses.asdict(r) for r in records]}, f, indent=2)


def write_csv(path: str, records: Sequence[Record]) -> None:
    fields = [f.name for f in dataclasses.fields(Record)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in records:
            writer.writerow(dataclasses.asdict(r))


def write_plot(path: str, records: Sequence[Record]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    fused = [r for r in records if r.impl == "fused"]
    by_key = {(r.op, r.shape, r.dtype, r.impl): r for r in records}
    names = [f"{r.op} {r.label or r.shape}" for r in fused]
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(fused) + 4), 4.5))
    for i, base in enumerate(("eager", "compile")):
        speed = [
            by_key[(r.op, r.shape, r.dtype, base)].fwd_bwd_ms / r.fwd_bwd_ms
            if (r.op, r.shape, r.dtype, base) in by_key
            else math.nan
            for r in fused
        ]
        ax_speed.bar([j + 0.4 * i for j in range(len(fused))], speed, width=0.4, label=f"vs {base}")
    ax_speed.set_ylabel("forward+backward speed-up (x)")
    ax_speed.set_xticks([j + 0.2 for j in range(len(fused))], names, rotation=60, ha="right", fontsize=7)
    ax_speed.legend()
    impls = [i for i in IMPLS if any(r.impl == i for r in records)]
    for i, impl in enumerate(impls):
        ratio = [
            by_key[(r.op, r.shape, r.dtype, impl)].saved_ratio if (r.op, r.shape, r.dtype, impl) in by_key else 0
            for r in fused
        ]
        ax_mem.bar([j + i / (len(impls) + 1) for j in range(len(fused))], ratio, width=1 / (len(impls) + 1), label=impl)
    ax_mem.set_ylabel("saved for backward / input size")
    ax_mem.set_xticks(range(len(fused)), names, rotation=60, ha="right", fontsize=7)
    ax_mem.legend()
    fig.suptitle(f"gateshift-bench on {records[0].device}, {records[0].dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


class Progress:
    """A one-line progress bar on stderr when it is a terminal (no dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.0f}s {what[:40]:40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateshift-bench",
        description="Benchmark the fused gateshift ops against the published modules (eager and torch.compile).",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--quick", action="store_true", help="the DESIGN.md reference shape only (under a minute on 2 cores)")
    p.add_argument("--preset", action="append", choices=PRESETS, help="shapes from real GSM placements (repeatable)")
    p.add_argument("--shape", action="append", type=parse_shape, metavar="B,T,C,H,W", help="a custom shape (repeatable)")
    p.add_argument("--frames", default="8,16", help="frames per clip for presets (default: 8,16)")
    p.add_argument("--clips", type=int, default=None, help="clips per batch for presets (default: 2 on cpu, 32 on cuda)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated ops (default: {','.join(OPS)})")
    p.add_argument("--model", choices=("on", "off"), default=None,
                   help="the model-level case (default: on with --quick or no shapes given)")
    p.add_argument("--model-size", type=int, default=None,
                   help="frame size of the model-level case (default: 64 with --quick, else 112)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated implementations (default: {','.join(IMPLS)})")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement (medians reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    p.add_argument("--compile-model", action="store_true", help="also torch.compile the model-level case (slow on CPUs)")
    p.add_argument("--json", metavar="PATH", help="write one record per (case, impl) as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the records as CSV")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of speed-up and memory per case (needs matplotlib)")
    p.add_argument("--profile", metavar="DIR", help="write torch.profiler traces (TensorBoard) to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    args.ops = [o for o in args.ops.split(",") if o]
    for o in args.ops:
        if o not in OPS:
            parser.error(f"--ops: unknown op {o!r}; choose from {','.join(OPS)}")
    args.impls = [i for i in args.impls.split(",") if i]
    for i in args.impls:
        if i not in IMPLS:
            parser.error(f"--impls: unknown implementation {i!r}; choose from {','.join(IMPLS)}")
    try:
        args.frames = [int(f) for f in args.frames.split(",")]
    except ValueError:
        parser.error(f"--frames wants comma-separated integers, got {args.frames!r}")
    if args.clips is None:
        args.clips = 2 if args.device.type == "cpu" else 32
    args.model_clips = 2 if args.device.type == "cpu" else 16
    if args.warmup is None:
        args.warmup = 3 if args.device.type == "cpu" else 10
    if args.repeat is None:
        args.repeat = (15 if args.quick else 10) if args.device.type == "cpu" else 50
    if args.repeat < 2:
        parser.error("--repeat must be at least 2 (a median and a spread)")
    shapes = list(args.shape or [])
    presets = list(args.preset or [])
    default_run = args.quick or (not shapes and not presets)
    if default_run:
        presets = presets or ["reference"]
    args.model = (args.model == "on") if args.model is not None else default_run
    if args.model_size is None:
        args.model_size = 64 if args.quick else 112
    if args.model_size < 16:
        parser.error(f"--model-size must be at least 16, got {args.model_size}")
    for name in presets:
        shapes += preset_shapes(name, args.clips, [8] if name == "reference" else args.frames)
    args.shapes = shapes
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    bandwidth = copy_bandwidth(device)
    meta = {
        "gateshift": gateshift.__version__,
        "torch": torch.__version__,
        "device": device_name(device),
        "dtype": args.dtype,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "command": " ".join(["gateshift-bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"# {meta['command']}")
    print(f"# {meta['device']}, torch {meta['torch']}, {args.dtype}, copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"medians of {args.repeat} after {args.warmup} warm-up")
    gen = torch.Generator().manual_seed(args.seed)
    workloads = [lambda spec=OPS[o], s=s: op_workload(spec, s, gen) for o in args.ops for s in args.shapes]
    if args.model:
        # Compiling the whole network takes minutes on a CPU: the model-level case
        # compares eager and fused unless --impls names compile alone.
        workloads.append(lambda: model_workload(args.model_clips, 8, args.model_size, gen))
    progress = Progress(len(workloads), enabled=not args.no_progress)
    records: list[Record] = []
    for make in workloads:
        w = make()
        impls = args.impls
        if w.floor_bytes is None and len(impls) > 1 and not args.compile_model:
            impls = [i for i in impls if i != "compile"]
        # A network step costs as much as hundreds of op calls: fewer repetitions.
        model_case = w.floor_bytes is None
        records += benchmark_workload(
            w, dtype, device, impls,
            warmup=max(1, args.warmup // 2) if model_case else args.warmup,
            repeat=max(3, args.repeat // 3) if model_case else args.repeat,
            bandwidth=bandwidth, gen=gen, profile_dir=args.profile,
        )
        progress.step(f"{w.op} {w.shape}")
    print(format_table(records))
    if args.json:
        write_json(args.json, records, meta)
    if args.csv:
        write_csv(args.csv, records)
    if args.plot:
        write_plot(args.plot, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
