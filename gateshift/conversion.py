"""``gateshift.convert``: swap the published temporal modules of a model for the fused ones.

Published modules are recognised by their structure, not their class (every codebase
copies them under its own name):

* GSM: ``conv3D`` (``Conv3d(P, 2, 3, padding=1, groups=2)``), ``bn`` (``BatchNorm3d(P)``, or
  the ``SyncBatchNorm`` that ``convert_sync_batchnorm`` made of it),
  ``fPlane`` and ``num_segments``; GSF: the same plus ``channel_conv1``/``channel_conv2``;
* the downstream ``GatedShift`` wrapper (temporal action and event spotting codebases:
  E2E-Spot names its GSM ``gsm``, T-DEED ``gs``, others ``gse``): a GSM or GSF applied to
  the first ``fold_dim`` channels, the other channels copied through (``zeros_like`` and two
  slice copies), then the wrapped ``net``. It becomes one fused call with
  ``channels=fold_dim`` and no copies. Recognised by its parts: a ``net``, a ``fold_dim`` and
  exactly one published GSM/GSF child, whatever its name (kept, so are the state_dict keys);
* TSM's ``TemporalShift`` (``net``, ``n_segment``, ``fold_div``, ``inplace``; its copies,
  E2E-Spot's with an in-place autograd Function among them) and mmaction2's (``net``,
  ``num_segments``, ``shift_div``): it becomes :class:`gateshift.TemporalShift`.

A module's ``forward`` cannot be read, so each replacement is checked on a small random
probe first (``conversion_probe.py``): the original and the fused module, on the same
input, in training and in eval mode. A module whose probe differs is left alone, and the
report says why. Modules whose structure differs (other padding, no GSF biases, ...) are
not candidates at all.

The fused modules take over the published modules' own submodules (``conv3D``, ``bn``, ...),
so weights, buffers, devices, dtypes and an optimizer's references to the parameters carry over.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .conversion_probe import CALL_HOOK_DICTS, first_conv_in_channels, probe
from .modules import GSF, GSM, TemporalShift, as_int

__all__ = ["convert", "FusedGatedShift", "Replacement"]


@dataclasses.dataclass
class Replacement:
    """One module ``convert`` replaced (or, with a ``reason``, left alone after its probe):
    where, what it was and what it became."""

    name: str
    was: str
    now: str
    reason: str = ""  # why the module was left alone; empty when it was replaced

    @property
    def replaced(self) -> bool:
        return not self.reason

    def __str__(self) -> str:
        if self.reason:
            return f"{self.name or '<root>'}: {self.was} left alone: {self.reason}"
        return f"{self.name or '<root>'}: {self.was} -> {self.now}"


class FusedGatedShift(nn.Module):
    """``net(gate(x))`` with ``gate`` a fused GSM or GSF gating the first ``fold_dim``
    channels and passing the others through: the published ``GatedShift`` wrapper's
    computation without its zero-fill and slice copies. The gate keeps the wrapper's
    attribute name (``gate_name``: ``gse``, ``gsm``, ``gs``, ...), and so its state_dict keys."""

    def __init__(self, gse: nn.Module, net: nn.Module, fold_dim: int, n_segment: int, gate_name: str = "gse"):
        super().__init__()
        self.gate_name = gate_name
        self.add_module(gate_name, gse)
        self.net = net
        self.fold_dim = fold_dim
        self.n_segment = n_segment

    @property
    def gate(self) -> nn.Module:
        return self._modules[self.gate_name]

    def extra_repr(self) -> str:
        return f"fold_dim={self.fold_dim}, n_segment={self.n_segment}"

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.gate(x))


def _is_published_gate_shift(m: nn.Module) -> bool:
    conv, bn = getattr(m, "conv3D", None), getattr(m, "bn", None)
    planes, segments = as_int(getattr(m, "fPlane", None)), as_int(getattr(m, "num_segments", None))
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


def _gate_name(m: nn.Module) -> str | None:
    """The name of a wrapper's one published (or fused) GSM/GSF child, other than ``net``;
    None unless there is exactly one."""
    names = [name for name, child in m._modules.items()
             if name != "net" and child is not None and (_is_convertible(child) or isinstance(child, (GSM, GSF)))]
    return names[0] if len(names) == 1 else None


def _is_gated_shift_wrapper(m: nn.Module) -> bool:
    if isinstance(m, FusedGatedShift) or not isinstance(getattr(m, "net", None), nn.Module):
        return False
    fold_dim, name = as_int(getattr(m, "fold_dim", None)), _gate_name(m)
    # A GSF below ratio 100 gates fewer channels than fold_dim; the rest pass through.
    return fold_dim is not None and name is not None and as_int(m._modules[name].fPlane) <= fold_dim


def _temporal_shift_arguments(m: nn.Module) -> tuple[int, int, bool] | None:
    """(frames, fold_div, inplace) of a TSM-style temporal shift module: TSM's and its
    copies' (``n_segment``, ``fold_div``, ``inplace``) or mmaction2's (``num_segments``,
    ``shift_div``), wrapping ``net`` and holding nothing else; None for anything else."""
    if isinstance(m, TemporalShift) or not hasattr(m, "net") or set(m._modules) - {"net"}:
        return None
    net = m.net
    if net is not None and not isinstance(net, nn.Module):
        return None
    frames = as_int(getattr(m, "n_segment", getattr(m, "num_segments", None)))
    fold_div = as_int(getattr(m, "fold_div", getattr(m, "shift_div", None)))
    inplace = getattr(m, "inplace", False)
    if frames is None or fold_div is None or frames < 1 or fold_div < 1 or not isinstance(inplace, bool):
        return None
    return frames, fold_div, inplace


# The hooks a module keeps (nn.Module's own dictionaries): the fused twin takes them over.
_HOOK_DICTS = CALL_HOOK_DICTS + (
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
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
    planes, segments = as_int(m.fPlane), as_int(m.num_segments)
    fused = GSF(planes, segments, 100) if _is_published_gsf(m) else GSM(planes, segments)
    if isinstance(fused, GSF):
        fused.gsf_ch_ratio = None  # the published module keeps only the gated channels
    for name, child in m.named_children():  # conv3D, bn, tanh, relu, ...: weights, modes and hooks
        if hasattr(fused, name):
            setattr(fused, name, child)
    return _take_over(fused, m)


def _is_candidate(m: nn.Module) -> bool:
    """A published module or wrapper that :func:`_candidate` builds a twin of."""
    return _is_gated_shift_wrapper(m) or _is_convertible(m) or _temporal_shift_arguments(m) is not None


def _candidate(m: nn.Module) -> tuple[nn.Module, int, int] | None:
    """The fused twin of ``m`` if ``m`` is a published module or wrapper, with the
    channels and frames of its probe; else None. Builds the twin only: ``m`` is not changed
    (the twin shares ``m``'s submodules)."""
    if _is_gated_shift_wrapper(m):
        name = _gate_name(m)
        gate = m._modules[name]
        segments = as_int(getattr(m, "n_segment", gate.num_segments))
        fold_dim = as_int(m.fold_dim)
        fused = FusedGatedShift(_fused_gate_shift(gate), m.net, fold_dim, segments, gate_name=name)
        return _take_over(fused, m), first_conv_in_channels(m.net) or 2 * fold_dim, segments
    if _is_convertible(m):
        return _fused_gate_shift(m), as_int(m.fPlane), as_int(m.num_segments)
    arguments = _temporal_shift_arguments(m)
    if arguments is not None:
        frames, fold_div, inplace = arguments
        fused = _take_over(TemporalShift(m.net, frames, fold_div, inplace=inplace), m)
        return fused, first_conv_in_channels(m.net) or 2 * fold_div, frames
    return None


@dataclasses.dataclass
class _Options:
    verify: bool
    dry_run: bool


def _convert_children(parent: nn.Module, prefix: str, report: list[Replacement], done: dict,
                      options: _Options) -> None:
    """Converts the children of ``parent`` in place. ``done`` maps each module already
    decided on (by identity) to ``(module, fused twin, reason left alone or None)``; the
    module itself is kept there so that its id stays its own. So a module used at several
    places (tied modules) is converted, or left, at all of them at once."""
    # _modules, not named_children(): that one yields a module used twice only once.
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        qualified = f"{prefix}.{name}" if prefix else name
        if id(child) in done:
            fused, reason = done[id(child)][1:]
        else:
            found = _candidate(child)
            if found is None:
                _convert_children(child, qualified, report, done, options)
                continue
            fused, channels, frames = found
            if isinstance(getattr(child, "net", None), nn.Module):  # a wrapper: its block's modules first
                _convert_children(child.net, f"{qualified}.net", report, done, options)
            reason = probe(child, fused, channels, frames) if options.verify else None
            done[id(child)] = (child, fused, reason)
        if reason is not None:
            report.append(Replacement(qualified, type(child).__name__, type(child).__name__, reason=reason))
            continue
        if not options.dry_run:
            setattr(parent, name, fused)
        report.append(Replacement(qualified, type(child).__name__, type(fused).__name__))


def convert(model: nn.Module, *, verify: bool = True, dry_run: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """Replace the published temporal modules of ``model`` (GSM, GSF, their ``GatedShift``
    wrappers, TSM's temporal shifts) by the fused ones, in place. Returns the model and a
    report: one :class:`Replacement` per module replaced, or left alone (``reason``).

    ``verify`` (default): each replacement is first checked on a small random probe, the
    original against its fused twin in training and eval mode (the model's modes,
    running statistics and RNG state are restored); a module that differs is left alone.
    ``dry_run``: decide and report, replace nothing.

    A published module at the root is returned converted (it cannot be replaced in place).
    """
    report: list[Replacement] = []
    options = _Options(verify=verify, dry_run=dry_run)
    # Building the fused twins initialises their (discarded) parameters: the user's random
    # stream must not move.
    with torch.random.fork_rng(devices=[]):
        if not _is_candidate(model):
            _convert_children(model, "", report, {}, options)
            return model, report
        holder = nn.Module()
        holder.add_module("root", model)
        _convert_children(holder, "", report, {}, options)
    for r in report:
        r.name = r.name[len("root"):].lstrip(".")
    return holder.root, report
