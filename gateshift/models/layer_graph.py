"""A flat layer graph: the form the authors' Inception backbones take.

The GSM/GSF authors build BN-Inception and InceptionV3 from a list of named layers,
each reading one named blob (or, for a concatenation, several) and writing one; every
layer is an attribute of the backbone itself, so checkpoint keys are flat
(``inception_3a_1x1.weight``). :class:`LayerGraph` keeps exactly that shape, so the
published checkpoints load, while the architectures themselves are written as Python
tables in ``bninception.py`` and ``inceptionv3.py``.

ReLUs are applied in place on the BatchNorm outputs, as in the published graphs; they
hold no parameters and get no module of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def caffe_pool(kind: str, kernel_size: int, stride: int, padding: int = 0) -> nn.Module:
    """The published Caffe-converted pooling: ``"max"`` or ``"ave"``, ceil mode, and
    (average) padding counted in the divisor."""
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=True)
    if kind == "ave":
        return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=True)
    raise ValueError(f"pooling kind must be 'max' or 'ave', got {kind!r}")


@dataclass(frozen=True)
class Step:
    """One node: ``output = layer(inputs[0])``, or the channel concatenation of ``inputs``
    when ``layer`` is None; ``relu`` applies an in-place ReLU to the output."""

    output: str
    inputs: tuple[str, ...]
    layer: str | None = None
    relu: bool = False


class LayerGraph(nn.Module):
    """Layers registered flat, in the order given, and run as a graph over named blobs.

    Build with :meth:`add` (a module reading one blob) and :meth:`concat`; the blob
    ``"data"`` is the input and the last step's output is the result. :meth:`channels`
    gives any blob's channel count, which the architecture tables use to size layers.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self._steps: list[Step] = []
        self._channels: dict[str, int] = {"data": in_channels}

    def channels(self, blob: str) -> int:
        return self._channels[blob]

    def add(self, name: str, module: nn.Module, source: str, out_channels: int | None = None,
            output: str | None = None, relu: bool = False) -> str:
        """Registers ``module`` as attribute ``name``, reading blob ``source``; returns the
        output blob's name (``output``, default ``name``)."""
        if source not in self._channels:
            raise KeyError(f"{name}: unknown input blob {source!r}")
        self.add_module(name, module)
        output = name if output is None else output
        self._steps.append(Step(output, (source,), name, relu))
        self._channels[output] = self._channels[source] if out_channels is None else out_channels
        return output

    def concat(self, output: str, sources: list[str]) -> str:
        self._steps.append(Step(output, tuple(sources)))
        self._channels[output] = sum(self._channels[s] for s in sources)
        return output

    def forward(self, x: Tensor) -> Tensor:
        blobs = {"data": x}
        for step in self._steps:
            if step.layer is None:
                y = torch.cat([blobs[s] for s in step.inputs], dim=1)
            else:
                y = getattr(self, step.layer)(blobs[step.inputs[0]])
            if step.relu:
                y = torch.relu_(y)
            blobs[step.output] = y
        return blobs[self._steps[-1].output]

    # The pattern the tables repeat.
    def conv_bn(self, name: str, source: str, out_channels: int, kernel_size, stride=1, padding=0, *,
                bn_name: str | None = None, temporal: tuple[str, nn.Module] | None = None,
                conv: nn.Module | None = None) -> str:
        """Conv2d ``name`` (with a bias, as every published Inception conv), optionally a
        temporal module ``(attribute, module)`` on its output, then the BatchNorm
        ``bn_name`` (default ``name + "_bn"``) and an in-place ReLU. ``conv`` replaces the
        plain Conv2d (TSM wraps it). Returns the BatchNorm's blob."""
        if conv is None:
            conv = nn.Conv2d(self.channels(source), out_channels, kernel_size, stride, padding)
        blob = self.add(name, conv, source, out_channels)
        if temporal is not None:
            blob = self.add(temporal[0], temporal[1], blob)
        bn_name = name + "_bn" if bn_name is None else bn_name
        return self.add(bn_name, nn.BatchNorm2d(out_channels), blob, relu=True)
