"""InceptionV3 as the GSM/GSF authors build it (the CUHK Caffe InceptionV3), with its
layer names, so their checkpoints load.

Each convolution ``<base>_Conv2D`` has a bias and is followed by ``<base>_batchnorm``
and an in-place ReLU; poolings use Caffe's ceil mode, so the network runs at the
authors' 229x229 input (224 does not fit: a stride-2 block's branches disagree). The
temporal modules (``gsm_<conv>`` / ``gsf_<conv>``) sit after one convolution of each
block and before its BatchNorm: 10 GSMs, 11 GSFs (GSF adds ``mixed_6`` and gates
``mixed_3``'s 3x3 convolution where GSM gates its 1x1 tower). The output is the
2048-channel feature after the global average pooling, flattened.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layer_graph import LayerGraph, caffe_pool
from .temporal import Temporal

FEATURE_DIM = 2048

# The convolutions followed by a temporal module, from the published definitions
# (inceptionv3_gsm.yaml, inceptionv3_gsf.yaml).
GATED = {
    "gsm": {"mixed_conv", "mixed_1_conv", "mixed_2_conv", "mixed_3_tower_conv", "mixed_4_conv", "mixed_5_conv",
            "mixed_7_conv", "mixed_8_tower_conv", "mixed_9_conv", "mixed_10_conv"},
    "gsf": {"mixed_conv", "mixed_1_conv", "mixed_2_conv", "mixed_3_conv", "mixed_4_conv", "mixed_5_conv",
            "mixed_6_conv", "mixed_7_conv", "mixed_8_tower_conv", "mixed_9_conv", "mixed_10_conv"},
}


class InceptionV3(LayerGraph):
    """``(N, 3, 229, 229)`` frames to ``(N, 2048)`` features, with GSM or GSF (or none)
    at the published placements. ``top_cls_fc`` is the classifier slot the TSN fills."""

    def __init__(self, temporal: Temporal | None = None):
        super().__init__(in_channels=3)
        if temporal is not None and temporal.kind not in GATED:
            raise ValueError(f"the published InceptionV3 networks use GSM or GSF, not {temporal.kind!r}")
        self.temporal = temporal  # read by _conv while building
        x = self._conv("conv", "data", 32, 3, stride=2)
        x = self._conv("conv_1", x, 32, 3)
        x = self._conv("conv_2", x, 64, 3, padding=1)
        x = self.add("pool", caffe_pool("max", 3, 2), x)
        x = self._conv("conv_3", x, 80, 1)
        x = self._conv("conv_4", x, 192, 3)
        x = self.add("pool_1", caffe_pool("max", 3, 2), x)
        for name, pool_proj in (("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)):
            x = self._block_a(name, x, pool_proj)
        x = self._block_b("mixed_3", x)
        for name, width in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):
            x = self._block_c(name, x, width)
        x = self._block_d("mixed_8", x)
        x = self._block_e("mixed_9", x, "ave")
        x = self._block_e("mixed_10", x, "max")
        adaptive = temporal is not None and temporal.kind == "gsf"
        self.add("top_cls_pool", nn.AdaptiveAvgPool2d(1) if adaptive else caffe_pool("ave", 6, 1), x)
        self.top_cls_fc = nn.Identity()

    def _conv(self, base: str, source: str, channels: int, kernel_size, stride: int = 1, padding=0) -> str:
        temporal = self.temporal
        insert = None
        if temporal is not None and base in GATED[temporal.kind]:
            insert = (f"{temporal.kind}_{base}_Conv2D", temporal.gate(channels))
        return self.conv_bn(f"{base}_Conv2D", source, channels, kernel_size, stride, padding,
                            bn_name=f"{base}_batchnorm", temporal=insert)

    def _block_a(self, p: str, x: str, pool_proj: int) -> str:
        out = [self._conv(f"{p}_conv", x, 64, 1)]
        y = self._conv(f"{p}_tower_conv", x, 48, 1)
        out.append(self._conv(f"{p}_tower_conv_1", y, 64, 5, padding=2))
        y = self._conv(f"{p}_tower_1_conv", x, 64, 1)
        y = self._conv(f"{p}_tower_1_conv_1", y, 96, 3, padding=1)
        out.append(self._conv(f"{p}_tower_1_conv_2", y, 96, 3, padding=1))
        y = self.add(f"{p}_tower_2_pool", caffe_pool("ave", 3, 1, 1), x)
        out.append(self._conv(f"{p}_tower_2_conv", y, pool_proj, 1))
        return self.concat(f"{p}_join", out)

    def _block_b(self, p: str, x: str) -> str:
        out = [self._conv(f"{p}_conv", x, 384, 3, stride=2)]
        y = self._conv(f"{p}_tower_conv", x, 64, 1)
        y = self._conv(f"{p}_tower_conv_1", y, 96, 3, padding=1)
        out.append(self._conv(f"{p}_tower_conv_2", y, 96, 3, stride=2))
        out.append(self.add(f"{p}_pool", caffe_pool("max", 3, 2), x))
        return self.concat(f"{p}_join", out)

    def _block_c(self, p: str, x: str, width: int) -> str:
        out = [self._conv(f"{p}_conv", x, 192, 1)]
        y = self._conv(f"{p}_tower_conv", x, width, 1)
        y = self._conv(f"{p}_tower_conv_1", y, width, (7, 1), padding=(3, 0))
        out.append(self._conv(f"{p}_tower_conv_2", y, 192, (1, 7), padding=(0, 3)))
        y = self._conv(f"{p}_tower_1_conv", x, width, 1)
        y = self._conv(f"{p}_tower_1_conv_1", y, width, (1, 7), padding=(0, 3))
        y = self._conv(f"{p}_tower_1_conv_2", y, width, (7, 1), padding=(3, 0))
        y = self._conv(f"{p}_tower_1_conv_3", y, width, (1, 7), padding=(0, 3))
        out.append(self._conv(f"{p}_tower_1_conv_4", y, 192, (7, 1), padding=(3, 0)))
        y = self.add(f"{p}_tower_2_pool", caffe_pool("ave", 3, 1, 1), x)
        out.append(self._conv(f"{p}_tower_2_conv", y, 192, 1))
        return self.concat(f"{p}_join", out)

    def _block_d(self, p: str, x: str) -> str:
        y = self._conv(f"{p}_tower_conv", x, 192, 1)
        out = [self._conv(f"{p}_tower_conv_1", y, 320, 3, stride=2)]
        y = self._conv(f"{p}_tower_1_conv", x, 192, 1)
        y = self._conv(f"{p}_tower_1_conv_1", y, 192, (7, 1), padding=(3, 0))
        y = self._conv(f"{p}_tower_1_conv_2", y, 192, (1, 7), padding=(0, 3))
        out.append(self._conv(f"{p}_tower_1_conv_3", y, 192, 3, stride=2))
        out.append(self.add(f"{p}_pool", caffe_pool("max", 3, 2), x))
        return self.concat(f"{p}_join", out)

    def _block_e(self, p: str, x: str, pool: str) -> str:
        out = [self._conv(f"{p}_conv", x, 320, 1)]
        y = self._conv(f"{p}_tower_conv", x, 384, 1)
        out.append(self._conv(f"{p}_tower_mixed_conv", y, 384, (3, 1), padding=(1, 0)))
        out.append(self._conv(f"{p}_tower_mixed_conv_1", y, 384, (1, 3), padding=(0, 1)))
        y = self._conv(f"{p}_tower_1_conv", x, 448, 1)
        y = self._conv(f"{p}_tower_1_conv_1", y, 384, 3, padding=1)
        out.append(self._conv(f"{p}_tower_1_mixed_conv", y, 384, (3, 1), padding=(1, 0)))
        out.append(self._conv(f"{p}_tower_1_mixed_conv_1", y, 384, (1, 3), padding=(0, 1)))
        y = self.add(f"{p}_tower_2_pool", caffe_pool(pool, 3, 1, 1), x)
        out.append(self._conv(f"{p}_tower_2_conv", y, 192, 1))
        return self.concat(f"{p}_join", out)

    def forward(self, x: Tensor) -> Tensor:
        return self.top_cls_fc(super().forward(x).flatten(1))
