"""The probe ``gateshift.convert`` runs before it commits a replacement.

A module is recognised by its structure, but its ``forward`` cannot be read: a wrapper
that holds a ``net``, a ``fold_dim`` and a GSM may still compute something else than
the published wrapper. So the original module and its fused twin are run on the same
small random input, in training and in eval mode, and must agree in their outputs and
in the gradient of their input. Nothing of the model changes: the modes of every
submodule, the running statistics and the RNG state are restored afterwards, no
parameter gradient is accumulated (the gradient is taken of the input only), and the
user's hooks do not fire (all but the weight-recomputing ones are set aside meanwhile).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .modules import _WEIGHT_PRE_HOOKS

# The hooks a forward or backward runs (nn.Module's own dictionaries).
CALL_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                   "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks")

# The probe's input: two clips of the module's frame count, small planes.
_CLIPS, _HEIGHT, _WIDTH = 2, 7, 6


def first_conv_in_channels(net: nn.Module | None) -> int | None:
    """The input channels of the first convolution ``net`` holds: what a wrapper's input
    must have (the wrapped block's, as E2E-Spot's ``GatedShift`` reads them)."""
    if net is None:
        return None
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return m.in_channels
    return None


@contextlib.contextmanager
def _state_restored(device: torch.device, *modules: nn.Module):
    """Runs the body, then puts back every submodule's training flag, every buffer's
    values, every parameter and the RNG state (the probe must leave the model as it found
    it). Yields the function that puts the buffers back, for the body to start each run
    from them."""
    flags = [(m, m.training) for root in modules for m in root.modules()]
    buffers = {id(b): (b, b.detach().clone()) for root in modules for b in root.buffers()}
    # Random parameters for the probe: a new GSM's gating conv is zero (the identity), and
    # with it a look-alike would agree with anything. Shared by both modules, put back after.
    parameters = {id(p): (p, p.detach().clone()) for root in modules for p in root.parameters()}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p, _ in parameters.values():
            p.copy_(torch.randn(p.shape, generator=generator).to(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    hooks = {}
    for root in modules:
        for m in root.modules():
            for name in CALL_HOOK_DICTS:
                hook_dict = getattr(m, name, None)
                if hook_dict is not None and hook_dict and (id(m), name) not in hooks:
                    hooks[(id(m), name)] = (hook_dict, dict(hook_dict))
                    kept = {k: h for k, h in hook_dict.items()
                            if name == "_forward_pre_hooks" and isinstance(h, _WEIGHT_PRE_HOOKS)}
                    hook_dict.clear()
                    hook_dict.update(kept)

    def restore_buffers() -> None:
        with torch.no_grad():
            for b, saved in buffers.values():
                b.copy_(saved)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield restore_buffers
        finally:
            for m, training in flags:
                m.training = training
            restore_buffers()
            with torch.no_grad():
                for p, saved in parameters.values():
                    p.copy_(saved)
            for hook_dict, saved in hooks.values():
                hook_dict.clear()
                hook_dict.update(saved)


def _run(module: nn.Module, x: Tensor, grad_out_seed: int) -> tuple[Tensor, Tensor]:
    """Output of ``module`` on a copy of ``x`` and the gradient of ``<out, g>`` in ``x``
    (``g`` random from ``grad_out_seed``). The input is a non-leaf copy: in-place
    modules (TSM's in-place shift) write into it, not into ``x``."""
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(grad_out_seed)  # dropout and the like draw the same numbers in both
    out = module(leaf * 1)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed)).to(out)
    (grad,) = torch.autograd.grad(out, leaf, g, allow_unused=True)
    return out.detach(), (torch.zeros_like(leaf) if grad is None else grad)


def _close(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
    tolerance = 1e-9 if a.dtype == torch.float64 else (1e-4 if a.dtype == torch.float32 else 2e-2)
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max() if a.numel() else 0.0) <= tolerance * scale


def probe(original: nn.Module, fused: nn.Module, channels: int, frames: int) -> str | None:
    """None when ``fused`` computes what ``original`` computes on a random
    ``(2 * frames, channels, 7, 6)`` input, in training and in eval mode (outputs and the
    gradient of the input); else why not, in a few words."""
    tensor = next(iter(original.parameters()), None)
    if tensor is None:
        tensor = next(iter(original.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    if device.type == "meta":
        return None  # nothing to run on: taken on its structure
    x = torch.randn(_CLIPS * frames, channels, _HEIGHT, _WIDTH, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    with _state_restored(device, original, fused) as restore_buffers:
        for training in (True, False):
            for m in (original, fused):
                m.train(training)
            try:
                restore_buffers()
                expected = _run(original, x, 1)
            except Exception as error:  # the original does not run on this input: nothing to compare
                return (f"the probe could not run it ({type(error).__name__}: {error}); "
                        "convert(verify=False) takes it on its structure")
            try:
                restore_buffers()
                got = _run(fused, x, 1)
            except Exception as error:
                return f"the fused module failed on the probe ({type(error).__name__}: {error})"
            mode = "training" if training else "eval"
            if not _close(got[0], expected[0]):
                return f"its output differs from the fused module's in {mode} mode"
            if not _close(got[1], expected[1]):
                return f"its input gradient differs from the fused module's in {mode} mode"
    return None
