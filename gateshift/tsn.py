"""A small TSN-style network: a 2-D ResNet over frames with a temporal module in
every block, class scores averaged over the frames of each clip.

Small enough to train in seconds on a CPU: the learning example and tests, and the
clip backbone of the GCF head's cost measurement use it. The published networks are in
``gateshift.models``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

# (channels, frames) -> module, e.g. gateshift.GSM or gateshift.reference.GSM.
TemporalFactory = Callable[[int, int], nn.Module]


class Bottleneck(nn.Module):
    """1x1 reduce, the temporal module, 3x3 (strided), 1x1 expand, residual: the GSM
    placement of the published ResNet variants (right after the first 1x1 conv)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int,
                 temporal: TemporalFactory | None, num_segments: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.temporal = temporal(width, num_segments) if temporal is not None else nn.Identity()
        self.spatial = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.expand = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.spatial(self.temporal(self.reduce(x))))
        return (y + self.shortcut(x)).relu()


class TSNResNet(nn.Module):
    """Input ``(B*T, 3, H, W)`` (TSN layout); output ``(B, num_classes)`` clip scores."""

    def __init__(
        self,
        temporal: TemporalFactory | None,
        num_segments: int = 8,
        num_classes: int = 10,
        widths: tuple[int, ...] = (64, 128, 256),
        stem_channels: int = 32,
        in_channels: int = 3,
    ):
        super().__init__()
        self.num_segments = num_segments
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(),
        )
        blocks, channels = [], stem_channels
        for i, width in enumerate(widths):
            blocks.append(Bottleneck(channels, width, 2 * width, 1 if i == 0 else 2, temporal, num_segments))
            channels = 2 * width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}"

    def forward(self, clips: Tensor) -> Tensor:
        features = self.blocks(self.stem(clips)).mean(dim=(2, 3))  # (B*T, C)
        scores = self.head(features)
        return scores.unflatten(0, (-1, self.num_segments)).mean(dim=1)  # TSN consensus: average over frames
