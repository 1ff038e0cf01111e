"""What GCF-Net's fusion head costs next to its clip backbone, measured.

    python benchmarks/gcf_head_cost.py                       # CPU (or --device cuda)
    python benchmarks/gcf_head_cost.py --clips 10 --frames 8 --size 112

The backbone is the package's TSN-style ResNet with a GSM in each bottleneck and no
classifier (its clip descriptor: the consensus of the frame features); the head is
``gateshift.GatedClipFusion`` on those descriptors. Forward and forward+backward of each
part, timed on its own with the package's bench instrument (medians), and the head's
share of the whole network's parameters and time.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gateshift
from gateshift.bench.timing import time_calls
from gateshift.tsn import TSNResNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    backbone = TSNResNet(gateshift.GSM, num_segments=args.frames).to(device)
    backbone.head = nn.Identity()
    dim = backbone.blocks[-1].expand[0].out_channels
    head = gateshift.GatedClipFusion(dim, args.clips, args.classes).to(device)
    frames = torch.randn(args.videos * args.clips * args.frames, 3, args.size, args.size, device=device)
    descriptors = backbone(frames).detach().unflatten(0, (args.videos, args.clips))

    def forward_backward(module, x):
        def run():
            out = module(x)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
        return run

    def forward(module, x):
        def run():
            with torch.no_grad():
                module(x)
        return run

    rows = []
    for name, module, x in (("backbone", backbone, frames), ("head", head, descriptors.requires_grad_())):
        fwd = time_calls(forward(module, x), device, warmup=args.warmup, repeat=args.repeat).median_ms
        fwd_bwd = time_calls(forward_backward(module, x), device, warmup=args.warmup, repeat=args.repeat).median_ms
        rows.append((name, sum(p.numel() for p in module.parameters()), fwd, fwd_bwd))
    total = [sum(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"# python benchmarks/gcf_head_cost.py --device {args.device} --videos {args.videos} --clips {args.clips} "
          f"--frames {args.frames} --size {args.size} --classes {args.classes} --repeat {args.repeat}")
    print(f"# {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"descriptor dim {dim}, medians of {args.repeat}")
    print(f"{'part':10} {'parameters':>12} {'fwd ms':>10} {'fwd+bwd ms':>12}")
    for name, params, fwd, fwd_bwd in rows:
        print(f"{name:10} {params:>12,} {fwd:>10.3f} {fwd_bwd:>12.3f}")
    head_row = rows[1]
    print(f"head share: {head_row[1] / total[0]:.2%} of parameters, {head_row[2] / total[1]:.3%} of forward, "
          f"{head_row[3] / total[2]:.3%} of forward+backward")


if __name__ == "__main__":
    main()
