"""``gateshift.convert``: swap the published temporal modules of a model for the fused ones.

Published modules are recognised by their structure, not their class (every codebase
copies them under its own name):

* GSM: ``conv3D`` (``Conv3d(P, 2, 3, padding=1, groups=2)``), ``bn`` (``BatchNorm3d(P)``, or
  the ``SyncBatchNorm`` that ``convert_sync_batchnorm`` made of it),
  ``fPlane`` and ``num_segments``; GSF: the same plus ``channel_conv1``/``channel_conv2``;
* the downstream ``GatedShift`` wrapper (temporal action and event spotting codebases): a
  GSM or GSF in ``gse`` applied to the first ``fold_dim`` channels, the other channels copied
  through (``zeros_like`` and two slice copies), then the wrapped ``net``. It becomes one
  fused call with ``channels=fold_dim`` and no copies. The wrapper is recognised by its
  attributes (``gse``, ``net``, ``fold_dim``), so its ``forward`` is taken to be that one.

Modules that look like these but differ (other padding, no GSF biases, ...) are left alone.

The fused modules take over the published modules' own submodules (``conv3D``, ``bn``, ...),
so weights, buffers, devices, dtypes and an optimizer's references to the parameters carry over.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from .modules import GSF, GSM

__all__ = ["convert", "FusedGatedShift", "Replacement"]


@dataclasses.dataclass
class Replacement:
    """One module ``convert`` replaced: where, what it was and what it became."""

    name: str
    was: str
    now: str

    def __str__(self) -> str:
        return f"{self.name or '<root>'}: {self.was} -> {self.now}"


class FusedGatedShift(nn.Module):
    """``net(gse(x))`` with ``gse`` a fused GSM or GSF gating the first ``fold_dim``
    channels and passing the others through: the published ``GatedShift`` wrapper's
    computation without its zero-fill and slice copies."""

    def __init__(self, gse: nn.Module, net: nn.Module, fold_dim: int, n_segment: int):
        super().__init__()
        self.gse = gse
        self.net = net
        self.fold_dim = fold_dim
        self.n_segment = n_segment

    def extra_repr(self) -> str:
        return f"fold_dim={self.fold_dim}, n_segment={self.n_segment}"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.gse(x))


def _is_published_gate_shift(m: nn.Module) -> bool:
    conv, bn = getattr(m, "conv3D", None), getattr(m, "bn", None)
    return (
        not isinstance(m, (GSM, GSF))
        and isinstance(conv, nn.Conv3d)
        and isinstance(bn, (nn.BatchNorm3d, nn.SyncBatchNorm))
        and isinstance(getattr(m, "fPlane", None), int)
        and isinstance(getattr(m, "num_segments", None), int)
        and conv.in_channels == m.fPlane == bn.num_features
        and conv.out_channels == 2
        and conv.groups == 2
        and tuple(conv.kernel_size) == (3, 3, 3)
        and tuple(conv.padding) == (1, 1, 1)
        and tuple(conv.stride) == (1, 1, 1)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.padding_mode == "zeros"
    )


def _is_published_gsf(m: nn.Module) -> bool:
    def is_fusion_conv(conv) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and (conv.in_channels, conv.out_channels, conv.groups) == (2, 1, 1)
            and tuple(conv.kernel_size) == (3, 3)
            and tuple(conv.padding) == (1, 1)
            and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros"
            and conv.bias is not None
        )

    return (
        _is_published_gate_shift(m)
        and m.conv3D.bias is not None
        and is_fusion_conv(getattr(m, "channel_conv1", None))
        and is_fusion_conv(getattr(m, "channel_conv2", None))
    )


def _is_convertible(m: nn.Module) -> bool:
    """A published GSM, or a published GSF; a module that looks like a GSF (it has fusion
    convolutions) but differs from the published one is left alone, not taken for a GSM."""
    if hasattr(m, "channel_conv1") or hasattr(m, "channel_conv2"):
        return _is_published_gsf(m)
    return _is_published_gate_shift(m)


def _is_gated_shift_wrapper(m: nn.Module) -> bool:
    gse = getattr(m, "gse", None)
    return (
        not isinstance(m, FusedGatedShift)
        and isinstance(getattr(m, "net", None), nn.Module)
        and isinstance(getattr(m, "fold_dim", None), int)
        and isinstance(gse, nn.Module)
        and (_is_convertible(gse) or isinstance(gse, (GSM, GSF)))
        and gse.fPlane <= m.fold_dim  # a GSF below ratio 100 gates fewer; the rest pass through
    )


def _fused_gate_shift(m: nn.Module) -> nn.Module:
    """The fused twin of a published GSM/GSF, built from its own submodules."""
    if isinstance(m, (GSM, GSF)):
        return m
    if _is_published_gsf(m):
        fused = GSF(m.fPlane, m.num_segments, 100)
        fused.channel_conv1, fused.channel_conv2 = m.channel_conv1, m.channel_conv2
    else:
        fused = GSM(m.fPlane, m.num_segments)
    fused.conv3D, fused.bn = m.conv3D, m.bn
    fused.training = m.training  # not .train(): the submodules keep their own modes (frozen BN)
    return fused


def _convert_children(parent: nn.Module, prefix: str, report: list[Replacement]) -> None:
    for name, child in list(parent.named_children()):
        qualified = f"{prefix}.{name}" if prefix else name
        if _is_gated_shift_wrapper(child):
            _convert_children(child.net, f"{qualified}.net", report)
            fused = FusedGatedShift(
                _fused_gate_shift(child.gse), child.net, child.fold_dim, int(getattr(child, "n_segment", child.gse.num_segments))
            )
            fused.training = child.training  # the wrapped block's modes stay as they were
            setattr(parent, name, fused)
            report.append(Replacement(qualified, type(child).__name__, "FusedGatedShift"))
        elif _is_convertible(child):
            fused = _fused_gate_shift(child)
            setattr(parent, name, fused)
            report.append(Replacement(qualified, type(child).__name__, type(fused).__name__))
        else:
            _convert_children(child, qualified, report)


def convert(model: nn.Module) -> tuple[nn.Module, list[Replacement]]:
    """Replace the published GSM/GSF modules (and ``GatedShift`` wrappers) of ``model``
    by the fused ones, in place. Returns the model and a report of the replacements.

    A published module at the root is returned converted (it cannot be replaced in place).
    """
    report: list[Replacement] = []
    if _is_gated_shift_wrapper(model) or _is_convertible(model):
        holder = nn.Module()
        holder.add_module("root", model)
        _convert_children(holder, "", report)
        for r in report:
            r.name = r.name[len("root"):].lstrip(".")
        return holder.root, report
    _convert_children(model, "", report)
    return model, report
