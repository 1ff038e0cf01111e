"""GSM and GSF training with batch statistics as one autograd node
(gateshift._training_node): the same numbers as the published modules and as the
composed path (folded_batch_norm + the fused op), for every BatchNorm option, under
autocast, and under gradcheck."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gateshift import modules
from helpers import IMPLEMENTATIONS, published_and_fused, train_step_and_compare

MODULE_IMPLEMENTATIONS = [p for p in IMPLEMENTATIONS if p.values[0].name != "cuda_emulator"]

BN_OPTIONS = [dict(), dict(momentum=None), dict(affine=False), dict(eps=1e-3, momentum=0.3)]


def with_batch_norm(published, fused, **bn_options):
    """Both modules with a new random BatchNorm3d of ``bn_options``, the same in both."""
    bn = nn.BatchNorm3d(published.fPlane, **bn_options).to(published.conv3D.weight.dtype)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.3)
    published.bn, fused.bn = copy.deepcopy(bn), copy.deepcopy(bn)
    return published, fused


@pytest.mark.parametrize("impl", MODULE_IMPLEMENTATIONS)
@pytest.mark.parametrize("module", ["GSM", "GSF"])
@pytest.mark.parametrize("bn_options", BN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_training_steps_match_the_published_module(impl, module, bn_options, gen):
    published, fused = with_batch_norm(*published_and_fused(module, gen, fplane=16, frames=4), **bn_options)
    published, fused = published.to(impl.device), fused.to(impl.device)
    channels = 16 if module == "GSM" else 20  # the published GSF passes channels past fPlane through
    for step in range(2):
        x = torch.randn(8, channels, 5, 6, generator=gen, dtype=torch.float64).to(impl.device)
        train_step_and_compare(published, fused, x, gen, 0.1, step)


def test_the_training_forward_is_one_autograd_node(gen):
    _, fused = published_and_fused("GSM", gen)
    x = torch.randn(6, 8, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    node = fused(x).grad_fn.next_functions[0][0]  # past the (B*T) view of the output
    assert "GateShiftWithBatchStats" in type(node).__name__
    # x's gradient comes from that node alone (through its (B, T) view): nothing to add.
    (view, _), *params = node.next_functions
    assert [type(n).__name__ for n, _ in view.next_functions] == ["AccumulateGrad"]


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_gradcheck(module, gen):
    _, fused = published_and_fused(module, gen, fplane=8, frames=3)
    names = [name for name, _ in fused.named_parameters()]
    x = torch.randn(6, 10, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        # functional_call binds the parameters without a torch.func transform: plain
        # reverse-mode autograd, so gradcheck differentiates the one-node path.
        return torch.func.functional_call(fused, dict(zip(names, values)), (x,))

    values = [p.detach().clone().requires_grad_() for p in fused.parameters()]
    torch.autograd.gradcheck(run, (x, *values), fast_mode=True)


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_autocast_gradients_equal_the_composed_paths(module, gen, monkeypatch):
    _, fused = published_and_fused(module, gen, fplane=16, frames=4, dtype=torch.float32)
    x = torch.randn(8, 16, 7, 7, generator=gen)
    results = []
    for one_node in (True, False):
        model = copy.deepcopy(fused)
        xi = x.clone().requires_grad_()
        with monkeypatch.context() as patch:
            if not one_node:
                patch.setattr(modules, "_training_with_batch_statistics", lambda *args: None)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(xi)
            out.float().square().sum().backward()
        assert out.dtype == torch.bfloat16 and xi.grad.dtype == torch.float32
        results.append((out, xi.grad, [p.grad for p in model.parameters()], list(model.buffers())))
    (out1, gx1, grads1, buffers1), (out2, gx2, grads2, buffers2) = results
    assert torch.equal(out1, out2)
    torch.testing.assert_close(gx1, gx2)
    for g1, g2 in zip(grads1, grads2):
        torch.testing.assert_close(g1, g2)
    for b1, b2 in zip(buffers1, buffers2):
        torch.testing.assert_close(b1, b2)


def node_name(out):
    return type(out.grad_fn.next_functions[0][0]).__name__  # past the (B*T) view of the output


def test_eval_takes_the_composed_path(gen):
    # In eval the running statistics are used: there is no batch statistics' gradient to
    # fold in, and the composed path (folded_batch_norm + the op) runs.
    _, fused = published_and_fused("GSM", gen)
    x = torch.randn(6, 8, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert "GateShiftWithBatchStats" in node_name(fused.train()(x))
    assert "GateShiftWithBatchStats" not in node_name(fused.eval()(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_x_gradient_with_a_large_mean(dtype, gen, monkeypatch):
    # mean / std = 50: the statistics' gradient slope * (x - mean) must not be formed as
    # slope * x - slope * mean in half precision, which cancels its digits away (that
    # form measured up to 1.35x the composed path's error in float16 at this shape). Against float64 on the
    # same (rounded) x and output gradient, so that only the arithmetic is compared.
    _, fused = published_and_fused("GSM", gen, fplane=16, frames=4)
    x = (torch.randn(16, 16, 28, 28, generator=gen, dtype=torch.float64) * 2 + 100).to(dtype)
    g = torch.randn(16, 16, 28, 28, generator=gen, dtype=torch.float64).to(dtype)
    xe = x.double().requires_grad_()
    fused(xe).backward(g.double())
    errors = []
    for one_node in (True, False):
        model = copy.deepcopy(fused).to(dtype)
        xi = x.clone().requires_grad_()
        with monkeypatch.context() as patch:
            if not one_node:
                patch.setattr(modules, "_training_with_batch_statistics", lambda *args: None)
            model(xi).backward(g)
        errors.append((xi.grad.double() - xe.grad).abs().max().item())
    assert errors[0] <= 1.1 * errors[1], f"node {errors[0]:.3g}, composed path {errors[1]:.3g}"


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_parameters_alone_get_their_gradients(module, gen):
    # x without requires_grad (a frozen stem's output): only the parameters' gradients,
    # the same as when x's is computed too.
    _, fused = published_and_fused(module, gen)
    x = torch.randn(6, 8, 4, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 8, 4, 5, generator=gen, dtype=torch.float64)
    params = list(fused.parameters())
    alone = torch.autograd.grad(fused(x), params, g)
    with_x = torch.autograd.grad(fused(x.clone().requires_grad_()), params, g)
    for a, b in zip(alone, with_x):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
