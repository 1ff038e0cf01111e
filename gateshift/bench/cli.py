"""The ``gateshift-bench`` command line: options, their defaults per device, and the run."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence

import torch

import gateshift
from gateshift.bench.report import format_table, write_csv, write_json, write_plot
from gateshift.bench.runner import benchmark_all, device_name, network_repeat, network_warmup
from gateshift.bench.timing import copy_bandwidth
from gateshift.bench.workloads import (
    DEFAULT_IMPLS, DEFAULT_OPS, IMPLS, NETWORKS, OPS, PRESETS, network_workload, op_workload, parse_shape,
    preset_shapes,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateshift-bench",
        description="Benchmark the fused gateshift ops against the published modules (eager and torch.compile).",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--quick", action="store_true",
                   help="the DESIGN.md reference shape and BN-Inception + GSM (about a minute on 2 cores)")
    p.add_argument("--preset", action="append", choices=PRESETS,
                   help="shapes from real GSM placements (repeatable)")
    p.add_argument("--shape", action="append", type=parse_shape, metavar="B,T,C,H,W",
                   help="a custom shape (repeatable)")
    p.add_argument("--frames", default="8,16", help="frames per clip for presets (default: 8,16)")
    p.add_argument("--clips", type=int, default=None,
                   help="clips per batch for presets (default: 2 on cpu, 32 on cuda)")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS),
                   help=f"comma-separated ops of {','.join(OPS)} (default: {','.join(DEFAULT_OPS)})")
    p.add_argument("--network", action="append", metavar="NAME", choices=[*NETWORKS, "all", "none"],
                   help="a whole published network, training step and inference, published modules against "
                        f"ours (repeatable; {', '.join(NETWORKS)}, all (those with temporal modules), none; default: bninception-gsm with "
                        "--quick or no shapes given, else none)")
    p.add_argument("--network-clips", type=int, default=None,
                   help="clips of 8 frames per network step (default: 1 on cpu, 8 on cuda)")
    p.add_argument("--network-size", type=int, default=None,
                   help="frame size of the network cases (default: the authors' crop, 224 or 229)")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated implementations of {','.join(IMPLS)} (default: {','.join(DEFAULT_IMPLS)}); "
                        "op: GSM's and GSF's fused op alone, the BN folded beforehand (no batch statistics, no "
                        "module around it)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement (medians reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    p.add_argument("--compile-model", action="store_true",
                   help="also torch.compile the published network in network cases (minutes on CPUs)")
    p.add_argument("--roofline", action="store_true",
                   help="also measure the matrix-product (sgemm) rate on the same threads, just before each GSM/GSF "
                        "case, and report the case's useful FLOP rate (54 FLOP per element forward, 162 "
                        "forward+backward) as a fraction of it; "
                        "on the CPU also every case's minor page faults per training step")
    p.add_argument("--channels-last", action="store_true",
                   help="inputs, output gradients and network weights in channels_last, as in a channels_last "
                        "network (the CPU kernels read it in place)")
    p.add_argument("--json", metavar="PATH", help="write one record per (case, impl) as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the records as CSV")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of speed-up and memory per case (needs matplotlib)")
    p.add_argument("--profile", metavar="DIR", help="write torch.profiler traces (TensorBoard) to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options with every default filled in for the chosen device, and
    ``shapes``, the op shapes to run (presets expanded)."""
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
    if args.network_clips is None:
        args.network_clips = 1 if args.device.type == "cpu" else 8
    if args.network_clips < 1:
        parser.error(f"--network-clips must be positive, got {args.network_clips}")
    if args.warmup is None:
        args.warmup = 3 if args.device.type == "cpu" else 10
    if args.repeat is None:
        args.repeat = (15 if args.quick else 10) if args.device.type == "cpu" else 50
    if args.repeat < 2:
        parser.error("--repeat must be at least 2 (a median and a spread)")
    shapes = list(args.shape or [])
    presets = list(args.preset or [])
    default_run = args.quick or (not shapes and not presets and not args.network)
    if default_run:
        presets = presets or ["reference"]
    networks = args.network or (["bninception-gsm"] if default_run else [])
    if "all" in networks:  # every network with temporal modules (each runs its TSN as baseline)
        networks = [name for name, (_, temporal) in NETWORKS.items() if temporal is not None]
    args.networks = [n for n in dict.fromkeys(networks) if n != "none"]
    if args.network_size is not None and args.network_size < 32:
        parser.error(f"--network-size must be at least 32, got {args.network_size}")
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
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "command": " ".join(["gateshift-bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"# {meta['command']}")
    print(f"# {meta['device']}, torch {meta['torch']}, {args.dtype}, copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          + ("sgemm measured before each case, " if args.roofline else "")
          + ("channels_last, " if args.channels_last else "")
          + f"medians of {args.repeat} after {args.warmup} warm-up"
          + (f" (networks: {network_repeat(args.repeat)} interleaved rounds after {network_warmup(args.warmup)})"
             if args.networks else ""))
    gen = torch.Generator().manual_seed(args.seed)
    workloads = [lambda spec=OPS[o], s=s: op_workload(spec, s, gen) for o in args.ops for s in args.shapes]
    workloads += [lambda n=n: network_workload(n, args.network_clips, 8, gen, args.network_size) for n in args.networks]
    records = benchmark_all(
        workloads, dtype, device, args.impls,
        warmup=args.warmup, repeat=args.repeat, bandwidth=bandwidth, gen=gen, roofline=args.roofline,
        compile_model=args.compile_model, profile_dir=args.profile, progress=not args.no_progress,
        memory_format=torch.channels_last if args.channels_last else torch.contiguous_format,
    )
    print(format_table(records))
    # The run's sgemm rates, one a case, in one number each for summaries: median and range.
    per_case = {(r.op, r.shape, r.label): r.matmul_gflops for r in records if not math.isnan(r.matmul_gflops)}
    rates = sorted(per_case.values())
    meta["matmul_GFLOPs"] = statistics.median(rates) if rates else None
    meta["matmul_GFLOPs_range"] = [rates[0], rates[-1]] if rates else None
    if rates:
        print(f"# sgemm before each case: {rates[0]:.0f}-{rates[-1]:.0f} GFLOP/s, median {meta['matmul_GFLOPs']:.0f}")
    if args.json:
        write_json(args.json, records, meta)
    if args.csv:
        write_csv(args.csv, records)
    if args.plot:
        write_plot(args.plot, records)
    return 0
