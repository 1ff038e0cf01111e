"""A GPU cost MODEL of gateshift's CUDA kernels, from counts taken by the emulator.

No GPU runs here. For each case (an op at a shape and dtype, forward or backward),
this runs the real CUDA kernel code under the CPU emulator with access counting on
(:func:`gateshift.testing.cuda_emulator.record_launches`), on a sample of each
launch's blocks, and turns the counts into a lower-bound time from a GPU's published
figures::

    python -m gateshift.testing.gpu_model --gpu h100 --preset bn-inception --clips 32 --frames 8 \\
        --dtype float32 --json out.json

Per launch, the sampled counts are scaled to the whole grid, and:

* DRAM bytes are the distinct 32-byte sectors the grid touches (compulsory traffic),
  plus the re-requested sectors that L2 cannot have kept: those whose reuse distance in
  their block (new bytes touched between the two requests), times the blocks resident
  on the chip at once, exceeds the L2 (an LRU model). The grid's distinct sectors are
  estimated per tensor of the op: the sampled blocks' distinct sectors in it, scaled to
  the grid, but at most the tensor's own (a block that also reads its neighbours' data,
  a tile's halo or GSF's neighbouring frame, reads sectors that other blocks of the grid
  touch anyway: scaled alone, they counted twice);
* L2 -> SM bytes are the 32-byte sectors the warps request, less the re-requests that the
  SM's L1 still holds (the same reuse-distance model, for the SM's resident blocks, in the
  part of the L1/shared array their shared memory leaves). The counts do not tell loads
  from stores: stores are treated as loads, though on the GPU they go through to L2;
* shared-memory time is the wavefronts (bank conflicts included) of the busiest SM's
  blocks, one wavefront per clock;
* issue time is the counted warp instructions (global and shared accesses, shuffles,
  barriers: arithmetic is not counted) of the busiest SM's blocks, four per clock;
* occupancy (resident blocks per SM, from registers in the built cubin, threads and
  shared memory) sets the wave size, and a grid that ends in a partial wave pays for
  the whole wave in its memory time.

The modeled time is the largest of the four. It ignores latency (it assumes enough
loads in flight), launch overhead and arithmetic; it is a model, a lower bound by
construction, and never a measurement. ``ratio`` is the modeled time over the case's
floor: DESIGN.md section 3's bytes per element at the GPU's DRAM bandwidth.

The training cases run the module's training node (gateshift._training_node): forward,
the batch statistics and the op; backward, the op's backward and the batch statistics'
backward, which adds their gradient to the op's grad_x. Each is a kernel of ours, counted
as above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..bench.workloads import PRESETS, Shape, parse_shape
from . import cuda_emulator
from .cases import DTYPES, case_fields, case_heading, case_steps, floor_bytes, parse_ops, select_shapes

__all__ = ["GPUS", "GPU", "model_op", "model_launch", "format_table", "main"]

BANNER = "MODEL (emulator counts and published GPU figures; not a measurement)"


@dataclasses.dataclass(frozen=True)
class GPU:
    """Published figures of one GPU (its datasheet; L2 bandwidth from microbenchmark reports)."""

    name: str
    arch: str  # the cubin whose registers count
    sms: int
    clock_hz: float  # boost clock
    dram_bytes_per_s: float
    l2_bytes: int
    l2_bytes_per_s: float
    shared_bytes_per_sm: int  # what blocks can take, after the L1 carve-out
    l1_and_shared_bytes_per_sm: int  # one array: what shared memory leaves caches global loads
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    shared_reserved_per_block: int = 1024  # the runtime's own share of each block's


GPUS = {
    "h100": GPU("NVIDIA H100 SXM5 80GB", "sm_90", sms=132, clock_hz=1.98e9, dram_bytes_per_s=3.35e12,
                l2_bytes=50 * 2**20, l2_bytes_per_s=7.0e12, shared_bytes_per_sm=228 * 1024,
                l1_and_shared_bytes_per_sm=256 * 1024),
    "a100": GPU("NVIDIA A100 SXM4 80GB", "sm_80", sms=108, clock_hz=1.41e9, dram_bytes_per_s=2.039e12,
                l2_bytes=40 * 2**20, l2_bytes_per_s=4.8e12, shared_bytes_per_sm=164 * 1024,
                l1_and_shared_bytes_per_sm=192 * 1024),
}


# Blocks of each launch the emulator runs (and at least 1 in 256); the counts are scaled
# to the grid. A quick look: without the L1 tier of model_launch, at bn-inception 3a
# (16 tiles of four sizes) 4 blocks put GSM's forward at 1.78x and backward at 3.33x,
# 16 blocks at 2.29x and 4.04x; at 4a (2 x 2 tiles) 5.52x and 6.74x against 5.08x and
# 6.51x. Figures: --sample-blocks 16.
DEFAULT_SAMPLE_BLOCKS = 4

_REGISTERS_FILE = Path(__file__).with_name("kernel_registers.json")


def registers(gpu: GPU) -> dict[str, int]:
    """{kernel key: registers per thread} of ``gpu``'s architecture in the built cubins
    (kernel_registers.json, written by tools/kernel_registers.py and checked against
    the build by tests/test_cuda_build.py)."""
    table = json.loads(_REGISTERS_FILE.read_text())
    if gpu.arch not in table:
        raise ValueError(f"no register counts for {gpu.arch} in {_REGISTERS_FILE.name}; have {sorted(table)}")
    return table[gpu.arch]


_SCALAR_NAMES = {"float": "float", "double": "double", "c10::Half": "half", "c10::BFloat16": "bfloat16"}


def kernel_key(emulated_name: str) -> str:
    """The cubin table's key of an emulated launch's kernel: "gate_shift_forward_kernel<float, true>"
    -> "gate_shift_forward_kernel<means> float" (tests/test_cuda_build.py names them so)."""
    m = re.fullmatch(r"(\w+)<([^,>]+)(?:, ([^>]+))?>", emulated_name)
    if not m:
        raise ValueError(f"unexpected kernel name {emulated_name!r}")
    kernel, scalar, second = m.group(1), _SCALAR_NAMES[m.group(2)], m.group(3)
    if kernel == "gate_shift_forward_kernel" and second == "true":
        kernel += "<means>"
    elif kernel == "sum_partials_kernel" and second == "float" and scalar in ("half", "bfloat16"):
        kernel += "<float affine>"
    return f"{kernel} {scalar}"


def resident_blocks(gpu: GPU, regs: int, threads: int, shared_bytes: int) -> int:
    """Blocks one SM holds at once, as the occupancy calculator counts them."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(regs * 32 / 256) * 256  # allocated per warp in units of 256
    by_registers = gpu.registers_per_sm // (regs_per_warp * warps)
    by_threads = gpu.threads_per_sm // (warps * 32)
    by_shared = gpu.shared_bytes_per_sm // (shared_bytes + gpu.shared_reserved_per_block)
    return max(0, min(by_registers, by_threads, by_shared, gpu.blocks_per_sm))


def model_launch(gpu: GPU, launch: dict, regs: int) -> dict:
    """The modeled time of one counted launch (a record of record_launches(count_accesses=True)):
    the record (its counts are of the sampled blocks) with the whole grid's ``unique_bytes``,
    ``dram_bytes`` and ``l2_bytes``, the occupancy, each limit and the modeled time."""
    blocks, sampled = launch["blocks"], launch["sampled_blocks"]
    scale = blocks / sampled
    resident = resident_blocks(gpu, regs, launch["threads"], launch["shared_bytes"])
    if resident == 0:
        raise ValueError(f"{launch['kernel']} cannot run: no block fits an SM of {gpu.name}")
    slots = resident * gpu.sms
    waves = math.ceil(blocks / slots)
    tail = waves * slots / blocks if waves > 1 else 1.0  # a partial last wave holds its SMs
    busiest_sm_blocks = math.ceil(blocks / gpu.sms)

    # A re-requested sector is still in a cache when, between its two requests, the
    # blocks sharing that cache touched fewer new bytes than it holds: each block its
    # reuse distance (the bucket's lower end), side by side. L1: the SM's resident
    # blocks, in what their shared memory leaves of the array; L2: every resident block.
    reuse = launch["reuse_log2_bytes"]
    distance = lambda k: 0 if k == 0 else 2 ** (k - 1)  # noqa: E731
    l1 = gpu.l1_and_shared_bytes_per_sm - min(blocks, resident) * (launch["shared_bytes"] + gpu.shared_reserved_per_block)
    l1_hits = sum(count for k, count in enumerate(reuse) if distance(k) * min(blocks, resident) <= l1)
    concurrent = min(blocks, slots)
    l2_misses = sum(count for k, count in enumerate(reuse) if distance(k) * concurrent > gpu.l2_bytes)
    requested = (launch["global_sectors"] - l1_hits) * 32 * scale
    unique = launch["grid_unique_global_bytes"]
    dram = unique + l2_misses * 32 * scale

    per_block = lambda key: launch[key] / sampled  # noqa: E731
    instructions = (per_block("global_requests") + per_block("shared_requests") + per_block("shuffles")
                    + per_block("barriers") * launch["threads"] / 32)
    limits_us = {
        "dram": dram / gpu.dram_bytes_per_s * tail * 1e6,
        "l2": requested / gpu.l2_bytes_per_s * tail * 1e6,
        "shared": busiest_sm_blocks * per_block("shared_wavefronts") / gpu.clock_hz * 1e6,
        "issue": busiest_sm_blocks * instructions / (4 * gpu.clock_hz) * 1e6,
    }
    bound = max(limits_us, key=limits_us.get)
    return dict(
        launch, registers=regs, resident_blocks_per_sm=resident, waves=waves, unique_bytes=round(unique),
        dram_bytes=round(dram), l2_bytes=round(requested), limits_us={k: round(v, 3) for k, v in limits_us.items()},
        bound=bound, modeled_us=round(limits_us[bound], 3),
    )


def model_op(gpu: GPU, op: str, shape: Shape, dtype: torch.dtype, sample_blocks: int = DEFAULT_SAMPLE_BLOCKS,
             seed: int = 0) -> list[dict]:
    """The cases of one op at one shape and dtype (:mod:`gateshift.testing.cases`):
    forward and backward of the op (BN folded) and, for GSM and GSF, of the module in
    training mode. A record per case."""
    run = case_steps(op, shape, dtype, cuda_emulator.ops, torch.Generator().manual_seed(seed))
    launches = {}
    for name, step in run.steps.items():
        with cuda_emulator.record_launches(count_accesses=True, sample_blocks=sample_blocks) as launches[name]:
            step()
    regs = registers(gpu)
    records = []
    for (case, direction), names in run.cases.items():
        modeled = [model_launch(gpu, launch, regs[kernel_key(launch["kernel"])])
                   for name in names for launch in launches[name]]
        floor_us = floor_bytes(op, case, direction, shape, dtype) / gpu.dram_bytes_per_s * 1e6
        total = sum(m["modeled_us"] for m in modeled)
        records.append(dict(
            model=BANNER, gpu=gpu.name, **case_fields(op, case, direction, shape, dtype), sample_blocks=sample_blocks,
            launches=modeled, modeled_us=round(total, 3), floor_us=round(floor_us, 3),
            ratio=round(total / floor_us, 3),
        ))
    return records


def format_table(records: Sequence[dict]) -> str:
    """A table per case: its launches and the total against the floor."""
    lines = [f"# {BANNER}"]
    for r in records:
        lines.append("")
        lines.append(case_heading(r, "modeled_us"))
        for m in r["launches"]:
            lines.append(
                f"  {m['kernel']:<44} {m['blocks']:>6} blocks x {m['threads']}, {m['registers']} regs, "
                f"{m['resident_blocks_per_sm']}/SM, {m['waves']} wave(s)  dram {m['dram_bytes'] / 1e6:8.2f} MB  "
                f"l2 {m['l2_bytes'] / 1e6:8.2f} MB  smem wf/req "
                f"{m['shared_wavefronts'] / max(1, m['shared_requests']):.2f}  {m['modeled_us']:8.1f} us ({m['bound']})")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateshift.testing.gpu_model",
        description=f"{BANNER}: modeled GPU times of gateshift's CUDA kernels, from emulator counts.")
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    p.add_argument("--preset", action="append", choices=PRESETS,
                   help="network placements (repeatable; default bn-inception unless --shape is given)")
    p.add_argument("--shape", action="append", type=parse_shape, default=[], metavar="B,T,C,H,W",
                   help="a shape of x to model (repeatable)")
    p.add_argument("--ops", default="gsm,gsf,tsm", help="comma-separated: gsm, gsf, tsm")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--only", default=None, help="comma-separated placement labels to keep (e.g. 3a,res5)")
    p.add_argument("--sample-blocks", type=int, default=DEFAULT_SAMPLE_BLOCKS,
                   help="blocks of each launch the emulator runs (the counts are scaled to the grid); "
                        "the default is a quick look; 16 takes 4x the time")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    ops = parse_ops(args.ops)
    if args.clips < 1 or args.frames < 1 or args.sample_blocks < 1:
        raise SystemExit("--clips, --frames and --sample-blocks must be positive")
    gpu = GPUS[args.gpu]
    shapes = select_shapes(args.shape, args.preset, args.clips, args.frames, args.only)
    records = []
    modeled: dict[tuple, list[dict]] = {}  # placements of one shape (bn-inception's 3a and 3b) count once
    with cuda_emulator.num_sms(gpu.sms):  # the launch configuration the GPU would get
        for shape in shapes:
            for op in ops:
                key = (op, shape.clips, shape.frames, shape.channels, shape.height, shape.width)
                if key not in modeled:
                    modeled[key] = model_op(gpu, op, shape, DTYPES[args.dtype], args.sample_blocks)
                records += [dict(r, where=shape.label) for r in modeled[key]]
                print(format_table(records[-len(modeled[key]):]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(model=BANNER, gpu=dataclasses.asdict(gpu), records=records), indent=1))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
