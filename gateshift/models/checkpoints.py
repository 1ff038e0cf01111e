"""Loading the authors' checkpoints into gateshift's networks.

Their training scripts save ``{"epoch": ..., "state_dict": model.state_dict(), ...}``
of a ``DataParallel`` model, so every key carries a ``module.`` prefix; other
codebases save ``model_state_dict`` or the bare ``state_dict``. Nothing is downloaded:
the checkpoint is a file the user has, or a dict already in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

_WRAPPERS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def published_state_dict(checkpoint: str | os.PathLike | Mapping) -> dict[str, Tensor]:
    """The bare ``state_dict`` inside ``checkpoint`` (a path or a dict), with the
    wrapper dict and ``module.`` prefixes removed."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path or a dict, got {type(checkpoint).__name__}")
    for key in _WRAPPERS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and not isinstance(inner, Tensor):
            checkpoint = inner
            break
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: "
                            "not a state_dict (or one inside 'state_dict' / 'model_state_dict')")
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def load_published(net: nn.Module, checkpoint: str | os.PathLike | Mapping) -> nn.Module:
    """Loads an authors'-format checkpoint into ``net`` (a ``gateshift.models.tsn``
    network), strictly; returns ``net``.

    Raises ``KeyError`` naming the missing and unexpected keys, and ``ValueError``
    naming any tensor whose shape differs (a different ``num_classes``, backbone or
    temporal module).
    """
    state = published_state_dict(checkpoint)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match {type(net).__name__}: {len(missing)} missing key(s) {_listing(missing)}, "
            f"{len(unexpected)} unexpected key(s) {_listing(unexpected)}"
        )
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)}, network {tuple(own[k].shape)}"
             for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"checkpoint shapes differ from the network's: {_listing(wrong)}")
    net.load_state_dict(state, strict=True)
    return net


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
