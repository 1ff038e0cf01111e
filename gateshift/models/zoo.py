"""``gateshift.models.tsn``: the published video networks, built from gateshift's modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import bninception, inceptionv3, resnet
from .temporal import Temporal
from .video_model import TSN


@dataclass(frozen=True)
class Backbone:
    build: Callable[[Temporal | None], nn.Module]
    classifier: str  # the attribute the TSN turns into dropout + new_fc
    feature_dim: int
    input_size: int  # the authors' crop size
    temporals: tuple[str | None, ...]  # the temporal modules the authors published on it


BACKBONES = {
    "bninception": Backbone(bninception.BNInception, "fc", bninception.FEATURE_DIM, 224, ("gsm", "gsf", "tsm", None)),
    "inceptionv3": Backbone(inceptionv3.InceptionV3, "top_cls_fc", inceptionv3.FEATURE_DIM, 229, ("gsm", "gsf", None)),
    "resnet50": Backbone(resnet.ResNet50, "fc", resnet.FEATURE_DIM, 224, ("gsf", "tsm", None)),
}

NETWORKS = tuple((name, t) for name, b in BACKBONES.items() for t in b.temporals)


def tsn(backbone: str, temporal: str | None = "gsm", *, num_classes: int, num_segments: int = 8,
        dropout: float = 0.5, partial_bn: bool | None = None, implementation: str = "fused",
        gsf_ch_ratio: float = 100, shift_div: int = 8) -> TSN:
    """A TSN over ``backbone`` with ``temporal`` modules at the published placements.

    ``backbone``: ``"bninception"`` (GSM, GSF, TSM), ``"inceptionv3"`` (GSM, GSF) or
    ``"resnet50"`` (GSF, TSM); ``temporal``: one of those or None. Module names follow
    the authors' code, so :func:`~gateshift.models.load_published` loads their
    checkpoints. ``partial_bn`` None takes the published codebase's default (on for
    GSM, TSM and plain TSN; the GSF code has none). ``implementation="published"``
    builds the same network from the plain-PyTorch published modules
    (``gateshift.reference``), for comparison.

    Input ``(B*num_segments, 3, S, S)`` with ``S = net.input_size`` (224; 229 for
    InceptionV3); output ``(B, num_classes)``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {backbone!r}")
    spec = BACKBONES[backbone]
    if temporal not in spec.temporals:
        raise ValueError(f"temporal for {backbone} must be one of {spec.temporals} (the published networks), "
                         f"got {temporal!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(num_segments, int) or isinstance(num_segments, bool) or num_segments < 1:
        raise ValueError(f"num_segments must be a positive int, got {num_segments!r}")
    modules = None
    if temporal is not None:
        modules = Temporal(temporal, num_segments, implementation, gsf_ch_ratio=gsf_ch_ratio, shift_div=shift_div)
    if partial_bn is None:
        partial_bn = temporal != "gsf"
    return TSN(spec.build(modules), spec.classifier, spec.feature_dim, num_classes, num_segments,
               dropout=dropout, partial_bn=partial_bn, input_size=spec.input_size)
