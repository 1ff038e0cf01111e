"""The extra memory of one forward and backward of an op on the CPU, measured: the peak
resident memory of this process during the call, minus what was resident before, minus
what the results themselves hold (the output, the gradient of x, and the gates GSM/GSF
save for backward). What remains is the ops' scratch and partial sums.

    python tools/peak_memory.py gate_shift 1 1 8 1 4194304     # op B T C H W (float32)

Prints one JSON line: {"op", "shape", "x_bytes", "extra_bytes"}. Run one measurement per
process: the peak (getrusage's ru_maxrss) only ever grows. tests/test_memory.py runs it.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch

import gateshift


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=["gate_shift", "gate_shift_fuse", "temporal_shift"])
    parser.add_argument("shape", type=int, nargs=5, metavar="B T C H W")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, T, C, H, W = args.shape
    x = torch.randn(B * T, C, H, W).requires_grad_()
    grad_out = torch.randn(B * T, C, H, W)
    weight = (torch.randn(2, C // 2, 3, 3, 3) * 0.1).requires_grad_()
    fuse_weight, fuse_bias = torch.randn(2, 2, 3, 3), torch.randn(2)
    before = peak_bytes()
    if args.op == "gate_shift":
        out = gateshift.gate_shift(x, weight, num_segments=T)
    elif args.op == "gate_shift_fuse":
        out = gateshift.gate_shift_fuse(x, weight, None, fuse_weight, fuse_bias, num_segments=T)
    else:
        out = gateshift.temporal_shift(x, T, 8)
    grad_x = torch.autograd.grad(out, x, grad_out)[0]
    held = out.nbytes + grad_x.nbytes
    if args.op != "temporal_shift":
        held += x.nbytes * 2 // C  # the gates, two planes a frame in float32
    print(json.dumps({"op": args.op, "shape": args.shape, "x_bytes": x.nbytes,
                      "extra_bytes": peak_bytes() - before - held}))


if __name__ == "__main__":
    main()
