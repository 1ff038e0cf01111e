"""Helpers shared by the gateshift tests: the implementations to parametrise over,
problem cases, random inputs, comparisons."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import gateshift
from gateshift import reference
from gateshift.testing import cuda_emulator
from gateshift.testing.compare import compare_to_reference
from gateshift.testing.implementations import NAMES, Implementation, implementation


def implementations(*names: str) -> list:
    """pytest parameters for the named implementations (every one by default), each an
    :class:`Implementation` with its name as id; "cuda" carries the ``cuda`` marker, so it
    is skipped where ``torch.cuda.is_available()`` is False (decided at run time)."""
    return [
        pytest.param(implementation(name), id=name, marks=[pytest.mark.cuda] if name == "cuda" else [])
        for name in names or NAMES
    ]


# Every implementation of the ops, as torchvision's op testers parametrise over devices:
# @pytest.mark.parametrize("impl", IMPLEMENTATIONS) and move inputs to impl.device.
IMPLEMENTATIONS = implementations()


def implementation_cases(cases, emulated, *, ids=str) -> list:
    """(impl, case) pytest parameters: every one of ``cases`` on the CPU and CUDA, the
    ``emulated`` ones on the emulator. An emulated block of 256 threads costs up to a
    second on a 2-core machine, so the emulator gets small cases (its random
    configurations, in each op's file, cover the rest of the ground)."""
    params = []
    for param in IMPLEMENTATIONS:
        impl = param.values[0]
        for case in emulated if impl.name == "cuda_emulator" else cases:
            params.append(pytest.param(impl, case, id=f"{impl.name}-{ids(case)}", marks=param.marks))
    return params


def launches_as_on(impl: Implementation, num_sms: int | None):
    """For the emulator, a context in which its launches are configured as on a device
    with ``num_sms`` multiprocessors (few: whole clips per block; many: clips cut into
    runs of frames). Nothing for the other implementations, nor for ``num_sms=None``."""
    if impl.name != "cuda_emulator" or num_sms is None:
        return contextlib.nullcontext()
    return cuda_emulator.num_sms(num_sms)


LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def low_precision_reference():
    """The context to run the low-precision reference in: oneDNN off. torch 2.14's
    oneDNN bfloat16 grouped conv3d on the CPU gives wrong, even run-to-run different,
    results for an odd channel count per group (3 of 6 here: errors up to 9, sometimes
    NaN), which made the bound of twice the reference's own error meaningless. ATen's
    own convolution gives the rounding error of the dtype, as it should."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


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


def fuse_inputs(case: Case, gen: torch.Generator, dtype=torch.float64):
    """Random inputs of gate_shift_fuse for ``case``: make_inputs' and the fusion
    convolutions' (x, weight, bias, bn_scale, bn_shift, fuse_weight, fuse_bias)."""
    x, weight, bias, scale, shift = make_inputs(case, gen, dtype=dtype)
    fuse_weight = (torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    fuse_bias = (torch.randn(2, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    return [x, weight, bias, scale, shift, fuse_weight, fuse_bias]


def op_kwargs(case: Case, bn_scale, bn_shift) -> dict:
    return dict(
        num_segments=case.T,
        bn_scale=bn_scale,
        bn_shift=bn_shift,
        channels=case.P,
        channel_order=case.order,
    )


def run_with_grads(fn, case: Case, inputs, grad_out):
    """Output of ``fn`` on ``inputs`` and the gradients of ``<out, grad_out>`` in every tensor
    input. ``inputs`` in make_inputs' order (gate_shift), or fuse_inputs' (gate_shift_fuse:
    the fusion convolution's weight and bias follow)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    x, weight, bias, scale, shift, *fusion = leaves
    out = fn(x, weight, bias, *fusion, **op_kwargs(case, scale, shift))
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad_out.to(out.dtype))
    return out.detach(), list(grads)


def forward_and_backward(library, op: str, case: Case, inputs, grad_out) -> list:
    """[out, *gradients] of ``op`` of ``library`` on fuse_inputs' ``inputs`` (GSM: the first five)."""
    out, grads = run_with_grads(getattr(library, op), case, inputs if op == "gate_shift_fuse" else inputs[:5], grad_out)
    return [out, *grads]


def restored_after_test(setter):
    """The body of a fixture around a test-only setting op (``setter(value)`` returns the
    previous value): yields a function that sets it; the first value is put back after."""
    previous = []

    def set_value(value: int) -> None:
        previous.append(setter(value))

    yield set_value
    if previous:
        setter(previous[0])


def assert_close_to_reference(actual, expected64, low_precision_ref=None, *, what=""):
    """Assert gateshift.testing.compare's rule: plain tolerances for float32/float64,
    at most twice the reference's own error in bfloat16/float16."""
    c = compare_to_reference(actual, expected64, low_precision_ref)
    assert c.finite, f"{what}: non-finite values"
    assert c.ok, f"{what}: error {c.error:.3g} > bound {c.bound:.3g}"


def randomise(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """``model`` with random parameters (BN scales in [0.5, 1.5)): not the identity a new
    GSM is, so that conversions and compilations are compared on real numbers."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
    return model


def randomise_network(net: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Random weights scaled by fan-in (activations stay O(1) through 50+ layers), random
    BatchNorm affine parameters and running statistics, and non-zero gating convolutions
    (a new GSM's are zero, which would make it the identity)."""
    nn = torch.nn
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return net


def published_and_fused(module: str, gen: torch.Generator, fplane: int = 8, frames: int = 3, dtype=torch.float64):
    """The published ``module`` ("GSM" or "GSF", from gateshift.reference) with random
    parameters (:func:`randomise`), and the fused one loaded from its state_dict."""
    published = randomise(getattr(reference, module)(fplane, frames), gen).to(dtype)
    fused = getattr(gateshift, module)(fplane, frames).to(dtype)
    fused.load_state_dict(published.state_dict())
    return published, fused


def train_step_and_compare(published, fused, x, gen, lr: float, step: int) -> None:
    """One forward and backward of both modules on ``x``: outputs, the gradients of ``x``
    and of every parameter, and the buffers must agree; then an SGD step of ``lr`` on both,
    so that the next step starts from new weights.

    After the step the fused module takes the published one's parameters. Steps of this size
    on random gradients leave weights (conv weights ~15, BN scales ~18 after one step) where
    the gradients' condition number is ~1e5: left to drift apart, two correct float64
    implementations, 1e-16 apart after the first step, are 1e-7 apart after the third
    (checked by perturbing the published parameters alone by 1e-15). Each step is compared
    from the same weights instead."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = published(x1), fused(x2)
    torch.testing.assert_close(y2, y1, msg=lambda m: f"step {step} output: {m}")
    g = torch.randn(y1.shape, generator=gen, dtype=y1.dtype).to(y1.device)
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
            torch.testing.assert_close(p2, p1, msg=lambda m: f"step {step} SGD update: {m}")
            p2.copy_(p1)
            p1.grad = p2.grad = None


def nan_padded(x: torch.Tensor, extra: int = 2) -> torch.Tensor:
    """x as a channel slice of a NaN-filled tensor: a read into the wrong plane gives NaN."""
    n, c, h, w = x.shape
    buf = torch.full((n, c + 2 * extra, h, w), float("nan"), dtype=x.dtype, device=x.device)
    buf[:, extra : extra + c] = x
    return buf[:, extra : extra + c]


def opcheck(impl: Implementation, op: str, args) -> None:
    """``torch.library.opcheck`` of the raw op ``op`` of ``impl`` on ``args``.

    The emulator returns its outputs inside guarded buffers (a storage offset, on
    purpose) that the fake kernels do not predict: there only the schema and the
    autograd registration are checked; the fake kernels are checked on the real ops.
    """
    overload = getattr(impl.ops, op).default
    if impl.name == "cuda_emulator":
        torch.library.opcheck(overload, args, test_utils=("test_schema", "test_autograd_registration"))
    else:
        torch.library.opcheck(overload, args)


def check_runs_on_the_current_stream_and_device(fn, *tensors) -> None:
    """``fn`` of CPU ``tensors``, on CUDA: called on a side stream it must run on that
    stream (its inputs are written there only after a long sleep, so a launch on any
    other stream reads them unwritten); with two GPUs, on the second while the first
    is current, it must run on the device of its inputs."""

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    expected = as_tuple(fn(*(t.cuda() for t in tensors)))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds of a busy stream
        late = [t.cuda() * 1 for t in tensors]  # written on the side stream, after the sleep
        out = as_tuple(fn(*late))
    torch.cuda.synchronize()
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
    if torch.cuda.device_count() > 1:
        with torch.cuda.device(0):
            out = as_tuple(fn(*(t.to("cuda:1") for t in tensors)))
        for a, b in zip(out, expected):
            assert a.device == torch.device("cuda:1")
            torch.testing.assert_close(a.cpu(), b.cpu())


# ---------------------------------------------------------------------------
# Every public op behind one interface, for the files that loop over the ops
# (test_layouts.py, test_errors.py, test_ecosystem.py).
# ---------------------------------------------------------------------------

OPS = ("gate_shift", "gate_shift_fuse", "temporal_shift")
GATED_OPS = ("gate_shift", "gate_shift_fuse")  # the ops with gates and parameters
FOLD_DIV = 3  # the temporal shift's: channels [0, C/3) take the next frame, [C/3, 2C/3) the previous


def op_params(op: str, case: Case, gen: torch.Generator, dtype=torch.float64) -> dict:
    """Random parameters of ``op`` for ``case`` by keyword (none for the temporal
    shift; no bias or BN affine where the case has none)."""
    if op == "temporal_shift":
        return {}
    _, weight, bias, scale, shift, fuse_weight, fuse_bias = fuse_inputs(case, gen, dtype=dtype)
    params = dict(weight=weight, bias=bias, bn_scale=scale, bn_shift=shift)
    if op == "gate_shift_fuse":
        params.update(fuse_weight=fuse_weight, fuse_bias=fuse_bias)
    return {name: t for name, t in params.items() if t is not None}


def call_op(op: str, library, x: torch.Tensor, params: dict, case: Case, **kwargs) -> torch.Tensor:
    """``op`` of ``library`` (an Implementation, the gateshift package or gateshift.reference)
    on ``x`` with ``params`` (op_params') for ``case``; ``kwargs`` go to the op as they are."""
    if op == "temporal_shift":
        return library.temporal_shift(x, kwargs.pop("num_segments", case.T), FOLD_DIV, **kwargs)
    options = dict(num_segments=case.T, bn_scale=params.get("bn_scale"), bn_shift=params.get("bn_shift"),
                   channels=case.P, channel_order=case.order)
    options.update(kwargs)
    if op == "gate_shift":
        return library.gate_shift(x, params["weight"], params.get("bias"), **options)
    return library.gate_shift_fuse(x, params["weight"], params.get("bias"), params["fuse_weight"],
                                   params["fuse_bias"], **options)


# ---------------------------------------------------------------------------
# The raw ops (torch.ops.gateshift.* and the emulator's torch.ops.gateshift_emulated.*)
# ---------------------------------------------------------------------------

# Each raw op's arguments, in its schema's order.
RAW_ARGUMENTS = {
    "gate_shift_forward": ("x", "weight", "bias", "bn_scale", "bn_shift", "channels", "interleaved"),
    "gate_shift_backward": ("grad_out", "x", "gates", "weight", "bn_scale", "bn_shift", "channels", "interleaved"),
    "gate_shift_fuse_forward": ("x", "weight", "bias", "bn_scale", "bn_shift", "fuse_weight", "fuse_bias", "channels",
                                "interleaved"),
    "gate_shift_fuse_backward": ("grad_out", "x", "gates", "fusion", "weight", "bn_scale", "bn_shift", "fuse_weight",
                                 "channels", "interleaved"),
    "temporal_shift": ("x", "fold", "reverse"),
    "batch_stats": ("x", "channels"),
    "batch_stats_backward": ("grad_mean", "grad_var", "x", "mean", "channels", "grad_in"),
}


def raw_arguments(gen, device="cpu") -> dict:
    """Valid float32 arguments of every raw op by name: x (B, T, C, H, W) = (2, 4, 8, 5, 5),
    all 8 channels gated in the interleaved order. The tables a forward op returns for
    its backward (gates, fusion, mean) are random tensors of the right shape and dtype:
    the checks look at nothing else."""
    case = Case(2, 4, 8, 5, 5)
    x = make_inputs(case, gen, dtype=torch.float32)[0].unflatten(0, (2, 4))
    tensors = dict(
        x=x,
        grad_out=torch.randn(x.shape, generator=gen),
        gates=torch.rand(2, 4, 2, 5, 5, generator=gen),
        fusion=torch.rand(2, 4, 3, 8, generator=gen),
        grad_mean=torch.randn(8, generator=gen),
        grad_var=torch.randn(8, generator=gen),
        mean=torch.randn(8, generator=gen),
        grad_in=torch.randn(x.shape, generator=gen),
        **op_params("gate_shift_fuse", case, gen, dtype=torch.float32),
    )
    return dict({name: t.to(device) for name, t in tensors.items()}, channels=8, interleaved=True, fold=2,
                reverse=False)


def call_raw(impl, op, arguments: dict, **changes):
    """The raw op ``op`` of ``impl`` on ``arguments`` (raw_arguments'), some of them changed."""
    a = {**arguments, **changes}
    return getattr(impl.ops, op)(*(a[name] for name in RAW_ARGUMENTS[op]))
