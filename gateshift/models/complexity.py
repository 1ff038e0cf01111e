"""Parameters and FLOPs of the published networks, beside the papers' figures.

    python -m gateshift.models [--frames 8] [--classes 174]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward
pass of one clip and reported as multiply-adds (the counter's FLOPs / 2), which is
what the papers call FLOPs. The counter counts convolutions and matrix products
only, so the papers' totals run slightly higher (their counts include some
element-wise layers). Parameters include the classifier for ``--classes`` classes
(Something-Something V1 has 174, as in the papers' tables).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from .gst_resnet import gst_resnet50
from .zoo import NETWORKS, tsn

# (backbone, temporal) -> (params in M, GFLOPs, frames, source), Something-Something V1.
PUBLISHED = {
    ("bninception", None): (10.45, 16.37, 8, "GSM paper, Tab. 2"),
    ("bninception", "gsm"): (10.5, 16.46, 8, "GSM paper, Tab. 2"),
    ("inceptionv3", "gsm"): (22.21, 26.85, 8, "GSM paper, Tab. 4"),
    ("resnet50", "tsm"): (None, 33, 8, "GST paper, Tab. 3"),
    ("gst-resnet50", None): (21.0, 29.5, 8, "GST paper, Tab. 2 and 3"),
}


def count(backbone: str, temporal: str | None, frames: int = 8, classes: int = 174) -> tuple[int, int]:
    """(parameters, multiply-adds of one forward pass over one clip of ``frames``) of
    ``tsn(backbone, temporal)``, or of ``gst_resnet50()`` for backbone ``"gst-resnet50"``."""
    if backbone == "gst-resnet50":
        net = gst_resnet50(num_classes=classes).eval()
        x = torch.zeros(1, 3, frames, 224, 224)  # values do not change the count
    else:
        net = tsn(backbone, temporal, num_classes=classes, num_segments=frames).eval()
        x = torch.zeros(frames, 3, net.input_size, net.input_size)
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return params, counter.get_total_flops() // 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateshift.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=174)
    args = parser.parse_args(argv)
    print(f"| network | input | params (M) | GFLOPs, {args.frames} frames | published (params, GFLOPs, frames) |")
    print("|---|---|---|---|---|")
    for backbone, temporal in (*NETWORKS, ("gst-resnet50", None)):
        params, macs = count(backbone, temporal, args.frames, args.classes)
        size = 229 if backbone == "inceptionv3" else 224
        name = backbone if backbone == "gst-resnet50" else f"{backbone}-{temporal or 'tsn'}"
        published = PUBLISHED.get((backbone, temporal))
        paper = ""
        if published is not None:
            p, f, n, source = published
            paper = f"{'params not given' if p is None else f'{p}M'}, {f}G, {n} frames ({source})"
        print(f"| {name} | {size}x{size} | {params / 1e6:.2f} | {macs / 1e9:.2f} | {paper} |")


if __name__ == "__main__":
    main()
