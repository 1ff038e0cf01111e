"""What is benchmarked: the ops, the shapes they run at, the published networks, and
the cases built from them.

A case (:class:`Workload`) pairs a published-semantics module (``gateshift.reference``)
with its fused twin holding the same weights, and names the input they run on. Op
shapes come from ``--shape`` or from presets: the DESIGN.md reference shape and the
GSM placements of real networks (DESIGN.md section 4). A network case
(:func:`network_workload`) is a whole ``gateshift.models.tsn`` network built from the
published modules and from ours, plus the same backbone without temporal modules, whose
time gives the temporal modules' share of each.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

import gateshift
from gateshift import models, reference
from gateshift.modules import folded_batch_norm

# How a case's modules are run: the published module op for op, torch.compile of it, ours,
# and (on request) our op alone, the BN folded beforehand (FoldedOp).
IMPLS = ("eager", "compile", "fused", "op")
DEFAULT_IMPLS = ("eager", "compile", "fused")


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


class FoldedOp(nn.Module):
    """A fused GSM or GSF module's op alone (impl ``op``): ``gateshift.gate_shift`` or
    ``gate_shift_fuse`` with the module's BatchNorm folded once, here, from its running
    statistics, as a user who folds it beforehand calls them. The time of a call is the
    op's, with its Python entry point and autograd, but without what the module adds
    around it: the batch statistics of training mode, the fold, the module's checks.
    Its output is the eval-mode module's (training mode too: no batch statistics)."""

    def __init__(self, module: gateshift.GSM | gateshift.GSF):
        super().__init__()
        self.module = module  # its parameters, and the weights the op reads
        with torch.no_grad():
            # An eval-mode BN's fold reads its running statistics, not x: an empty x will do.
            x5 = module.conv3D.weight.new_empty((0, 0, module.fPlane, 0, 0))
            scale, shift = folded_batch_norm(module.bn.eval(), x5, module.fPlane)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        args = dict(num_segments=m.num_segments, bn_scale=self.scale, bn_shift=self.shift, channels=m.fPlane)
        if isinstance(m, gateshift.GSF):
            fuse_weight = torch.cat((m.channel_conv1.weight, m.channel_conv2.weight))
            fuse_bias = torch.cat((m.channel_conv1.bias, m.channel_conv2.bias))
            return gateshift.gate_shift_fuse(x, m.conv3D.weight, m.conv3D.bias, fuse_weight, fuse_bias, **args)
        return gateshift.gate_shift(x, m.conv3D.weight, m.conv3D.bias, **args)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """An op that joins the benchmark: its published-semantics and fused modules."""

    name: str
    published: Callable[[int, int], nn.Module]  # (channels, frames) -> module
    fused: Callable[[int, int], nn.Module]
    # Bytes (forward, backward) the op must move at least, given the input's bytes.
    floor_bytes: Callable[[int], tuple[int, int]] = _gate_floor
    # The useful FLOP per element of x (forward, backward): the gate convolution's 27
    # multiply-adds forward, its transpose and weight gradient backward (issue 15's count);
    # None for ops without arithmetic to speak of.
    flop_per_element: tuple[int, int] | None = (54, 108)
    # The fused module's op alone (impl "op"), or None where the module is the op.
    op_alone: Callable[[nn.Module], nn.Module] | None = FoldedOp


OPS = {
    "gsm": OpSpec("gsm", lambda c, t: reference.GSM(c, t), lambda c, t: gateshift.GSM(c, t)),
    "gsf": OpSpec("gsf", lambda c, t: reference.GSF(c, t), lambda c, t: gateshift.GSF(c, t)),
    "tsm": OpSpec(
        "tsm",
        lambda c, t: reference.TemporalShift(None, t, 8),
        lambda c, t: gateshift.TemporalShift(None, t, 8),
        _shift_floor,
        flop_per_element=None,
        op_alone=None,
    ),
    # GST as a bottleneck's 3x3 convolution (alpha 4, beta 2), on frames in TSN layout.
    "gst": OpSpec(
        "gst",
        lambda c, t: reference.GST(c, c, 4, 2, 1, num_segments=t),
        lambda c, t: gateshift.GST(c, c, 4, 2, 1, num_segments=t),
        flop_per_element=None,  # convolutions: PyTorch's own, not ours
        op_alone=None,
    ),
}
DEFAULT_OPS = ("gsm", "gsf", "tsm")  # gst, a pair of convolutions, on request (--ops gst)


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
    # Bytes a fused op must move at least (DESIGN.md section 3), or None for a network.
    floor_bytes: Callable[[int], tuple[int, int]] | None = None
    # A network case's backbone without temporal modules (timed as impl "baseline").
    baseline: nn.Module | None = None
    flop_per_element: tuple[int, int] | None = None  # as OpSpec's
    # The fused module's op alone (impl "op"), or None where there is none.
    op_alone: nn.Module | None = None

    @property
    def is_model(self) -> bool:
        return self.floor_bytes is None


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


def op_workload(spec: OpSpec, shape: Shape, gen: torch.Generator) -> Workload:
    published = spec.published(shape.channels, shape.frames)
    _randomise(published, gen)
    fused = spec.fused(shape.channels, shape.frames)
    fused.load_state_dict(published.state_dict())
    rows = shape.clips * shape.frames
    return Workload(
        spec.name, str(shape), shape.label, published, fused, (rows, shape.channels, shape.height, shape.width),
        floor_bytes=spec.floor_bytes, flop_per_element=spec.flop_per_element,
        op_alone=None if spec.op_alone is None else spec.op_alone(copy.deepcopy(fused)),
    )


# The published networks by name: "<backbone>-<temporal>", "-tsn" for none.
NETWORKS = {f"{backbone}-{temporal or 'tsn'}": (backbone, temporal) for backbone, temporal in models.NETWORKS}
NETWORK_CLASSES = 174  # Something-Something V1, the papers' benchmark


def _randomise_network(net: nn.Module, gen: torch.Generator, frame_shape: tuple[int, ...], frames: int) -> None:
    """Weights scaled by fan-in, gates that are not the identity, and BatchNorm statistics
    as after training: measured on a random batch of at least 16 frames, so that
    activations stay O(1) in eval mode too (random running statistics make a 50-layer
    network's float32 output differ from its own float64 output by 20%)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch sets the statistics
            m.train()
        clips = -(-16 // frames)
        net(torch.randn((clips * frames, *frame_shape), generator=gen))
        for m in norms:
            m.momentum = 0.1
        net.train()  # back to the published training mode (partial BN included)


def network_workload(name: str, clips: int, frames: int, gen: torch.Generator, size: int | None = None) -> Workload:
    """The published network ``name`` (a key of ``NETWORKS``) built from the published
    modules and from ours, same weights, in training mode as published (partial BN
    included); ``size`` defaults to the authors' input size."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    backbone, temporal = NETWORKS[name]
    options = dict(num_classes=NETWORK_CLASSES, num_segments=frames)
    published = models.tsn(backbone, temporal, implementation="published", **options)
    size = published.input_size if size is None else size
    input_shape = (clips * frames, 3, size, size)
    _randomise_network(published, gen, input_shape[1:], frames)
    fused = models.tsn(backbone, temporal, **options)
    fused.load_state_dict(published.state_dict())
    baseline = models.tsn(backbone, None, **options)
    _randomise_network(baseline, gen, input_shape[1:], frames)
    kinds = {"gsm": gateshift.GSM, "gsf": gateshift.GSF, "tsm": gateshift.TemporalShift}
    count = sum(isinstance(m, kinds[temporal]) for m in fused.modules()) if temporal else 0
    label = f"network, {count} {temporal.upper()}" if temporal else "network, TSN (no temporal modules)"
    return Workload(name, f"{clips}x{frames}x3x{size}x{size}", label, published, fused, input_shape,
                    baseline=baseline if temporal else None)


# GSM placements in real networks (DESIGN.md section 4): (fPlane, H = W) per block.
_BN_INCEPTION = [
    (64, 28), (64, 28), (128, 28), (224, 14), (192, 14), (160, 14), (96, 14), (128, 14), (352, 7), (352, 7),
]
_BN_INCEPTION_BLOCKS = ["3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
_INCEPTION_V3 = [
    (64, 27), (64, 27), (64, 27), (192, 13), (192, 13), (192, 13), (192, 13), (192, 13), (320, 6), (448, 6),
]
_INCEPTION_V3_BLOCKS = ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b"]
_RESNET50 = [(64, 56), (128, 28), (256, 14), (512, 7)]
_RESNET50_STAGES = ["res2", "res3", "res4", "res5"]

PRESETS = ("reference", "bn-inception", "inception-v3", "resnet50")


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


def parse_shape(text: str) -> Shape:
    """``--shape B,T,C,H,W``; raises argparse's error type so the parser reports it."""
    try:
        b, t, c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants B,T,C,H,W (five integers), got {text!r}") from None
    if min(b, t, c, h, w) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be positive, got {text!r}")
    return Shape(b, t, c, h, w, "custom")
