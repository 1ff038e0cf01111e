"""What a PyTorch video codebase tries in its first week, with every op and module:
torch.compile (without graph breaks, with a changing batch size, inductor), export,
autocast, deterministic mode, threads, NaN and Inf (gateshift.convert: test_convert.py)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from helpers import GATED_OPS, OPS, Case, call_op, make_inputs, op_kwargs, op_params, randomise
from torch import nn

import gateshift
from gateshift import reference
from gateshift.testing.compare import compare_to_reference
from gateshift.tsn import TSNResNet


def tiny_tsn(temporal, segments=4):
    return TSNResNet(temporal, num_segments=segments, num_classes=5, widths=(16, 32), stem_channels=8)


# ---------------------------------------------------------------------------
# torch.compile and torch.export
# ---------------------------------------------------------------------------


# The published modules and their fused drop-ins, as factories of (channels, frames).
PUBLISHED = {
    "GSM": reference.GSM,
    "GSF": reference.GSF,
    "TemporalShift": lambda c, t: reference.TemporalShift(None, t, 8),
}
FUSED = {
    "GSM": gateshift.GSM,
    "GSF": gateshift.GSF,
    "TemporalShift": lambda c, t: gateshift.TemporalShift(None, t, 8),
}


class TinyTSN(nn.Module):
    """A 2-D CNN over frames with a temporal module after each convolution, as in TSN-style models."""

    def __init__(self, temporal, segments=4, width=16, classes=5):
        super().__init__()
        self.segments = segments
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.temporal1 = temporal(width, segments)
        self.conv = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.temporal2 = temporal(width, segments)
        self.head = nn.Linear(width, classes)

    def forward(self, clips):  # (B*T, 3, H, W)
        x = torch.relu(self.temporal1(self.stem(clips)))
        x = torch.relu(self.temporal2(self.conv(x)))
        scores = self.head(x.mean((2, 3)))
        return scores.unflatten(0, (-1, self.segments)).mean(1)  # average over frames


@pytest.mark.parametrize("module", FUSED)
@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph_matches_eager(module, training, gen):
    eager = randomise(TinyTSN(FUSED[module]), gen)  # random gates: not the identity
    compiled_model = TinyTSN(FUSED[module])
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


@pytest.mark.parametrize("op", OPS)
def test_compile_inductor_functional(op, gen):
    case = Case(2, 4, 8, 5, 5)
    x = make_inputs(case, gen, dtype=torch.float32)[0]
    params = op_params(op, case, gen, dtype=torch.float32)

    def f(x, params):
        return call_op(op, gateshift, x, params, case) * 2 + 1

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, params), f(x, params))
    torch.testing.assert_close(f(x, params), call_op(op, reference, x, params, case) * 2 + 1)


@pytest.mark.parametrize("module", PUBLISHED)
def test_published_modules_compile_without_graph_breaks(module, gen):
    # The benchmarks compile the reference modules as the baseline: they must compile
    # without breaks too.
    model = randomise(PUBLISHED[module](8, 4), gen)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 8, 5, 5, generator=gen)
    torch.testing.assert_close(compiled(x), model(x))


def count_graphs_compiled(model, batches) -> int:
    """Runs the compiled model (fullgraph) over the batches; returns how many graphs dynamo made."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for x in batches:
        compiled(x).sum().backward()
    return len(graphs)


def test_compile_dynamic_batch_does_not_recompile_every_step(gen):
    # float64: inductor reorders the arithmetic of the surrounding convolutions and
    # BatchNorms (not ours: our op stays one opaque call), whose float32 round-off summed
    # over five steps' gradients would need loose, seed-dependent tolerances.
    eager = randomise(tiny_tsn(gateshift.GSM), gen).double()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)  # inductor, as users run it
    batches = [torch.randn(clips * 4, 3, 16, 16, generator=gen, dtype=torch.float64) for clips in (2, 3, 4, 5, 6)]
    torch._dynamo.reset()
    for x in batches:
        out_c, out_e = compiled(x), eager(x)
        torch.testing.assert_close(out_c, out_e)
        out_c.sum().backward()
        out_e.sum().backward()
    for (name, p1), p2 in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=lambda m: f"grad {name}: {m}")
    # Five batch sizes: a static graph for the first, a dynamic one for the second, and one
    # more at 16 frames, where PyTorch's own conv2d guards its batch size (2 <= N <= 15); the
    # same network without our modules compiles exactly as many graphs.
    ours = count_graphs_compiled(model, batches)
    plain = count_graphs_compiled(randomise(tiny_tsn(None), gen).double(), batches)
    assert ours == plain <= 3, f"compiled {ours} graphs for 5 batch sizes (network without GSM: {plain})"


@pytest.mark.parametrize("module", ["GSM", "GSF", "TemporalShift"])
def test_export_in_eval_mode(module, gen):
    temporal = {
        "GSM": gateshift.GSM,
        "GSF": lambda c, t: gateshift.GSF(c, t),
        "TemporalShift": lambda c, t: gateshift.TemporalShift(None, t, 8),
    }[module]
    model = randomise(tiny_tsn(temporal), gen).eval()
    x = torch.randn(8, 3, 16, 16, generator=gen)
    exported = torch.export.export(model, (x,))
    calls = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("gateshift" in c for c in calls), calls  # the fused op, not a decomposition
    torch.testing.assert_close(exported.module()(x), model(x))
    x2 = torch.randn(8, 3, 16, 16, generator=gen)
    torch.testing.assert_close(exported.module()(x2), model(x2))


# ---------------------------------------------------------------------------
# Automatic mixed precision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
        pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    ],
)
@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_autocast_runs_in_the_autocast_dtype(module, device, dtype, gen):
    make = {"GSM": (reference.GSM, gateshift.GSM), "GSF": (reference.GSF, gateshift.GSF)}[module]
    published = randomise(make[0](32, 4), gen).to(device)
    fused = make[1](32, 4).to(device)
    fused.load_state_dict(published.state_dict())
    x = torch.randn(8, 32, 7, 7, generator=gen).to(device)
    exact = copy.deepcopy(published).double()(x.double()).detach()
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out_r, out_f = published(xr), fused(xf)
    assert out_f.dtype == dtype  # the op ran in the autocast dtype
    c = compare_to_reference(out_f, exact, out_r)
    assert c.ok, f"autocast error {c.error:.3g} > bound {c.bound:.3g}"
    out_f.float().sum().backward()
    assert xf.grad.dtype == torch.float32 and torch.isfinite(xf.grad).all()
    for p in fused.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("op", GATED_OPS)
def test_autocast_leaves_float64_alone(op, gen):
    case = Case(1, 2, 8, 3, 3)
    x = make_inputs(case, gen)[0]
    params = op_params(op, case, gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call_op(op, gateshift, x, params, case)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, call_op(op, reference, x, params, case))


# ---------------------------------------------------------------------------
# Deterministic mode, threads, NaN and Inf
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_deterministic_mode_gives_bitwise_identical_gradients(module, device, gen):
    make = {"GSM": gateshift.GSM, "GSF": gateshift.GSF}[module]
    model = randomise(make(32, 4), gen).to(device)
    x = torch.randn(16, 32, 14, 14, generator=gen).to(device)
    g = torch.randn(x.shape, generator=gen).to(device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            leaf = x.clone().requires_grad_()
            model.zero_grad()
            model(leaf).backward(g)
            runs.append([leaf.grad] + [p.grad.clone() for p in model.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("op", OPS)
def test_concurrent_calls_from_python_threads(op, gen):
    cases = [Case(2, 4, 16, 9, 9), Case(1, 8, 8, 5, 7, P=4), Case(3, 2, 12, 6, 6, order="grouped")]
    jobs = []
    for i in range(8):
        case = cases[i % len(cases)]
        x = make_inputs(case, gen, dtype=torch.float32)[0]
        params = op_params(op, case, gen, dtype=torch.float32)
        jobs.append((case, x, params, torch.randn(x.shape, generator=gen)))

    def run(job):
        case, x, params, g = job
        leaves = [x.clone().requires_grad_(), *(p.clone().requires_grad_() for p in params.values())]
        out = call_op(op, gateshift, leaves[0], dict(zip(params, leaves[1:])), case)
        return [out.detach(), *torch.autograd.grad(out, leaves, g)]

    expected = [run(job) for job in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                results[i] = run(jobs[i])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("module", ["GSM", "GSF"])
def test_nan_and_inf_propagate_as_in_the_published_module(bad, module, gen):
    make = {"GSM": (reference.GSM, gateshift.GSM), "GSF": (reference.GSF, gateshift.GSF)}[module]
    published = randomise(make[0](8, 4), gen).eval()  # running statistics: one bad value stays local
    fused = make[1](8, 4).eval()
    fused.load_state_dict(published.state_dict())
    x = torch.randn(8, 8, 6, 7, generator=gen, dtype=torch.float64)
    x[3, 2, 4, 1] = bad
    out_r, out_f = published.double()(x), fused.double()(x)
    assert torch.equal(torch.isnan(out_f), torch.isnan(out_r))
    assert torch.equal(torch.isinf(out_f), torch.isinf(out_r))
    finite = torch.isfinite(out_r)
    torch.testing.assert_close(out_f[finite], out_r[finite])


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_large_finite_inputs_give_finite_results(scale, gen):
    # Saturated tanh, huge products: finite in, finite out (float32), forward and backward.
    for fn in (gateshift.gate_shift, lambda x, w, b, **kw: gateshift.gate_shift_fuse(
            x, w, b, torch.ones(2, 2, 3, 3), torch.zeros(2), **kw)):
        case = Case(2, 3, 8, 5, 5)
        x, weight, bias, s, h = (t.float() for t in make_inputs(case, gen))
        x = (x * scale).requires_grad_()
        out = fn(x, weight * scale, bias, **op_kwargs(case, s, h))
        assert torch.isfinite(out).all()
        out.backward(torch.randn(out.shape, generator=gen))
        assert torch.isfinite(x.grad).all()
