"""Drop-in ``nn.Module`` versions of the published modules, running the fused ops."""

from __future__ import annotations

import operator
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ._ops import accumulation_dtype, frames_input, ops
from . import reference
from ._training_node import GateShiftWithBatchStats, fold_batch_norm
from .functional import (
    _autocast, _autocast_enabled, _check_args, _unfused_autograd_mode, gate_shift, gate_shift_fuse, temporal_shift,
)
from .reference import gsf_channels

__all__ = ["GSM", "GSF", "TemporalShift", "batch_mean_var", "folded_batch_norm"]


def batch_mean_var(x5: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over ``(B, T, H, W)`` of the first ``channels`` channels
    of ``x5`` ``(B, T, C, H, W)``, in float32 (float64 for float64 input), differentiable.

    Takes the whole tensor rather than a channel slice so that backward does not
    build a zero-filled gradient of ``x``'s size for the slice.
    """
    if x5.device.type in ("cpu", "cuda") and not _unfused_autograd_mode(x5):
        return ops.batch_stats(x5, channels)
    # Other devices, torch.func transforms and forward-mode AD: plain ops, in the
    # accumulation dtype (a copy of x for half types).
    acc = accumulation_dtype(x5.dtype)
    var, mean = torch.var_mean(x5[:, :, :channels].to(acc), dim=(0, 1, 3, 4), correction=0)
    return mean, var


def folded_batch_norm(
    bn: nn.modules.batchnorm._BatchNorm, x5: Tensor, channels: int
) -> tuple[Tensor, Tensor]:
    """BatchNorm of the first ``channels`` channels of ``x5`` ``(B, T, C, H, W)`` as a
    per-channel affine ``(scale, shift)``, each ``(channels,)`` in the accumulation
    dtype (float32, or float64 for float64 ``x5``): rounding them to half precision
    would round the BN's gradient before the batch statistics' backward cancels
    most of it.

    Semantics are ``bn``'s exactly: in training (or without running statistics) the
    batch mean and biased variance over ``(B, T, H, W)`` normalise, and the running
    statistics are updated as ``BatchNorm3d`` updates them (momentum or cumulative
    average, unbiased variance, ``num_batches_tracked``); in eval the running
    statistics are used. The statistics are one cheap reduction over ``x5``;
    autograd carries their gradient back to ``x5``.
    """
    factor = _running_statistics_factor(bn)
    if _uses_batch_statistics(bn):
        count = x5.shape[0] * x5.shape[1] * x5.shape[3] * x5.shape[4]
        group = _synchronised_group(bn)
        if group is not None:
            mean, var, count = _synchronised_moments(x5, channels, count, group)
        elif count == 0:  # as BatchNorm: an empty batch leaves the running statistics alone
            acc = accumulation_dtype(x5.dtype)
            zero = x5.new_zeros((channels,), dtype=acc)
            return zero + 1, zero
        else:
            if count == 1:
                raise ValueError(
                    f"Expected more than 1 value per channel when training, got input of shape {tuple(x5.shape)} "
                    "(B, T, C, H, W)"
                )
            mean, var = batch_mean_var(x5, channels)
        _update_running_statistics(bn, mean, var, count, factor)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale, shift = fold_batch_norm(mean, torch.rsqrt(var + bn.eps), bn.weight, bn.bias)
    acc = accumulation_dtype(x5.dtype)
    return scale.to(acc), shift.to(acc)


def _running_statistics_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """As _BatchNorm.forward: counts the batch (in training, while statistics are tracked)
    and returns the running statistics' update factor (momentum, or the cumulative
    average's 1 / batches)."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return 0.0 if bn.momentum is None else bn.momentum


def _uses_batch_statistics(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """As _BatchNorm.forward: batch statistics in training, or in eval without running statistics."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _update_running_statistics(bn: nn.modules.batchnorm._BatchNorm, mean, var, count, factor: float) -> None:
    """Folds a batch's mean and biased variance into the running statistics, in training
    while they are tracked, as BatchNorm does (with the unbiased variance)."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    # detach(): no gradient, nor a forward-mode tangent, flows into the buffers. Both
    # buffers in one multi-tensor op per step: this runs on every training call.
    with torch.no_grad():
        running = [bn.running_mean, bn.running_var]
        batch = [mean.detach(), var.detach() * (count / (count - 1))]
        batch = [b if b.dtype == r.dtype else b.to(r.dtype) for b, r in zip(batch, running)]
        torch._foreach_mul_(running, 1 - factor)
        torch._foreach_add_(running, batch, alpha=factor)


def _synchronised_group(bn: nn.modules.batchnorm._BatchNorm):
    """The process group whose statistics ``bn`` normalises with: a ``SyncBatchNorm`` in
    training, with an initialised default group of several processes (when
    ``SyncBatchNorm`` itself synchronises); else ``None``, for this process's own."""
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _synchronised_moments(x5: Tensor, channels: int, count: int, group) -> tuple[Tensor, Tensor, Tensor]:
    """The batch mean and biased variance over every process of ``group`` and the total
    count, from each process's ``x5`` (``SyncBatchNorm``'s semantics; a process may hold
    no frames at all).

    Two differentiable all-reduces of ``channels + 1`` and ``channels`` numbers: the global
    mean from the count-weighted local means, then the global variance from the local
    variances and the local means' deviations from it (Chan et al.'s pairwise formula,
    which does not cancel as ``E[x^2] - mean^2`` would). Their backward is an all-reduce of
    the gradients, so every process's input gets the gradient of the statistics it fed.
    """
    if count > 0:
        mean, var = batch_mean_var(x5, channels)
    else:
        # Nothing here: contribute zeros (an empty mean is NaN, and NaN * 0 is NaN), as a
        # sum over x5's empty batch so that they stay in the autograd graph: every process
        # must run the same all-reduces in backward too.
        mean = var = x5[:, :, :channels].sum(dim=(0, 1, 3, 4), dtype=accumulation_dtype(x5.dtype))
    local = torch.tensor([float(count)], dtype=mean.dtype, device=mean.device)
    summed = _AllReduceSum.apply(torch.cat((mean * local, local)), group)
    total = summed[-1]
    if total.item() <= 1:  # every process sees the same total, so all raise together
        raise ValueError(
            f"Expected more than 1 value per channel when training, got {int(total.item())} over the process group"
        )
    global_mean = summed[:-1] / total
    spread = _AllReduceSum.apply(local * (var + (mean - global_mean) ** 2), group)
    return global_mean, spread / total, total


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group, differentiable: the gradient of every process's input
    is the sum of the gradients of every process's output."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        summed = tensor.clone()
        dist.all_reduce(summed, group=group)
        return summed

    @staticmethod
    def backward(ctx, grad: Tensor):
        summed = grad.clone()
        dist.all_reduce(summed, group=ctx.group)
        return summed, None


def as_int(value) -> int | None:
    """``value`` as a Python int when it is an integer of any integer type (numpy's
    included, as the published modules take them; bool excluded), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(name: str, value) -> int:
    """``value`` as a Python int when it is a positive integer (see :func:`as_int`); else a
    ValueError."""
    number = as_int(value)
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


# Forward pre-hooks that only recompute a submodule's weight from other parameters
# (pruning masks, weight_norm, spectral_norm): they need nothing of the submodule's
# input, so the fused forward runs them itself. (Parametrizations need nothing at
# all: they recompute the weight whenever it is read.)
_WEIGHT_PRE_HOOKS = (BasePruningMethod, WeightNorm, SpectralNorm)


def _hooks_needing_intermediates(module: nn.Module) -> list[str]:
    """The submodules of ``module`` holding hooks the fused forward cannot serve (they
    would see the submodule's input, output or gradients, which the fused op never
    forms): forward hooks, backward hooks, and forward pre-hooks other than the
    weight-recomputing ones."""
    found = []
    for name, sub in module.named_children():
        pre_hooks = [h for h in sub._forward_pre_hooks.values() if not isinstance(h, _WEIGHT_PRE_HOOKS)]
        if pre_hooks or sub._forward_hooks or sub._backward_hooks or sub._backward_pre_hooks:
            found.append(name)
    return found


def _run_weight_pre_hooks(module: nn.Module) -> None:
    """What nn.Module.__call__ would run before each submodule's forward, for the hooks
    that recompute its weight (the fused forward reads the weights, never calls the
    submodules)."""
    for sub in module.children():
        for hook in sub._forward_pre_hooks.values():
            hook(sub, ())


def _check_dtype(module: nn.Module, x: Tensor, weight: Tensor) -> None:
    """As the published module's convolution: x and the gating ``weight`` must have one
    dtype, unless autocast chooses the dtype."""
    autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(
            f"{type(module).__name__}: x is {x.dtype} but the module's parameters are {weight.dtype} "
            f"(use module.to({x.dtype}) or torch.autocast)"
        )


def _unfused_forward(module: GSM | GSF, x: Tensor) -> Tensor | None:
    """The published module's own sequence of ops, calling the submodules, when some
    submodule holds hooks the fused forward cannot serve (with a warning); else None."""
    hooked = _hooks_needing_intermediates(module)
    if not hooked:
        return None
    warnings.warn(
        f"{type(module).__name__}: hooks on {', '.join(hooked)} need the submodules' own inputs or outputs, "
        "so this module runs the published, unfused sequence of ops (slower, more memory)",
        stacklevel=3,
    )
    if isinstance(module, GSF):  # the published GSF takes all channels and passes the rest through
        return reference.GSF.forward(module, x)
    gated = reference.GSM.forward(module, x[:, : module.fPlane])
    return torch.cat((gated, x[:, module.fPlane :]), dim=1) if x.shape[1] > module.fPlane else gated


def _clips(module: GSM | GSF, x: Tensor) -> Tensor:
    """Checks a GSM/GSF input ``x`` ``(B*T, C >= fPlane, H, W)``; its ``(B, T, C, H, W)`` view."""
    if x.dim() != 4 or x.shape[1] < module.fPlane:
        raise ValueError(
            f"{type(module).__name__}(fPlane={module.fPlane}) expects input (B*T, C >= {module.fPlane}, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] % module.num_segments != 0:
        raise ValueError(f"x.shape[0] = {x.shape[0]} must be a multiple of num_segments = {module.num_segments}")
    return x.unflatten(0, (x.shape[0] // module.num_segments, module.num_segments))


def _training_with_batch_statistics(module: GSM | GSF, x5: Tensor, params: tuple) -> Tensor | None:
    """The module's output, ``(B*T, C, H, W)``, where its BatchNorm uses batch statistics
    on the CPU or CUDA: the statistics, their fold and the fused op run as one autograd
    node (gateshift._training_node), which adds the statistics' gradient into the op's
    ``grad_x`` in place. ``params`` are the op's parameters after ``x``.

    None where :func:`folded_batch_norm` and the composed ops serve instead: running
    statistics, SyncBatchNorm across processes, torch.func transforms, forward-mode AD,
    other devices, and batches of at most one value per channel (their errors and
    empty results are the composed path's)."""
    bn = module.bn
    count = x5.shape[0] * x5.shape[1] * x5.shape[3] * x5.shape[4]
    if (
        not _uses_batch_statistics(bn)
        or count <= 1
        or _synchronised_group(bn) is not None
        or x5.device.type not in ("cpu", "cuda")
        or _unfused_autograd_mode(x5, bn.weight, bn.bias, *params)
    ):
        return None
    # The dtype the op runs in and its parameters, under autocast: from an empty slice of
    # x, so that x itself is cast once, inside the node, not also here.
    op_x, op_params = x5, params
    if _autocast_enabled(x5):
        op_x, op_params, _ = _autocast(x5.narrow(0, 0, 0), params, ())
    _check_args(op_x, x5.shape[2], op_params[0], op_params[1], None, None, module.fPlane, "interleaved")
    factor = _running_statistics_factor(bn)
    out5, mean, var = GateShiftWithBatchStats.apply(x5, op_x.dtype, bn.weight, bn.bias, bn.eps, module.fPlane, *op_params)
    _update_running_statistics(bn, mean, var, count, factor)
    return out5.flatten(0, 1)


class GSM(nn.Module):
    """Gate-Shift Module, fused: a drop-in for the published ``GSM(fPlane, num_segments)``.

    Holds the published submodules, ``conv3D`` (``Conv3d(fPlane, 2, 3, padding=1,
    groups=2)``, zero-initialised so a new module is the identity) and ``bn``
    (``BatchNorm3d(fPlane)``), so published ``state_dict``\\ s load with
    ``strict=True``. ``forward`` folds ``bn`` into a per-channel affine and makes
    one call of :func:`gateshift.gate_shift` for BN + ReLU, the gating conv, tanh,
    gating, shifts, residual and the published (interleaved) channel order.

    Input and output: ``(B*T, C, H, W)`` with ``C >= fPlane``; channels past
    ``fPlane`` pass through unchanged.
    """

    def __init__(self, fPlane: int, num_segments: int = 3):
        super().__init__()
        fPlane = positive_int("fPlane", fPlane)
        if fPlane % 4 != 0:
            raise ValueError(f"fPlane must be a positive multiple of 4 (the interleaved order), got {fPlane!r}")
        num_segments = positive_int("num_segments", num_segments)
        self.fPlane = fPlane
        self.num_segments = num_segments
        self.conv3D = nn.Conv3d(fPlane, 2, (3, 3, 3), stride=1, padding=(1, 1, 1), groups=2)
        nn.init.constant_(self.conv3D.weight, 0)
        nn.init.constant_(self.conv3D.bias, 0)
        self.tanh = nn.Tanh()  # the published module's submodules, even those the fused op replaces
        self.bn = nn.BatchNorm3d(num_features=fPlane)
        self.relu = nn.ReLU()

    def extra_repr(self) -> str:
        return f"fPlane={self.fPlane}, num_segments={self.num_segments}"

    def forward(self, x: Tensor) -> Tensor:
        unfused = _unfused_forward(self, x)
        if unfused is not None:
            return unfused
        _run_weight_pre_hooks(self)
        # Read once, as the published forward does: a parametrization (spectral_norm's
        # power iteration) runs at every read.
        weight = self.conv3D.weight
        _check_dtype(self, x, weight)
        x = frames_input(x)  # channels_last: read in place on the CPU, one copy shared by both ops on CUDA
        x5 = _clips(self, x)
        trained = _training_with_batch_statistics(self, x5, (weight, self.conv3D.bias))
        if trained is not None:
            return trained
        scale, shift = folded_batch_norm(self.bn, x5, self.fPlane)
        return gate_shift(
            x,
            weight,
            self.conv3D.bias,
            num_segments=self.num_segments,
            bn_scale=scale,
            bn_shift=shift,
            channels=self.fPlane,
        )


class GSF(nn.Module):
    """Gate-Shift-Fuse, fused: a drop-in for the published ``gsf(fPlane, num_segments,
    gsf_ch_ratio)``.

    Holds the published submodules (``conv3D``, ``bn``, ``channel_conv1``,
    ``channel_conv2``) with their default initialisation, so published
    ``state_dict`` files load with ``strict=True``. Gates and shifts the first
    ``P = int(fPlane * gsf_ch_ratio / 100)`` channels (rounded up to even; the
    published interleaved order needs ``P % 4 == 0``); the rest pass through.
    ``forward`` folds ``bn`` and makes one call of :func:`gateshift.gate_shift_fuse`.
    """

    def __init__(self, fPlane: int, num_segments: int = 8, gsf_ch_ratio: float = 100):
        super().__init__()
        fPlane = positive_int("fPlane", fPlane)
        num_segments = positive_int("num_segments", num_segments)
        if not 0 < gsf_ch_ratio <= 100:
            raise ValueError(f"gsf_ch_ratio must be in (0, 100], got {gsf_ch_ratio!r}")
        self.fPlane = gsf_channels(fPlane, gsf_ch_ratio)
        if self.fPlane < 4 or self.fPlane % 4 != 0:
            raise ValueError(
                f"GSF gates P = {self.fPlane} channels (fPlane={fPlane}, gsf_ch_ratio={gsf_ch_ratio}); the published "
                "interleaved channel order needs a positive multiple of 4"
            )
        self.num_segments = num_segments
        self.gsf_ch_ratio = gsf_ch_ratio
        self.conv3D = nn.Conv3d(self.fPlane, 2, (3, 3, 3), stride=1, padding=(1, 1, 1), groups=2)
        self.tanh = nn.Tanh()  # the published module's submodules, even those the fused op replaces
        self.bn = nn.BatchNorm3d(num_features=self.fPlane)
        self.relu = nn.ReLU()
        self.channel_conv1 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.channel_conv2 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.sigmoid = nn.Sigmoid()

    def extra_repr(self) -> str:
        # fPlane is the published module's attribute: the gated channels, after the ratio.
        return f"fPlane={self.fPlane} (gated channels), num_segments={self.num_segments}, gsf_ch_ratio={self.gsf_ch_ratio}"

    def forward(self, x: Tensor) -> Tensor:
        unfused = _unfused_forward(self, x)
        if unfused is not None:
            return unfused
        _run_weight_pre_hooks(self)
        weight = self.conv3D.weight  # read once: see GSM.forward
        _check_dtype(self, x, weight)
        x = frames_input(x)  # channels_last: read in place on the CPU, one copy shared by both ops on CUDA
        x5 = _clips(self, x)
        fuse_weight = torch.cat((self.channel_conv1.weight, self.channel_conv2.weight))
        fuse_bias = torch.cat((self.channel_conv1.bias, self.channel_conv2.bias))
        trained = _training_with_batch_statistics(self, x5, (weight, self.conv3D.bias, fuse_weight, fuse_bias))
        if trained is not None:
            return trained
        scale, shift = folded_batch_norm(self.bn, x5, self.fPlane)
        return gate_shift_fuse(
            x,
            weight,
            self.conv3D.bias,
            fuse_weight,
            fuse_bias,
            num_segments=self.num_segments,
            bn_scale=scale,
            bn_shift=shift,
            channels=self.fPlane,
        )


class TemporalShift(nn.Module):
    """TSM's temporal shift, fused: a drop-in for the published ``TemporalShift(net,
    n_segment, n_div, inplace)``, which shifts and then runs the wrapped module ``net``
    (``None``: nothing). Its ``state_dict`` is ``net``'s, as the published one's.

    ``inplace=True`` writes the shifted values back into the input, as the published
    in-place shift does (the fused shift saves nothing for backward either way).
    """

    def __init__(self, net: nn.Module | None = None, n_segment: int = 3, n_div: int = 8, inplace: bool = False):
        super().__init__()
        n_segment = positive_int("n_segment", n_segment)
        n_div = positive_int("n_div", n_div)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div
        self.inplace = inplace

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}" + (", inplace=True" if self.inplace else "")

    def forward(self, x: Tensor) -> Tensor:
        x = self.shift(x, self.n_segment, fold_div=self.fold_div, inplace=self.inplace)
        return x if self.net is None else self.net(x)

    @staticmethod
    def shift(x: Tensor, n_segment: int, fold_div: int = 3, inplace: bool = False) -> Tensor:
        """The published static method, fused: :func:`gateshift.temporal_shift` of ``x``
        ``(B*T, C, H, W)``, written back into ``x`` with ``inplace=True``."""
        out = temporal_shift(x, n_segment, fold_div)
        return x.copy_(out) if inplace else out
