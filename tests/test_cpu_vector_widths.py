"""The CPU kernels' register-blocked loops (csrc/cpu/register_blocked_correlation.h) come
in three vector shapes: 512-bit (AVX-512), 256-bit (AVX2) and 128-bit (NEON on aarch64,
SSE elsewhere). A CPU runs one of them, so without the test-only switch
``gateshift::_set_cpu_vector_bits`` a machine's tests would leave the other two, the
aarch64 one among them, untried. Here every shape runs on this machine and:

* matches the float64 reference, forward and backward, GSM and GSF, on planes whose
  padded rows end mid-strip and mid-vector;
* gives the same bits as every other shape for the output and grad_x: each of their
  sums runs in one order whatever the shape (the note atop that header). The weight
  gradients' sums go lane by lane, so they depend on the width: close, not equal.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    Case,
    assert_close_to_reference,
    forward_and_backward,
    fuse_inputs,
    op_kwargs,
    restored_after_test,
)

import gateshift
from gateshift import reference

WIDTHS = (128, 256, 512)
OPS = ("gate_shift", "gate_shift_fuse")
NAMES = ("out", "x", "weight", "bias", "bn_scale", "bn_shift", "fuse_weight", "fuse_bias")


@pytest.fixture
def cpu_vector_bits():
    """Sets the vector width of the CPU loops (0: this CPU's own) for one test."""
    yield from restored_after_test(torch.ops.gateshift._set_cpu_vector_bits)


# W 29 and 3: padded rows of 31 and 5, so the flat loop ends inside a strip and, for the
# wider shapes, inside a vector; C 24 fills the forward's channel chunks unevenly.
CASES = [Case(2, 3, 24, 13, 29), Case(1, 5, 8, 4, 3, P=4), Case(2, 1, 8, 7, 9)]


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_every_vector_width_matches_the_reference(bits, op, case, dtype, cpu_vector_bits, gen):
    inputs = fuse_inputs(case, gen)
    grad_out = torch.randn(case.B * case.T, case.C, case.H, case.W, generator=gen, dtype=torch.float64)
    expected = forward_and_backward(reference, op, case, inputs, grad_out)
    cpu_vector_bits(bits)
    got = forward_and_backward(gateshift, op, case, [t.to(dtype) for t in inputs], grad_out.to(dtype))
    for name, a, b in zip(NAMES, got, expected):
        assert_close_to_reference(a, b, what=f"{name} ({bits}-bit vectors)")
    x, weight, bias, scale, shift, *fusion = [t.to(dtype) for t in inputs]
    with torch.no_grad():  # the inference forward, which saves nothing
        out = getattr(gateshift, op)(x, weight, bias, *(fusion if op == "gate_shift_fuse" else ()),
                                     **op_kwargs(case, scale, shift))
    assert_close_to_reference(out, expected[0], what=f"inference out ({bits}-bit vectors)")


@pytest.mark.parametrize("op", OPS)
def test_out_and_grad_x_have_the_same_bits_in_every_width(op, cpu_vector_bits, gen):
    case = CASES[0]
    inputs = [t.float() for t in fuse_inputs(case, gen)]
    grad_out = torch.randn(case.B * case.T, case.C, case.H, case.W, generator=gen)
    results = {}
    for bits in WIDTHS:
        cpu_vector_bits(bits)
        results[bits] = forward_and_backward(gateshift, op, case, inputs, grad_out)
    for bits in WIDTHS[1:]:
        for name, a, b in zip(NAMES, results[bits], results[WIDTHS[0]]):
            if name in ("out", "x"):
                torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}: {bits} vs {WIDTHS[0]} bits")
            else:  # sums of thousands of products, regrouped: to their largest element's 1e-5
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item(),
                                           msg=f"{name}: {bits} vs {WIDTHS[0]} bits")
        # The switch took effect: the weight gradient's lane-by-lane sums regrouped (most
        # of its 648 elements differ in their last bits; measured 516 and 521 of them).
        assert (results[bits][2] != results[WIDTHS[0]][2]).any(), f"{bits}-bit vectors ran as {WIDTHS[0]}-bit ones"


def test_the_switch_names_the_widths_it_takes(cpu_vector_bits):
    cpu_vector_bits(256)
    assert torch.ops.gateshift._set_cpu_vector_bits(128) == 256
    assert torch.ops.gateshift._set_cpu_vector_bits(0) == 128
    with pytest.raises(ValueError, match="bits must be 0, 128, 256 or 512, got 64"):
        torch.ops.gateshift._set_cpu_vector_bits(64)
