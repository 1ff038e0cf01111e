"""The ops as dispatcher citizens: opcheck (schema, fake kernels, autograd
registration, AOT dispatch) and torch.compile without graph breaks."""

from __future__ import annotations

import pytest
import torch
from helpers import Case, make_inputs
from torch import nn

import gateshift
from gateshift import reference
from gateshift._ops import ops


def forward_args(case: Case, gen, dtype=torch.float32, requires_grad=False, layout="TSN"):
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=dtype)
    x5 = x.unflatten(0, (case.B, case.T))
    if layout == "BCTHW":  # a permuted view, as gate_shift makes for 5-D input
        x5 = x5.transpose(1, 2).contiguous().transpose(1, 2)
    tensors = [x5, weight, bias, scale, shift]
    if requires_grad:
        tensors = [t.requires_grad_() if t is not None else None for t in tensors]
    return (*tensors, case.gated, case.order == "interleaved")


OPCHECK_CASES = [
    (Case(2, 3, 8, 4, 5), "TSN"),
    (Case(1, 2, 6, 3, 1, P=4, order="grouped", affine=False, bias=False), "TSN"),
    (Case(2, 4, 8, 3, 3), "BCTHW"),
    (Case(0, 3, 8, 4, 4), "TSN"),  # empty batch
]


@pytest.mark.parametrize("case,layout", OPCHECK_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward(case, layout, requires_grad, gen):
    args = forward_args(case, gen, requires_grad=requires_grad, layout=layout)
    torch.library.opcheck(ops.gate_shift_forward.default, args)


@pytest.mark.parametrize("case,layout", OPCHECK_CASES, ids=lambda v: str(v))
def test_opcheck_backward(case, layout, gen):
    x5, weight, bias, scale, shift, p, interleaved = forward_args(case, gen, layout=layout)
    out, gates = ops.gate_shift_forward(x5, weight, bias, scale, shift, p, interleaved)
    grad_out = torch.randn(out.shape, generator=gen)
    torch.library.opcheck(ops.gate_shift_backward.default, (grad_out, x5, gates, weight, scale, shift, p, interleaved))


@pytest.mark.parametrize("channels", [8, 5])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_batch_stats(channels, requires_grad, gen):
    x5 = torch.randn(2, 3, 8, 4, 5, generator=gen).requires_grad_(requires_grad)
    torch.library.opcheck(ops.batch_stats.default, (x5, channels))
    mean, _ = ops.batch_stats(x5.detach(), channels)
    gm, gv = torch.randn(channels, generator=gen), torch.randn(channels, generator=gen)
    torch.library.opcheck(ops.batch_stats_backward.default, (gm, gv, x5.detach(), mean, channels))


class TinyTSN(nn.Module):
    """A 2-D CNN over frames with a GSM after each convolution, as in TSN-style models."""

    def __init__(self, gsm, segments=4, width=16, classes=5):
        super().__init__()
        self.segments = segments
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.gsm1 = gsm(width, segments)
        self.conv = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.gsm2 = gsm(width, segments)
        self.head = nn.Linear(width, classes)

    def forward(self, clips):  # (B*T, 3, H, W)
        x = torch.relu(self.gsm1(self.stem(clips)))
        x = torch.relu(self.gsm2(self.conv(x)))
        scores = self.head(x.mean((2, 3)))
        return scores.unflatten(0, (-1, self.segments)).mean(1)  # average over frames


@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph_matches_eager(training, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    eager = TinyTSN(gateshift.GSM)
    for m in eager.modules():  # non-zero gates
        if isinstance(m, gateshift.GSM):
            nn.init.normal_(m.conv3D.weight, std=0.2)
    compiled_model = TinyTSN(gateshift.GSM)
    compiled_model.load_state_dict(eager.state_dict())
    eager.train(training)
    compiled_model.train(training)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    for batch in (2, 3):
        clips = torch.randn(batch * 4, 3, 12, 12, generator=gen)
        out_e, out_c = eager(clips), compiled(clips)
        torch.testing.assert_close(out_c, out_e)
        if training:
            out_e.sum().backward()
            out_c.sum().backward()
            for (name, p1), p2 in zip(eager.named_parameters(), compiled_model.parameters()):
                torch.testing.assert_close(p2.grad, p1.grad, msg=lambda m: f"grad {name}: {m}")
    for b1, b2 in zip(eager.buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b2, b1)


def test_compile_inductor_functional(gen):
    case = Case(2, 4, 8, 5, 5)
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=torch.float32)

    def f(x, weight, bias, scale, shift):
        return gateshift.gate_shift(x, weight, bias, num_segments=4, bn_scale=scale, bn_shift=shift) * 2 + 1

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, weight, bias, scale, shift), f(x, weight, bias, scale, shift))


def test_reference_module_is_what_compile_baselines_use(gen):
    # The benchmark compiles the reference module; it must compile without breaks too.
    model = reference.GSM(8, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 8, 5, 5, generator=gen)
    torch.testing.assert_close(compiled(x), model(x))
