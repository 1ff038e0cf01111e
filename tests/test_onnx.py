"""gateshift.onnx.export: models holding GSM, GSF, TemporalShift and GST (and the ops in
(B, C, T, H, W) layout) export in standard ONNX operators, and onnxruntime's outputs match
eager PyTorch for clip counts other than the example's."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise_network
from torch import nn

import gateshift
import gateshift.onnx
from gateshift.tsn import TSNResNet

onnx = pytest.importorskip("onnx", reason="onnx is a test dependency")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency")

SIZE = 16


def randomised(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random weights and BatchNorm statistics (helpers.randomise_network), in eval mode."""
    return randomise_network(model, gen).eval()


def small_network(temporal: str, frames: int) -> nn.Module:
    factories = {
        "gsm": lambda c, t: gateshift.GSM(c, t),
        "gsf": lambda c, t: gateshift.GSF(c, t),
        "tsm": lambda c, t: gateshift.TemporalShift(None, t, 4),
        "gst": None,
    }
    net = TSNResNet(factories[temporal], num_segments=frames, num_classes=5, widths=(8, 16), stem_channels=8)
    if temporal == "gst":  # GST as each bottleneck's 3x3 convolution, on frames in TSN layout
        for block in net.blocks:
            conv = block.spatial[0]
            block.spatial[0] = gateshift.GST(conv.in_channels, conv.out_channels, stride=conv.stride[0],
                                             num_segments=frames)
    return net


def run_onnx(path, x: torch.Tensor):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def standard_only(model_proto) -> None:
    domains = {node.domain for node in model_proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"custom domains in the graph: {domains}"
    assert not any(f.domain not in ("", "ai.onnx") for f in model_proto.functions)


@pytest.mark.parametrize("temporal", ["gsm", "gsf", "tsm", "gst"])
def test_export_runs_in_onnxruntime_for_any_clip_count(temporal, tmp_path, gen):
    frames = 4
    net = randomised(small_network(temporal, frames), gen)
    path = tmp_path / "model.onnx"
    gateshift.onnx.export(net, (torch.randn(2 * frames, 3, SIZE, SIZE, generator=gen),), path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    standard_only(proto)
    for clips in (1, 3):  # neither is the example's 2
        x = torch.randn(clips * frames, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            expected = net(x)
        actual = run_onnx(path, x)
        assert actual.shape == expected.shape
        assert float((actual - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_no_node_count_grows_with_the_frames(tmp_path, gen):
    counts = []
    for frames in (2, 6):
        net = randomised(small_network("gsm", frames), gen)
        path = tmp_path / f"t{frames}.onnx"
        gateshift.onnx.export(net, (torch.randn(2 * frames, 3, SIZE, SIZE, generator=gen),), path)
        counts.append(len(onnx.load(str(path)).graph.node))
    assert counts[0] == counts[1], counts


class FiveD(nn.Module):
    """The functional ops on (B, C, T, H, W) tensors, as a 3-D CNN codebase calls them,
    then a GST on the same layout."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv3d(channels, 2, 3, padding=1, groups=2)
        self.gst = gateshift.GST(channels, channels, alpha=4, beta=2)

    def forward(self, x):
        y = gateshift.gate_shift(x, self.gate.weight, self.gate.bias, layout="BCTHW")
        y = gateshift.temporal_shift(y, fold_div=4, layout="BCTHW")
        return self.gst(y)


def test_export_of_the_bcthw_layout(tmp_path, gen):
    net = randomised(FiveD(8), gen)
    path = tmp_path / "bcthw.onnx"
    clips = torch.export.Dim("clips", min=1)
    gateshift.onnx.export(net, (torch.randn(2, 8, 4, 6, 6, generator=gen),), path, dynamic_shapes=({0: clips},))
    standard_only(onnx.load(str(path)))
    x = torch.randn(3, 8, 4, 6, 6, generator=gen)
    with torch.no_grad():
        expected = net(x)
    assert float((run_onnx(path, x) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_float16_export(tmp_path, gen):
    frames = 4
    net = randomised(small_network("gsm", frames), gen)
    x = torch.randn(2 * frames, 3, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        expected = net(x)
    path = tmp_path / "half.onnx"
    gateshift.onnx.export(net.half(), (x.half(),), path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    standard_only(proto)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    actual = run_onnx(path, x.half()).float()
    assert float((actual - expected).abs().max()) <= 2e-2 * float(expected.abs().max())


def test_export_errors(gen):
    net = small_network("gsm", 4)
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        gateshift.onnx.export(net.train(), (torch.randn(8, 3, SIZE, SIZE),))
    with pytest.raises(ValueError, match="not a multiple of T=4"):
        gateshift.onnx.export(net.eval(), (torch.randn(6, 3, SIZE, SIZE),))
    with pytest.raises(ValueError, match=r"at least 2 clips \(8 frames\), got 4"):
        gateshift.onnx.export(net.eval(), (torch.randn(4, 3, SIZE, SIZE),))
    mixed = nn.Sequential(gateshift.GSM(8, 4), gateshift.GSM(8, 2)).eval()
    with pytest.raises(ValueError, match=r"agree on the frames per clip; found \[2, 4\]"):
        gateshift.onnx.export(mixed, (torch.randn(8, 8, 4, 4),))
    with pytest.raises(TypeError, match="args must be a tuple"):
        gateshift.onnx.export(net.eval(), torch.randn(8, 3, SIZE, SIZE))


def test_the_fused_path_is_back_after_export(gen):
    net = randomised(small_network("gsm", 4), gen)
    gateshift.onnx.export(net, (torch.randn(8, 3, SIZE, SIZE, generator=gen),))
    graph = torch.export.export(net, (torch.randn(8, 3, SIZE, SIZE, generator=gen),)).graph
    assert any("gateshift" in str(node.target) for node in graph.nodes)
