"""Helpers shared by the gateshift tests: problem cases, random inputs, comparisons."""

from __future__ import annotations

import dataclasses

import torch

from gateshift.testing.compare import compare_to_reference


@dataclasses.dataclass
class Case:
    """One gate-shift problem: sizes and which optional arguments are present."""

    B: int
    T: int
    C: int
    H: int
    W: int
    P: int | None = None  # gated channels; None = C
    order: str = "interleaved"
    affine: bool = True
    bias: bool = True

    @property
    def gated(self) -> int:
        return self.C if self.P is None else self.P

    def __str__(self):
        return (
            f"B{self.B}T{self.T}C{self.C}H{self.H}W{self.W}P{self.gated}-{self.order}"
            f"{'-bn' if self.affine else ''}{'-bias' if self.bias else ''}"
        )


def make_inputs(case: Case, gen: torch.Generator, dtype=torch.float64, device="cpu"):
    """Random x and parameters for ``case``: (x, weight, bias, bn_scale, bn_shift).

    The gating weights are large enough that the gates cover much of (-1, 1), and
    the BN shift puts a good part of the ReLU inputs on each side of zero.
    """
    p = case.gated

    def rand(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset).to(dtype=dtype, device=device)

    x = rand(case.B * case.T, case.C, case.H, case.W)
    weight = rand(2, p // 2, 3, 3, 3, scale=1.5 / (27 * p / 2) ** 0.5)
    bias = rand(2, scale=0.5) if case.bias else None
    scale = rand(p, scale=0.3, offset=1.0) if case.affine else None
    shift = rand(p, scale=0.5) if case.affine else None
    return x, weight, bias, scale, shift


def op_kwargs(case: Case, bn_scale, bn_shift) -> dict:
    return dict(
        num_segments=case.T,
        bn_scale=bn_scale,
        bn_shift=bn_shift,
        channels=case.P,
        channel_order=case.order,
    )


def run_with_grads(fn, case: Case, inputs, grad_out):
    """Output of ``fn`` on ``inputs`` and the gradients of ``<out, grad_out>`` in every tensor input."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    x, weight, bias, scale, shift = leaves
    out = fn(x, weight, bias, **op_kwargs(case, scale, shift))
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad_out.to(out.dtype))
    return out.detach(), list(grads)


def assert_close_to_reference(actual, expected64, low_precision_ref=None, *, what=""):
    """Assert gateshift.testing.compare's rule: plain tolerances for float32/float64,
    at most twice the reference's own error in bfloat16/float16."""
    c = compare_to_reference(actual, expected64, low_precision_ref)
    assert c.finite, f"{what}: non-finite values"
    assert c.ok, f"{what}: error {c.error:.3g} > bound {c.bound:.3g}"


def train_step_and_compare(published, fused, x, gen, lr: float, step: int) -> None:
    """One forward and backward of both modules on ``x``: outputs, the gradients of ``x``
    and of every parameter, and the buffers must agree; then an SGD step of ``lr`` on both,
    so that the next step starts from new weights."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = published(x1), fused(x2)
    torch.testing.assert_close(y2, y1, msg=lambda m: f"step {step} output: {m}")
    g = torch.randn(y1.shape, generator=gen, dtype=y1.dtype)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, msg=lambda m: f"step {step} grad x: {m}")
    for (name, p1), p2 in zip(published.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=lambda m: f"step {step} grad {name}: {m}")
    for (name, b1), b2 in zip(published.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b2, b1, msg=lambda m: f"step {step} buffer {name}: {m}")
    with torch.no_grad():
        for p1, p2 in zip(published.parameters(), fused.parameters()):
            p1 -= lr * p1.grad
            p2 -= lr * p2.grad
            p1.grad = p2.grad = None
