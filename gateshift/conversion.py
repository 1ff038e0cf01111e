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
import operator

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


def _as_int(value) -> int | None:
    """``value`` as an int when it is an integer of any kind (numpy's too), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _is_published_gate_shift(m: nn.Module) -> bool:
    conv, bn = getattr(m, "conv3D", None), getattr(m, "bn", None)
    planes, segments = _as_int(getattr(m, "fPlane", None)), _as_int(getattr(m, "num_segments", None))
    return (
        not isinstance(m, (GSM, GSF))
        and isinstance(conv, nn.Conv3d)
        and isinstance(bn, (nn.BatchNorm3d, nn.SyncBatchNorm))
        and planes is not None
        and segments is not None
        and planes % 4 == 0  # the published interleave needs it (its forward fails otherwise)
        and conv.in_channels == planes == bn.num_features
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
        and _as_int(getattr(m, "fold_dim", None)) is not None
        and isinstance(gse, nn.Module)
        and (_is_convertible(gse) or isinstance(gse, (GSM, GSF)))
        and _as_int(gse.fPlane) <= _as_int(m.fold_dim)  # a GSF below ratio 100 gates fewer; the rest pass through
    )


# The hooks a module keeps (nn.Module's own dictionaries): the fused twin takes them over.
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def _take_over(fused: nn.Module, m: nn.Module) -> nn.Module:
    """``fused`` in ``m``'s place: its training flag (not .train(): the submodules keep
    their own modes, frozen BN included) and its hooks."""
    fused.training = m.training
    for name in _HOOK_DICTS:
        if hasattr(m, name) and hasattr(fused, name):
            getattr(fused, name).update(getattr(m, name))
    # Which kind of backward hooks _backward_hooks holds (full or the legacy ones).
    fused._is_full_backward_hook = m._is_full_backward_hook
    return fused


def _fused_gate_shift(m: nn.Module) -> nn.Module:
    """The fused twin of a published GSM/GSF, built from its own submodules."""
    if isinstance(m, (GSM, GSF)):
        return m
    planes, segments = _as_int(m.fPlane), _as_int(m.num_segments)
    fused = GSF(planes, segments, 100) if _is_published_gsf(m) else GSM(planes, segments)
    if isinstance(fused, GSF):
        fused.gsf_ch_ratio = None  # the published module keeps only the gated channels
    for name, child in m.named_children():  # conv3D, bn, tanh, relu, ...: weights, modes and hooks
        if hasattr(fused, name):
            setattr(fused, name, child)
    return _take_over(fused, m)


def _convert_children(parent: nn.Module, prefix: str, report: list[Replacement], done: dict) -> None:
    """Converts the children of ``parent`` in place. ``done`` maps each module already
    converted (by identity; the module itself is kept there so that its id stays its own)
    to its fused twin, so a module used at several places (tied modules) becomes one
    fused module at all of them."""
    # _modules, not named_children(): that one yields a module used twice only once.
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        qualified = f"{prefix}.{name}" if prefix else name
        if id(child) in done:
            fused = done[id(child)][1]
        elif _is_gated_shift_wrapper(child):
            _convert_children(child.net, f"{qualified}.net", report, done)
            segments = _as_int(getattr(child, "n_segment", child.gse.num_segments))
            fused = _take_over(
                FusedGatedShift(_fused_gate_shift(child.gse), child.net, _as_int(child.fold_dim), segments), child
            )
        elif _is_convertible(child):
            fused = _fused_gate_shift(child)
        else:
            _convert_children(child, qualified, report, done)
            continue
        done[id(child)] = (child, fused)
        setattr(parent, name, fused)
        report.append(Replacement(qualified, type(child).__name__, type(fused).__name__))


def convert(model: nn.Module) -> tuple[nn.Module, list[Replacement]]:
    """Replace the published GSM/GSF modules (and ``GatedShift`` wrappers) of ``model``
    by the fused ones, in place. Returns the model and a report of the replacements.

    A published module at the root is returned converted (it cannot be replaced in place).
    """
    report: list[Replacement] = []
    if _is_gated_shift_wrapper(model) or _is_convertible(model):
        holder = nn.Module()
        holder.add_module("root", model)
        _convert_children(holder, "", report, {})
        for r in report:
            r.name = r.name[len("root"):].lstrip(".")
        return holder.root, report
    _convert_children(model, "", report, {})
    return model, report
