"""ResNet-50 as the GSF and TSM authors build it: torchvision's layer names, with

* GSF: a ``gsf`` module in every bottleneck, after ``conv3`` and before ``bn3`` (so
  before the residual add), on all ``4 * planes`` channels (the GSF code's
  ``resnetGSFModels``);
* TSM: every bottleneck's ``conv1`` wrapped in ``TemporalShift`` (TSM's
  ``shift_place="blockres"``), so its weight is ``conv1.net.weight``.

The output is the 2048-channel feature after global average pooling; ``fc`` is the
classifier slot the TSN fills.
"""

from __future__ import annotations

from torch import Tensor, nn

from .temporal import Temporal

FEATURE_DIM = 2048
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, temporal: Temporal | None):
        super().__init__()
        out_channels = planes * self.expansion
        conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.conv1 = temporal.shift(conv1) if temporal is not None and temporal.kind == "tsm" else conv1
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))
        if temporal is not None and temporal.kind == "gsf":
            self.gsf = temporal.gate(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.conv3(y)
        if hasattr(self, "gsf"):
            y = self.gsf(y)
        y = self.bn3(y)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class ResNet50(nn.Module):
    """``(N, 3, 224, 224)`` frames to ``(N, 2048)`` features, with GSF, TSM or neither."""

    def __init__(self, temporal: Temporal | None = None):
        super().__init__()
        if temporal is not None and temporal.kind not in ("gsf", "tsm"):
            raise ValueError(f"the published ResNet-50 networks use GSF or TSM, not {temporal.kind!r} "
                             "(the GSM ResNet source was never released)")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for i, (planes, blocks, stride) in enumerate(STAGES, start=1):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(channels, planes, stride if b == 0 else 1, temporal))
                channels = planes * Bottleneck.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        # The published initialisation: Kaiming for 2-D convolutions (GSF's channel
        # convolutions included), unit BatchNorm; Conv3d and BatchNorm3d keep PyTorch's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
