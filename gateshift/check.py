"""``gateshift-check``: parity and gradcheck of every fused op (GSM, GSF, the TSM
shift) against the reference,
on every available device and dtype, as a pass/fail table and an exit status.

This package's CI has no GPU: run this on your own GPU machine after installing
to check the CUDA kernels there. ``--emulator`` adds the CUDA kernels run on the
CPU by the execution emulator (slow; the test suite covers it more thoroughly).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import torch

import gateshift
from gateshift import reference
from gateshift.testing.compare import compare_to_reference

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# (B, T, C, H, W, gated channels, channel order): ragged on purpose.
SHAPES = [
    (2, 8, 32, 14, 14, 32, "interleaved"),
    (2, 4, 232, 7, 7, 224, "interleaved"),  # wide, as BN-Inception 4a: several channel chunks
    (3, 3, 12, 7, 9, 8, "grouped"),
    (1, 1, 8, 5, 1, 8, "interleaved"),
]
QUICK_SHAPES = SHAPES[2:]


@dataclasses.dataclass
class Result:
    device: str
    dtype: str
    check: str
    case: str
    error: float
    bound: float
    ok: bool
    seconds: float


def random_inputs(shape, dtype, device, gen):
    b, t, c, h, w, p, _ = shape

    def rand(*size, scale=1.0, offset=0.0):
        return (torch.randn(*size, generator=gen, dtype=torch.float64) * scale + offset).to(device=device, dtype=dtype)

    x = rand(b * t, c, h, w)
    weight = rand(2, p // 2, 3, 3, 3, scale=1.5 / (27 * p / 2) ** 0.5)
    bias = rand(2, scale=0.5)
    bn_scale = rand(p, scale=0.3, offset=1.0)
    bn_shift = rand(p, scale=0.5)
    return [x, weight, bias, bn_scale, bn_shift]


def output_and_grads(fn, shape, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    x, weight, bias, scale, shift = leaves
    b, t, c, h, w, p, order = shape
    out = fn(x, weight, bias, num_segments=t, bn_scale=scale, bn_shift=shift, channels=p, channel_order=order)
    grads = torch.autograd.grad(out, leaves, grad_out.to(device=out.device, dtype=out.dtype))
    return [out, *grads]


def check_parity(fn, device, dtype, shape, gen) -> list[Result]:
    """Fused output and every gradient against the float64 reference (and, for half
    types, within twice the error of the reference computed in that dtype)."""
    start = time.perf_counter()
    inputs = random_inputs(shape, dtype, device, gen)
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=torch.float64)
    ours = output_and_grads(fn, shape, inputs, grad_out.to(dtype))
    exact = output_and_grads(reference.gate_shift, shape, [t.double().cpu() for t in inputs], grad_out)
    low = None
    if dtype in (torch.bfloat16, torch.float16):
        low = output_and_grads(reference.gate_shift, shape, inputs, grad_out.to(dtype))
    seconds = time.perf_counter() - start
    results = []
    for i, name in enumerate(("out", "grad x", "grad weight", "grad bias", "grad bn_scale", "grad bn_shift")):
        c = compare_to_reference(ours[i], exact[i], None if low is None else low[i])
        results.append(Result(str(device), str(dtype).replace("torch.", ""), f"parity {name}",
                              describe(shape), c.error, c.bound, c.ok, seconds))
    return results


def check_fuse_parity(fn, device, dtype, shape, gen) -> list[Result]:
    """Gate-Shift-Fuse's output and gradients against the reference, as check_parity."""
    start = time.perf_counter()
    inputs = random_inputs(shape, dtype, device, gen)
    fuse = [(torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype),
            (torch.randn(2, generator=gen, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype)]
    grad_out = torch.randn(inputs[0].shape, generator=gen, dtype=torch.float64)

    def run(f, tensors, g):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        x, weight, bias, scale, shift, fw, fb = leaves
        b, t, c, h, w, p, order = shape
        out = f(x, weight, bias, fw, fb, num_segments=t, bn_scale=scale, bn_shift=shift, channels=p,
                channel_order=order)
        return [out, *torch.autograd.grad(out, leaves, g.to(device=out.device, dtype=out.dtype))]

    ours = run(fn, inputs + fuse, grad_out.to(dtype))
    exact = run(reference.gate_shift_fuse, [t.double().cpu() for t in inputs + fuse], grad_out)
    low = run(reference.gate_shift_fuse, inputs + fuse, grad_out.to(dtype)) if dtype in (torch.bfloat16, torch.float16) else None
    seconds = time.perf_counter() - start
    names = ("out", "grad x", "grad weight", "grad bias", "grad bn_scale", "grad bn_shift", "grad fuse_weight",
             "grad fuse_bias")
    results = []
    for i, name in enumerate(names):
        c = compare_to_reference(ours[i], exact[i], None if low is None else low[i])
        results.append(Result(str(device), str(dtype).replace("torch.", ""), f"GSF parity {name}", describe(shape),
                              c.error, c.bound, c.ok, seconds))
    return results


def check_shift_parity(fn, device, dtype, gen) -> Result:
    """The temporal shift against the published one: exact in every dtype."""
    start = time.perf_counter()
    x = torch.randn(24, 16, 5, 7, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    out = fn(x, 8, 8)
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().clone().requires_grad_()
    expected = reference.temporal_shift(xr, 8, 8)
    (gx_r,) = torch.autograd.grad(expected, xr, g)
    error = max((out - expected).abs().max().item(), (gx - gx_r).abs().max().item())
    return Result(str(device), str(dtype).replace("torch.", ""), "TSM shift and its backward", "24x16x5x7, T=8",
                  error, 0.0, error == 0.0, time.perf_counter() - start)


def check_gradcheck(fn, device, gen) -> Result:
    shape = (1, 3, 8, 4, 3, 8, "interleaved")
    inputs = [t.requires_grad_() for t in random_inputs(shape, torch.float64, device, gen)]
    start = time.perf_counter()

    def op(x, weight, bias, scale, shift):
        return fn(x, weight, bias, num_segments=3, bn_scale=scale, bn_shift=shift)

    try:
        ok = torch.autograd.gradcheck(op, inputs, fast_mode=True)
    except Exception as error:  # gradcheck raises on mismatch; report it as a failure
        print(f"gradcheck on {device}: {error}", file=sys.stderr)
        ok = False
    return Result(str(device), "float64", "gradcheck", describe(shape), float("nan"), float("nan"), ok,
                  time.perf_counter() - start)


def check_module(device, gen) -> Result:
    """A training step of gateshift.GSM against the published-semantics module."""
    start = time.perf_counter()
    published = reference.GSM(16, 4).double()
    with torch.no_grad():
        published.conv3D.weight.copy_(torch.randn(published.conv3D.weight.shape, generator=gen, dtype=torch.float64) * 0.2)
    fused = gateshift.GSM(16, 4).double()
    fused.load_state_dict(published.state_dict())
    published, fused = published.to(device), fused.to(device)
    x = torch.randn(8, 16, 6, 7, generator=gen, dtype=torch.float64).to(device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = published(x1), fused(x2)
    g = torch.randn(y1.shape, generator=gen, dtype=torch.float64).to(device)
    y1.backward(g)
    y2.backward(g)
    pairs = [(y2, y1), (x2.grad, x1.grad)] + [(p2.grad, p1.grad) for p1, p2 in zip(published.parameters(), fused.parameters())]
    pairs += [(b2, b1) for b1, b2 in zip(published.buffers(), fused.buffers())]
    worst = max(compare_to_reference(a, e).error for a, e in pairs)
    ok = all(compare_to_reference(a, e).ok for a, e in pairs)
    return Result(str(device), "float64", "GSM module train step", "8x16x6x7, T=4", worst, float("nan"), ok,
                  time.perf_counter() - start)


def describe(shape) -> str:
    b, t, c, h, w, p, order = shape
    return f"{b * t}x{c}x{h}x{w}, T={t}, P={p}, {order}"


def run_checks(targets: Sequence[tuple[str, dict, torch.device]], shapes, dtypes, seed: int) -> list[Result]:
    gen = torch.Generator().manual_seed(seed)
    results = []
    for name, fns, device in targets:
        fn = fns["gate_shift"]
        for dtype in dtypes:
            for shape in shapes:
                for r in check_parity(fn, device, dtype, shape, gen):
                    r.device = name
                    results.append(r)
            for r in check_fuse_parity(fns["gate_shift_fuse"], device, dtype, shapes[-2], gen):
                r.device = name
                results.append(r)
            r = check_shift_parity(fns["temporal_shift"], device, dtype, gen)
            r.device = name
            results.append(r)
        r = check_gradcheck(fn, device, gen)
        r.device = name
        results.append(r)
        if name != "cuda-emulator":
            results.append(check_module(device, gen))
    return results


def format_results(results: Sequence[Result]) -> str:
    header = ["device", "dtype", "check", "case", "max error", "bound", "result"]
    rows = [
        [r.device, r.dtype, r.check, r.case, "-" if r.error != r.error else f"{r.error:.2e}",
         "-" if r.bound != r.bound else f"{r.bound:.2e}", "PASS" if r.ok else "FAIL"]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateshift-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: every available device)")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller shapes")
    parser.add_argument("--emulator", action="store_true", help="also run the CUDA kernels in the CPU emulator (slow)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    args = parser.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        if d not in ("cpu", "cuda"):
            parser.error(f"--device must be cpu or cuda, got {d!r}")
        if d == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda, but torch.cuda.is_available() is False")
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31, (1,)))
    fused = {
        "gate_shift": gateshift.gate_shift,
        "gate_shift_fuse": gateshift.gate_shift_fuse,
        "temporal_shift": gateshift.temporal_shift,
    }
    targets = [(d, fused, torch.device(d)) for d in devices]
    if args.emulator:
        from gateshift.testing import cuda_emulator

        emulated = {
            "gate_shift": cuda_emulator.gate_shift,
            "gate_shift_fuse": cuda_emulator.gate_shift_fuse,
            "temporal_shift": cuda_emulator.temporal_shift,
        }
        targets.append(("cuda-emulator", emulated, torch.device("cpu")))
    print(f"# gateshift {gateshift.__version__}, torch {torch.__version__}, seed {seed}")
    shapes = QUICK_SHAPES if args.quick or args.emulator else SHAPES
    results = run_checks(targets, shapes, DTYPES, seed)
    print(format_results(results))
    failed = sum(not r.ok for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
