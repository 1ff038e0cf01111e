"""How fused results are compared with the reference, in the tests and in gateshift-check."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclasses.dataclass
class Comparison:
    """Largest absolute error of a result and the bound it must stay within."""

    error: float
    bound: float
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.error <= self.bound


def compare_to_reference(actual: Tensor, expected64: Tensor, low_precision_ref: Tensor | None = None) -> Comparison:
    """Compare ``actual`` with the float64 reference ``expected64``.

    float32/float64: a relative tolerance (2e-5, 1e-10) of the largest magnitude.
    bfloat16/float16: the error may be at most twice the error of the reference
    computed in that same dtype (``low_precision_ref``), plus one unit of the dtype
    at the largest magnitude for when the reference happens to be exact: the
    standard flash-attention holds its low-precision kernels to.
    """
    expected = expected64.detach().to(torch.float64).cpu()
    got = actual.detach().to(torch.float64).cpu()
    if got.shape != expected.shape:
        raise ValueError(f"shape {tuple(got.shape)} != reference's {tuple(expected.shape)}")
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (got - expected).abs().max().item() if got.numel() else 0.0
    finite = bool(torch.isfinite(got).all())
    if actual.dtype in LOW_PRECISION:
        if low_precision_ref is None:
            raise ValueError(f"a {actual.dtype} result needs the reference computed in {actual.dtype} too")
        ref = low_precision_ref.detach().to(torch.float64).cpu()
        ref_error = (ref - expected).abs().max().item() if ref.numel() else 0.0
        bound = 2 * ref_error + torch.finfo(actual.dtype).eps * scale
    else:
        rtol = 1e-10 if actual.dtype == torch.float64 else 2e-5
        bound = rtol * max(scale, 1.0)
    return Comparison(error, bound, finite)
