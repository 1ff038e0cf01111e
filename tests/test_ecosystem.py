"""What a PyTorch video codebase tries in its first week, with every op and module:
torch.compile (without graph breaks, with a changing batch size, inductor), export,
autocast, conversion of published modules, deterministic mode, threads, NaN and Inf."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from helpers import GATED_OPS, OPS, Case, call_op, make_inputs, op_kwargs, op_params
from torch import nn

import gateshift
from gateshift import reference
from gateshift.testing.compare import compare_to_reference
from gateshift.tsn import TSNResNet


def randomise(model: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
    return model


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
# gateshift.convert
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """A torchvision-style ResNet basic block."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return (self.bn2(self.conv2(self.bn1(self.conv1(x)).relu())) + x).relu()


class GatedShift(nn.Module):
    """The wrapper of temporal action/event spotting codebases, written as they write it: a
    published GSM (or GSF at ratio 100) on the first fold_dim channels, the other channels
    copied through, then the wrapped block."""

    def __init__(self, net, n_segment, n_div, gsf=False):
        super().__init__()
        channels = net.conv1.in_channels
        fold = channels // n_div
        self.fold_dim = math.ceil(fold / 4) * 4
        self.gse = reference.GSF(self.fold_dim, n_segment, 100) if gsf else reference.GSM(self.fold_dim, n_segment)
        self.net = net
        self.n_segment = n_segment

    def forward(self, x):
        y = torch.zeros_like(x)
        y[:, : self.fold_dim, :, :] = self.gse(x[:, : self.fold_dim, :, :])
        y[:, self.fold_dim :, :, :] = x[:, self.fold_dim :, :, :]
        return self.net(y)


class PublishedModel(nn.Module):
    def __init__(self, segments=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gsm = reference.GSM(16, segments)
        self.gsf = reference.GSF(16, segments)
        self.layer = nn.Sequential(GatedShift(BasicBlock(16), segments, 4), GatedShift(BasicBlock(16), segments, 2, gsf=True))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer(self.gsf(self.gsm(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_convert_replaces_published_modules_and_wrappers(gen):
    published = randomise(PublishedModel(), gen).double()  # float64: the comparison can be tight
    before = copy.deepcopy(published)
    optimizer = torch.optim.SGD(published.parameters(), lr=0.1)
    converted, report = gateshift.convert(published)
    assert converted is published
    assert sorted(str(r) for r in report) == sorted([
        "gsm: GSM -> GSM", "gsf: GSF -> GSF",
        "layer.0: GatedShift -> FusedGatedShift", "layer.1: GatedShift -> FusedGatedShift",
    ])
    assert isinstance(converted.gsm, gateshift.GSM) and isinstance(converted.gsf, gateshift.GSF)
    fused_shift = converted.layer[0]
    assert isinstance(fused_shift, gateshift.FusedGatedShift)
    assert isinstance(fused_shift.gse, gateshift.GSM) and fused_shift.gse.fPlane == 4
    assert isinstance(converted.layer[1].gse, gateshift.GSF) and converted.layer[1].gse.fPlane == 8
    # The optimizer still holds the model's parameters: they were carried, not copied.
    assert {id(p) for p in converted.parameters()} == {id(p) for group in optimizer.param_groups for p in group["params"]}
    for training in (True, False):
        before.train(training)
        converted.train(training)
        x = torch.randn(8, 3, 6, 6, generator=gen, dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out1, out2 = before(x1), converted(x2)
        torch.testing.assert_close(out2, out1)
        out1.sum().backward()
        out2.sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad)
        for (name, p1), p2 in zip(before.named_parameters(), converted.parameters()):
            torch.testing.assert_close(p2.grad, p1.grad, msg=lambda m: f"{name}: {m}")
            p1.grad = p2.grad = None
    for (name, b1), b2 in zip(before.named_buffers(), converted.buffers()):
        torch.testing.assert_close(b2, b1, msg=lambda m: f"{name}: {m}")


def test_convert_keeps_every_module_mode_frozen_batch_norm_included(gen):
    published = randomise(PublishedModel(), gen).double().train()
    for m in published.modules():  # fine-tuning with frozen BatchNorm
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    before = copy.deepcopy(published)
    converted, _ = gateshift.convert(published)
    def modes(model):
        return {name: m.training for name, m in model.named_modules() if not isinstance(m, (nn.Tanh, nn.ReLU, nn.Sigmoid))}

    assert modes(converted) == modes(before)  # the same names, every mode kept
    x = torch.randn(8, 3, 6, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(converted(x), before(x))
    for (name, b1), b2 in zip(before.named_buffers(), converted.buffers()):
        torch.testing.assert_close(b2, b1, msg=lambda m: f"{name}: {m}")


def test_convert_leaves_lookalikes_alone(gen):
    circular = reference.GSM(8, 2)
    circular.conv3D.padding_mode = "circular"
    no_bias = reference.GSF(8, 2)
    no_bias.channel_conv1 = nn.Conv2d(2, 1, 3, padding=1, bias=False)
    model = nn.Sequential(circular, no_bias)
    converted, report = gateshift.convert(model)
    assert report == [] and converted[0] is circular and converted[1] is no_bias


def test_convert_a_gsf_at_half_ratio_inside_the_wrapper(gen):
    wrapper = GatedShift(BasicBlock(16), 4, 2)
    wrapper.gse = reference.GSF(wrapper.fold_dim, 4, 50)  # gates 4 of its 8 channels
    model = randomise(nn.Sequential(wrapper), gen).double()
    before = copy.deepcopy(model)
    converted, report = gateshift.convert(model)
    assert [str(r) for r in report] == ["0: GatedShift -> FusedGatedShift"]
    assert converted[0].gse.fPlane == 4
    for training in (True, False):
        x = torch.randn(8, 16, 5, 5, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(converted.train(training)(x), before.train(training)(x))


def test_convert_a_root_module_and_twice(gen):
    published = randomise(reference.GSM(8, 2), gen)
    converted, report = gateshift.convert(published)
    assert isinstance(converted, gateshift.GSM) and [str(r) for r in report] == ["<root>: GSM -> GSM"]
    again, report = gateshift.convert(converted)
    assert again is converted and report == []


def test_convert_replaces_tied_modules_at_every_alias(gen):
    gsm = randomise(reference.GSM(8, 2), gen).double()
    model = nn.Sequential(gsm, nn.ReLU(), gsm)  # one module used twice
    holder = nn.Module()
    holder.a = holder.b = model
    before = copy.deepcopy(holder.a)
    converted, report = gateshift.convert(holder)
    assert [str(r) for r in report] == ["a.0: GSM -> GSM", "a.2: GSM -> GSM"]
    fused = converted.a[0]
    assert isinstance(fused, gateshift.GSM) and converted.a[2] is fused and converted.b is converted.a
    assert len(list(converted.parameters())) == len(list(gsm.parameters()))  # still tied: one set
    x = torch.randn(6, 8, 4, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(converted.a(x), before(x))


def test_convert_takes_numpy_integer_attributes(gen):
    np = pytest.importorskip("numpy")
    published = randomise(reference.GSM(8, 2), gen)
    published.fPlane, published.num_segments = np.int64(8), np.int32(2)
    converted, report = gateshift.convert(nn.Sequential(published))
    assert [str(r) for r in report] == ["0: GSM -> GSM"]
    fused = converted[0]
    assert type(fused.fPlane) is int and type(fused.num_segments) is int
    assert fused.extra_repr() == "fPlane=8, num_segments=2"
    # The modules take numpy integers too, and keep Python ints.
    for module in (gateshift.GSM(np.int64(8), np.int64(3)), gateshift.GSF(np.int64(8), np.int16(3)),
                   gateshift.TemporalShift(None, np.int64(3), np.int64(4))):
        assert "np." not in module.extra_repr()
    with pytest.raises(ValueError, match=r"fPlane must be a positive int, got np.float64\(8.0\)"):
        gateshift.GSM(np.float64(8))


@pytest.mark.parametrize("ratio", [25, 50, 100])
def test_converted_gsf_reports_the_users_numbers(ratio, gen):
    built = gateshift.GSF(16, 3, ratio)
    assert built.extra_repr() == f"fPlane={16 * ratio // 100} (gated channels), num_segments=3, gsf_ch_ratio={ratio}"
    published = randomise(reference.GSF(8, 3, 50), gen)  # keeps only its 4 gated channels
    converted, _ = gateshift.convert(nn.Sequential(published))
    assert converted[0].extra_repr() == "fPlane=4 (gated channels), num_segments=3, gsf_ch_ratio=None"


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
