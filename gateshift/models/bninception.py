"""BN-Inception as the GSM/GSF authors build it (TSN's Caffe BN-Inception), with its
layer names, so their checkpoints load.

Every convolution has a bias and is followed by ``<name>_bn`` and an in-place ReLU;
poolings use Caffe's ceil mode. A temporal module sits in one branch of each of the
ten Inception blocks: the branch with the fewest convolutions (``1x1``, or
``3x3_reduce`` where a block has no 1x1 branch), after that convolution and before its
BatchNorm, named ``gsm_inception_<block>_<layer>`` (``gsf_...`` for GSF). TSM's
BN-Inception (its ``shift_place="block"``) shifts the input of the second stem block
and of every Inception block instead, which adds no parameters. The output is the
1024-channel feature after the global average pooling (7x7 as published for GSM and
TSM, adaptive in the GSF code), flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .layer_graph import LayerGraph, caffe_pool
from .temporal import Temporal


@dataclass(frozen=True)
class InceptionBlock:
    """Channels of one block's branches; ``None`` for an absent branch. ``pool_proj``
    None means the pooling branch is the pooling alone (the stride-2 blocks)."""

    name: str
    c1x1: int | None
    c3x3_reduce: int
    c3x3: int
    double_reduce: int
    double_3x3: int
    pool: str  # "ave" or "max"
    pool_proj: int | None
    stride: int = 1


# Channel counts from the published network definition (bn_inception.yaml).
BLOCKS = (
    InceptionBlock("3a", 64, 64, 64, 64, 96, "ave", 32),
    InceptionBlock("3b", 64, 64, 96, 64, 96, "ave", 64),
    InceptionBlock("3c", None, 128, 160, 64, 96, "max", None, stride=2),
    InceptionBlock("4a", 224, 64, 96, 96, 128, "ave", 128),
    InceptionBlock("4b", 192, 96, 128, 96, 128, "ave", 128),
    InceptionBlock("4c", 160, 128, 160, 128, 160, "ave", 128),
    InceptionBlock("4d", 96, 128, 192, 160, 192, "ave", 128),
    InceptionBlock("4e", None, 128, 192, 192, 256, "max", None, stride=2),
    InceptionBlock("5a", 352, 192, 320, 160, 224, "ave", 128),
    InceptionBlock("5b", 352, 192, 320, 192, 224, "max", 128),
)
FEATURE_DIM = 1024


def _gated_layer(block: InceptionBlock) -> str:
    """The branch that gets the temporal module: the 1x1 one, else the 3x3 reduction."""
    return "1x1" if block.c1x1 is not None else "3x3_reduce"


class BNInception(LayerGraph):
    """``(N, 3, 224, 224)`` frames to ``(N, 1024)`` features, with ``temporal`` (or none)
    at the published placements. ``fc`` is kept, as in the published backbone, for the
    classifier the TSN puts there (``nn.Identity`` until then)."""

    def __init__(self, temporal: Temporal | None = None):
        super().__init__(in_channels=3)
        x = self.conv_bn("conv1_7x7_s2", "data", 64, 7, stride=2, padding=3)
        x = self.add("pool1_3x3_s2", caffe_pool("max", 3, 2), x)
        x = self._block_input_shift("conv2", x, temporal)
        x = self.conv_bn("conv2_3x3_reduce", x, 64, 1)
        x = self.conv_bn("conv2_3x3", x, 192, 3, padding=1)
        x = self.add("pool2_3x3_s2", caffe_pool("max", 3, 2), x)
        for block in BLOCKS:
            x = self._inception(block, x, temporal)
        adaptive = temporal is not None and temporal.kind == "gsf"
        self.add("global_pool", nn.AdaptiveAvgPool2d(1) if adaptive else caffe_pool("ave", 7, 1), x)
        self.fc = nn.Identity()

    def _block_input_shift(self, block: str, x: str, temporal: Temporal | None) -> str:
        """TSM: the block's input, shifted once for all its branches (no parameters)."""
        if temporal is None or temporal.kind != "tsm":
            return x
        return self.add(f"{block}_shift", temporal.shift(None), x)

    def _branch_conv(self, name: str, source: str, channels: int, kernel_size: int, padding: int, stride: int,
                     gated: bool, temporal: Temporal | None) -> str:
        insert = None
        if gated and temporal is not None and temporal.kind != "tsm":
            insert = (f"{temporal.kind}_{name}", temporal.gate(channels))
        return self.conv_bn(name, source, channels, kernel_size, stride, padding, temporal=insert)

    def _inception(self, b: InceptionBlock, x: str, temporal: Temporal | None) -> str:
        p = f"inception_{b.name}"
        x = self._block_input_shift(p, x, temporal)
        gated = _gated_layer(b)
        outputs = []
        if b.c1x1 is not None:
            outputs.append(self._branch_conv(f"{p}_1x1", x, b.c1x1, 1, 0, 1, gated == "1x1", temporal))
        y = self._branch_conv(f"{p}_3x3_reduce", x, b.c3x3_reduce, 1, 0, 1, gated == "3x3_reduce", temporal)
        outputs.append(self._branch_conv(f"{p}_3x3", y, b.c3x3, 3, 1, b.stride, False, temporal))
        y = self._branch_conv(f"{p}_double_3x3_reduce", x, b.double_reduce, 1, 0, 1, False, temporal)
        y = self._branch_conv(f"{p}_double_3x3_1", y, b.double_3x3, 3, 1, 1, False, temporal)
        outputs.append(self._branch_conv(f"{p}_double_3x3_2", y, b.double_3x3, 3, 1, b.stride, False, temporal))
        if b.pool_proj is None:
            outputs.append(self.add(f"{p}_pool", caffe_pool("max", 3, 2), x))
        else:
            y = self.add(f"{p}_pool", caffe_pool(b.pool, 3, 1, 1), x)
            outputs.append(self.conv_bn(f"{p}_pool_proj", y, b.pool_proj, 1))
        return self.concat(f"{p}_output", outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(super().forward(x).flatten(1))
