"""MEASURED kernel times of gateshift's CUDA ops on a real GPU, case by case.

The counterpart of :mod:`gateshift.testing.gpu_model`: the same cases
(:mod:`gateshift.testing.cases`), the same records, but each launch's time is measured
(CUPTI kernel durations through ``torch.profiler``, median of ``--repeat`` runs after a
warm-up) instead of modeled::

    python -m gateshift.testing.gpu_profile --preset bn-inception --only 3a --clips 32 --frames 8 \\
        --dtype float32 --json measured.json

``floor_us`` is DESIGN.md section 3's bytes at the copy bandwidth measured on the same
GPU in the same run (a device-to-device copy, read + write); ``ratio`` is the case's
summed kernel medians over it. Launch gaps are not counted (the kernels' own time).

``--once`` runs every step once with no warm-up and no timing, inside NVTX ranges named
"<op> <where> <step>": the run to put under Nsight Compute (``ncu --nvtx``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..bench.timing import copy_bandwidth
from ..bench.workloads import PRESETS, parse_shape
from .cases import DTYPES, case_fields, case_heading, case_steps, floor_bytes, parse_ops, select_shapes

BANNER = "MEASURED on a GPU (CUPTI kernel durations, medians)"


def short_kernel_name(name: str) -> str:
    """'void gateshift::cuda::gate_shift_forward_kernel<float, true>(...)' ->
    'gate_shift_forward_kernel<float, true>' (the emulator's and the model's name)."""
    name = name.replace("(anonymous namespace)::", "").split("(", 1)[0].removeprefix("void ").strip()
    m = re.search(r"(\w+)(<.*>)?$", name)
    return (m.group(1) + (m.group(2) or "")) if m else name


def kernel_times(step, repeat: int) -> list[tuple[str, list[float]]]:
    """[(kernel, [microseconds per run])] of the kernels ``step`` launches, in launch order,
    from one profiler session of ``repeat`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            step()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and not e.name.startswith(("Memset", "Memcpy"))), key=lambda e: e.time_range.start)
    if not kernels or len(kernels) % repeat:
        raise RuntimeError(f"{len(kernels)} kernels in {repeat} runs of a step: not the same kernels each run")
    per_run = len(kernels) // repeat
    runs = [kernels[i * per_run:(i + 1) * per_run] for i in range(repeat)]
    names = [short_kernel_name(e.name) for e in runs[0]]
    if any([short_kernel_name(e.name) for e in r] != names for r in runs):
        raise RuntimeError("a step launched different kernels from run to run")
    return [(k, [r[i].time_range.elapsed_us() for r in runs]) for i, k in enumerate(names)]


def iqr(values: Sequence[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


def profile_op(op: str, shape, dtype: torch.dtype, device: torch.device, bandwidth: float, repeat: int,
               seed: int = 0) -> list[dict]:
    run = case_steps(op, shape, dtype, torch.ops.gateshift, torch.Generator().manual_seed(seed), device)
    for step in run.steps.values():  # warm-up, and the results later steps read
        step()
    torch.cuda.synchronize(device)
    measured = {name: kernel_times(step, repeat) for name, step in run.steps.items()}
    records = []
    for (case, direction), names in run.cases.items():
        launches = [dict(kernel=k, measured_us=round(statistics.median(us), 3), iqr_us=round(iqr(us), 3))
                    for name in names for k, us in measured[name]]
        total = sum(m["measured_us"] for m in launches)
        floor_us = floor_bytes(op, case, direction, shape, dtype) / bandwidth * 1e6
        records.append(dict(
            measured=BANNER, gpu=torch.cuda.get_device_name(device), **case_fields(op, case, direction, shape, dtype),
            repeat=repeat, launches=launches,
            measured_us=round(total, 3), floor_us=round(floor_us, 3), ratio=round(total / floor_us, 3),
        ))
    return records


def run_once(op: str, shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
    run = case_steps(op, shape, dtype, torch.ops.gateshift, torch.Generator().manual_seed(seed), device)
    for name, step in run.steps.items():
        with torch.cuda.nvtx.range(f"{op} {shape.label.split()[-1]} {name}"):
            step()
    torch.cuda.synchronize(device)


def format_table(records: Sequence[dict], bandwidth: float) -> str:
    lines = [f"# {BANNER}; floors at the measured copy bandwidth {bandwidth / 1e12:.2f} TB/s"]
    for r in records:
        lines.append("")
        lines.append(case_heading(r, "measured_us"))
        for m in r["launches"]:
            lines.append(f"  {m['kernel']:<44} {m['measured_us']:8.1f} us (IQR {m['iqr_us']:.1f})")
    return "\n".join(lines)


def compare(before: Path, after: Path, only: set[str] | None = None) -> str:
    """A table of two runs' records (JSON of --json), case by case: the measured times
    and after / before."""
    def load(path):
        return {(r["op"], r["case"], r["direction"], r["where"], r["dtype"]): r
                for r in json.loads(Path(path).read_text())["records"]}
    old, new = load(before), load(after)
    lines = [f"# {BANNER}: {after} against {before}",
             f"{'case':<44} {'before us':>10} {'after us':>10} {'after/before':>13} {'after/floor':>12}"]
    for key, r in new.items():
        if key not in old or (only and key[3].split()[-1] not in only):
            continue
        o = old[key]
        lines.append(f"{' '.join((key[0], key[1], key[2], key[3].split()[-1], key[4])):<44} "
                     f"{o['measured_us']:>10.1f} {r['measured_us']:>10.1f} "
                     f"{r['measured_us'] / o['measured_us']:>13.2f} "
                     f"{r['ratio']:>12.2f}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateshift.testing.gpu_profile",
                                description=f"{BANNER}: gateshift's CUDA kernels, case by case.")
    p.add_argument("--preset", action="append", choices=PRESETS, help="network placements (repeatable)")
    p.add_argument("--shape", action="append", type=parse_shape, default=[], metavar="B,T,C,H,W")
    p.add_argument("--ops", default="gsm,gsf,tsm")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--only", default=None, help="comma-separated placement labels to keep (e.g. 3a,res5)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs of each step (medians reported)")
    p.add_argument("--once", action="store_true", help="run each step once in NVTX ranges (for ncu), no timing")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                   help="print two runs' JSON side by side (no GPU needed) and exit")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.compare:
        only = {v.strip() for v in args.only.split(",")} if args.only else None
        print(compare(*args.compare, only))
        return []
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit("gpu_profile measures CUDA kernels: it needs a CUDA device (--device cuda[:N])")
    ops = parse_ops(args.ops)
    if args.repeat < 2:
        raise SystemExit("--repeat must be at least 2")
    shapes = select_shapes(args.shape, args.preset, args.clips, args.frames, args.only)
    import gateshift  # noqa: F401  (registers torch.ops.gateshift)

    dtype = DTYPES[args.dtype]
    with torch.cuda.device(device):
        if args.once:
            for shape in shapes:
                for op in ops:
                    run_once(op, shape, dtype, device)
            return []
        bandwidth = copy_bandwidth(device, repeat=20)
        records = []
        for shape in shapes:
            for op in ops:
                measured = profile_op(op, shape, dtype, device, bandwidth, args.repeat)
                records += measured
                print(format_table(measured, bandwidth), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(measured=BANNER, copy_bytes_per_s=bandwidth, records=records), indent=1))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
