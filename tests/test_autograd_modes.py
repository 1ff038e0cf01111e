"""Every autograd mode a user may try on every public op and module: reverse mode (the
fused kernels), forward mode (``torch.autograd.forward_ad`` duals, ``torch.func.jvp``,
``jacfwd``) and the ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``, ``vmap``).

The fused ops differentiate in reverse mode only; in every other mode the public
functions and modules run the plain-PyTorch reference, so the derivatives are real:
each one is compared with the same transform of ``gateshift.reference``, and must
not be zero (a forward-mode tangent used to come back as zeros)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import OPS, Case, call_op, op_params, published_and_fused

import gateshift
from gateshift import reference

CASE = Case(2, 3, 8, 4, 5)


def op_function(op: str, library, params: dict):
    """``op`` of ``library`` as a function of x and its parameters (in op_params' order)."""
    names = list(params)

    def fn(x, *values):
        return call_op(op, library, x, dict(zip(names, values)), CASE)

    return fn


def primals_and_tangents(op: str, gen):
    x = torch.randn(CASE.B * CASE.T, CASE.C, CASE.H, CASE.W, generator=gen, dtype=torch.float64)
    params = op_params(op, CASE, gen)
    primals = (x, *params.values())
    tangents = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in primals)
    return params, primals, tangents


@pytest.mark.parametrize("op", OPS)
def test_jvp_matches_the_reference(op, gen):
    params, primals, tangents = primals_and_tangents(op, gen)
    out, tangent = torch.func.jvp(op_function(op, gateshift, params), primals, tangents)
    out_ref, tangent_ref = torch.func.jvp(op_function(op, reference, params), primals, tangents)
    assert tangent.abs().max() > 0
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(tangent, tangent_ref)


@pytest.mark.parametrize("op", OPS)
def test_forward_ad_dual_tensors_match_the_reference(op, gen):
    params, primals, tangents = primals_and_tangents(op, gen)
    results = []
    for library in (gateshift, reference):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
            results.append(fwAD.unpack_dual(op_function(op, library, params)(*duals)).tangent)
    assert results[0] is not None and results[0].abs().max() > 0
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("transform", ["grad", "vjp", "jacrev", "jacfwd"])
def test_torch_func_transforms_match_autograd(op, transform, gen):
    small = Case(1, 3, 4, 2, 3)
    x = torch.randn(small.B * small.T, small.C, small.H, small.W, generator=gen, dtype=torch.float64)
    params = op_params(op, small, gen)

    def fn(x):
        return call_op(op, gateshift, x, params, small)

    # The reverse-mode fused kernels' own Jacobian, row by row: the expected answer.
    y = fn(x.clone().requires_grad_())
    cotangent = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    xr = x.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(fn(xr), xr, cotangent)
    if transform == "grad":
        got = torch.func.grad(lambda x: (fn(x) * cotangent).sum())(x)
        torch.testing.assert_close(got, expected_grad)
    elif transform == "vjp":
        out, pullback = torch.func.vjp(fn, x)
        torch.testing.assert_close(out, y.detach())
        torch.testing.assert_close(pullback(cotangent)[0], expected_grad)
    else:
        jacobian = getattr(torch.func, transform)(fn)(x)
        assert jacobian.shape == y.shape + x.shape
        torch.testing.assert_close((jacobian * cotangent[(...,) + (None,) * x.dim()]).sum(tuple(range(y.dim()))),
                                   expected_grad)


@pytest.mark.parametrize("op", OPS)
def test_vmap_over_clips_matches_the_unbatched_op(op, gen):
    params, primals, _ = primals_and_tangents(op, gen)
    fn = op_function(op, gateshift, params)
    stacked = torch.stack([primals[0], torch.randn(primals[0].shape, generator=gen, dtype=torch.float64)])
    batched = torch.func.vmap(lambda x: fn(x, *primals[1:]))(stacked)
    for i in range(2):
        torch.testing.assert_close(batched[i], fn(stacked[i], *primals[1:]))


@pytest.mark.parametrize("module", ["GSM", "GSF"])
@pytest.mark.parametrize("training", [True, False])
def test_module_forward_ad_matches_the_published_module(module, training, gen):
    published, fused = (m.train(training) for m in published_and_fused(module, gen))
    x = torch.randn(6, 8, 4, 5, generator=gen, dtype=torch.float64)
    tangent = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    results = []
    for m in (published, fused):
        with fwAD.dual_level():
            out = fwAD.unpack_dual(m(fwAD.make_dual(x, tangent)))
            results.append((out.primal, out.tangent))
    assert results[1][1].abs().max() > 0
    torch.testing.assert_close(results[1], results[0])
    # The running statistics were updated once by each, as in a plain forward, and
    # hold no tangent.
    for (name, a), b in zip(published.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}")
        with fwAD.dual_level():
            assert fwAD.unpack_dual(b).tangent is None


@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_module_torch_func_jvp_matches_the_published_module(module, gen):
    published, fused = (m.eval() for m in published_and_fused(module, gen))
    x = torch.randn(6, 8, 4, 5, generator=gen, dtype=torch.float64)
    tangent = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    out, t = torch.func.jvp(fused, (x,), (tangent,))
    out_ref, t_ref = torch.func.jvp(published, (x,), (tangent,))
    assert t.abs().max() > 0
    torch.testing.assert_close((out, t), (out_ref, t_ref))
    # In training, the published module's BatchNorm updates its buffers in place, which
    # torch.func refuses; the fused module refuses it the same way.
    for m in (published.train(), fused.train()):
        with pytest.raises(RuntimeError, match="in-place operation"):
            torch.func.jvp(m, (x,), (tangent,))


def test_reverse_mode_still_runs_the_fused_kernels(monkeypatch, gen):
    # The reference is the fallback of the other modes only: a plain backward must not touch it.
    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran in plain reverse mode")

    monkeypatch.setattr(reference, "gate_shift", refuse)
    params, primals, _ = primals_and_tangents("gate_shift", gen)
    x = primals[0].clone().requires_grad_()
    op_function("gate_shift", gateshift, params)(x, *primals[1:]).sum().backward()
    assert x.grad.abs().max() > 0
