"""The published GST ResNet-50 (Luo and Yuille, ICCV 2019): a 3-D ResNet-50 whose
bottlenecks' 3x3 convolutions are GSTs, with the published names and shapes.

* stem: ``conv1`` ``Conv3d(3, 64, (1, 7, 7), stride (1, 2, 2))``, ``bn1``, and a
  ``(1, 3, 3)`` max-pool;
* bottlenecks: 1x1x1 ``conv1``/``conv3``, the GST's ``conv2`` (spatial) and ``Tconv``
  (temporal) with the stride, ``bn2`` over their concatenation; no temporal stride;
* head: the frames' 7x7 average pooling and ``fc``, one score vector per frame.

Input ``(B, 3, T, 224, 224)``, output ``(B*T, num_classes)``, as published (the clip score
is the average over its frames, left to the caller as in the published code).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..gst import grouped_spatial_temporal, gst_channels
from ..modules import positive_int

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


class GSTBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, alpha: int, beta: int, stride: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv3d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        # The GST's parameters sit on the block itself, as published (layerX.Y.conv2, .Tconv).
        i_s, o_s, i_t, o_t = gst_channels(planes, planes, alpha, beta)
        self.conv2 = nn.Conv3d(i_s, o_s, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.Tconv = nn.Conv3d(i_t, o_t, 3, stride=(1, stride, stride), padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.alpha, self.beta, self.stride = alpha, beta, stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = grouped_spatial_temporal(y, self.conv2.weight, self.Tconv.weight, beta=self.beta, stride=self.stride)
        y = self.relu(self.bn2(y))
        y = self.bn3(self.conv3(y))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class GSTResNet50(nn.Module):
    def __init__(self, alpha: int = 4, beta: int = 2, num_classes: int = 174):
        super().__init__()
        alpha = positive_int("alpha", alpha)
        if alpha < 2:
            raise ValueError(f"alpha must be at least 2 (out // alpha temporal channels), got {alpha}")
        if beta not in (1, 2):
            raise ValueError(f"beta must be 1 (GST-Large) or 2, got {beta!r}")
        num_classes = positive_int("num_classes", num_classes)
        self.conv1 = nn.Conv3d(3, 64, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        channels = 64
        for i, (planes, blocks, stride) in enumerate(STAGES, start=1):
            layer = []
            for b in range(blocks):
                layer.append(GSTBottleneck(channels, planes, alpha, beta, stride if b == 0 else 1))
                channels = planes * GSTBottleneck.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():  # the published initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() != 5 or clips.shape[1] != 3:
            raise ValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(clips))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        frames = x.transpose(1, 2).flatten(0, 1)  # (B*T, 2048, 7, 7), one score vector per frame
        return self.fc(self.avgpool(frames).flatten(1))


def gst_resnet50(alpha: int = 4, beta: int = 2, num_classes: int = 174) -> GSTResNet50:
    """The published GST ResNet-50; see :mod:`gateshift.models.gst_resnet`."""
    return GSTResNet50(alpha, beta, num_classes)
