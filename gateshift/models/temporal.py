"""Which temporal module a network gets, and from which implementation.

The backbones ask this object for a module at each published placement; it answers
with gateshift's fused modules, or with the plain-PyTorch published ones
(``gateshift.reference``: the same parameters and names, the authors' computation),
so that the same network can be built both ways and compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .. import modules as fused
from .. import reference as published

KINDS = ("gsm", "gsf", "tsm")
IMPLEMENTATIONS = ("fused", "published")


@dataclass(frozen=True)
class Temporal:
    """``kind`` in ``KINDS``; ``gsf_ch_ratio`` as the GSF authors' ``--gsf_ch_ratio``;
    ``shift_div`` as TSM's ``--shift_div`` (the shifted fraction is 2 / shift_div)."""

    kind: str
    num_segments: int
    implementation: str = "fused"
    gsf_ch_ratio: float = 100
    shift_div: int = 8

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"temporal must be one of {KINDS} or None, got {self.kind!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
        if not isinstance(self.num_segments, int) or isinstance(self.num_segments, bool) or self.num_segments < 1:
            raise ValueError(f"num_segments must be a positive int, got {self.num_segments!r}")

    def gate(self, channels: int) -> nn.Module:
        """The GSM or GSF module on ``channels`` channels."""
        lib = fused if self.implementation == "fused" else published
        if self.kind == "gsm":
            return lib.GSM(channels, num_segments=self.num_segments)
        if self.kind == "gsf":
            return lib.GSF(channels, num_segments=self.num_segments, gsf_ch_ratio=self.gsf_ch_ratio)
        raise ValueError(f"{self.kind} has no gate module")

    def shift(self, net: nn.Module) -> nn.Module:
        """TSM's ``TemporalShift`` wrapping ``net`` (the shift runs before it)."""
        lib = fused if self.implementation == "fused" else published
        return lib.TemporalShift(net, n_segment=self.num_segments, n_div=self.shift_div)
