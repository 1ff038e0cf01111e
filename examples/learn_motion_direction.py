"""Proof that GSM (and GST) learn what they are for: the direction of motion of a moving pattern.

Each clip shows one random texture drifting right, left, down or up (with wrap-around),
starting at a random offset. Every frame alone is a randomly shifted random texture, the
same distribution whatever the direction, so a 2-D network that averages per-frame scores
(TSN) can do no better than chance (25%). The same network with ``gateshift.GSM`` in its
blocks sees neighbouring frames through the shifted channels and learns the direction;
reversing a clip's frames reverses the motion, and its prediction flips to the opposite.
With ``gateshift.GST`` in place of each block's 3x3 convolution, the network's temporal
convolutions see neighbouring frames too.

    python examples/learn_motion_direction.py            # under half a minute on two CPU cores
    python examples/learn_motion_direction.py --steps 400 --size 32

Prints the learning curve (held-out accuracy) of each network (TSN, TSN + GSM, TSN with
GST) and the flip rate.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import gateshift
from gateshift.tsn import TSNResNet

# (dy, dx) per frame, in units of the speed; the class index is the position here.
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))
NAMES = ("right", "left", "down", "up")
OPPOSITE = torch.tensor([1, 0, 3, 2])  # the class of the same clip played backwards


def moving_pattern_clips(
    clips: int, frames: int, size: int, gen: torch.Generator, speed: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``clips`` random clips: ``(clips * frames, 1, size, size)`` frames (TSN layout) and
    ``(clips,)`` direction labels. The texture is smoothed noise (so the stride-2 stem does
    not alias it away), unit variance; motion wraps around, so no frame has an edge that
    could give the direction away."""
    labels = torch.randint(0, len(DIRECTIONS), (clips,), generator=gen)
    noise = torch.randn(clips, 1, size, size, generator=gen)
    texture = F.avg_pool2d(F.pad(noise, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    texture = texture / texture.std(dim=(1, 2, 3), keepdim=True)
    start = torch.randint(0, size, (clips, 2), generator=gen)
    step = torch.tensor(DIRECTIONS)[labels] * speed  # (clips, 2)
    t = torch.arange(frames)
    offset = start[:, None, :] + t[None, :, None] * step[:, None, :]  # (clips, frames, 2)
    grid = torch.arange(size)
    rows = (grid[None, None, :] - offset[..., 0:1]) % size  # frame row r shows texture row r - dy*t
    cols = (grid[None, None, :] - offset[..., 1:2]) % size
    batch = torch.arange(clips)[:, None, None, None]
    video = texture[batch, 0, rows[..., :, None], cols[..., None, :]]  # (clips, frames, size, size)
    return video.reshape(clips * frames, 1, size, size), labels


def reverse_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x.unflatten(0, (-1, frames)).flip(1).flatten(0, 1)


TEMPORAL = (None, "gsm", "gst")
LABELS = {None: "TSN", "gsm": "TSN + GSM", "gst": "TSN, GST"}


def make_model(temporal: str | None, frames: int) -> TSNResNet:
    """A small TSN ResNet: plain (``None``), with the fused GSM in each bottleneck
    (``"gsm"``), or with each bottleneck's 3x3 convolution a GST (``"gst"``, alpha 4,
    beta 2, on the frames in TSN layout)."""
    model = TSNResNet(
        gateshift.GSM if temporal == "gsm" else None,
        num_segments=frames,
        num_classes=len(DIRECTIONS),
        widths=(16, 32),
        stem_channels=16,
        in_channels=1,
    )
    if temporal == "gst":
        for block in model.blocks:
            conv = block.spatial[0]
            block.spatial[0] = gateshift.GST(conv.in_channels, conv.out_channels, alpha=4, beta=2,
                                             stride=conv.stride[0], num_segments=frames)
    return model


@torch.no_grad()
def accuracy(model: TSNResNet, x: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    hit = (model(x).argmax(dim=1) == labels).float().mean().item()
    model.train()
    return hit


@torch.no_grad()
def flip_rate(model: TSNResNet, x: torch.Tensor, frames: int) -> float:
    """How often playing a clip backwards turns its prediction into the opposite direction."""
    model.eval()
    forward = model(x).argmax(dim=1)
    backward = model(reverse_frames(x, frames)).argmax(dim=1)
    model.train()
    return (backward == OPPOSITE[forward]).float().mean().item()


def train(
    model: TSNResNet,
    steps: int,
    gen: torch.Generator,
    held_out: tuple[torch.Tensor, torch.Tensor],
    frames: int,
    size: int,
    clips_per_step: int = 16,
    log_every: int = 0,
    label: str = "",
) -> list[tuple[int, float]]:
    """Adam on fresh clips every step; returns the learning curve [(step, held-out accuracy)]."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    curve = []
    for step in range(1, steps + 1):
        x, labels = moving_pattern_clips(clips_per_step, frames, size, gen)
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps):
            curve.append((step, accuracy(model, *held_out)))
            print(f"  {label:<10} step {step:4d}  loss {loss.item():.3f}  held-out accuracy {curve[-1][1]:.1%}")
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per network")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=24, help="frame height and width")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed {seed}; chance is {1 / len(DIRECTIONS):.0%}")
    gen = torch.Generator().manual_seed(seed)
    held_out = moving_pattern_clips(256, args.frames, args.size, gen)
    for temporal in TEMPORAL:
        torch.manual_seed(seed)
        model = make_model(temporal, args.frames)
        label = LABELS[temporal]
        start = time.perf_counter()
        train(model, args.steps, gen, held_out, args.frames, args.size, log_every=max(args.steps // 10, 1), label=label)
        print(f"  {label}: {time.perf_counter() - start:.0f} s; reversed clips predicted as the opposite "
              f"direction: {flip_rate(model, held_out[0], args.frames):.1%}\n")


if __name__ == "__main__":
    main()
