"""gateshift.convert: the published GSM/GSF modules, the GatedShift wrappers of temporal
action and event spotting codebases (E2E-Spot's ``gsm``, T-DEED's ``gs``, ``gse``) and
TSM's temporal shifts (TSM's, in place or not; mmaction2's) become the fused modules with
the same numbers; look-alikes are left alone, by their structure or by the probe."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import randomise
from torch import nn

import gateshift
from gateshift import reference


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
# The code people run: wrappers by structure, TSM's shifts, the probe
# ---------------------------------------------------------------------------


class SpottingGatedShift(nn.Module):
    """The GatedShift of event-spotting codebases, under the attribute name each gives its
    GSM (E2E-Spot: ``gsm``; T-DEED: ``gs``): the first ``fold_dim`` channels gated, the
    rest copied through, then the wrapped block. ``reverse=True`` gates the *last*
    ``fold_dim`` channels instead: a look-alike with the same parts and another forward."""

    def __init__(self, net, n_segment, n_div, attribute="gsm", reverse=False):
        super().__init__()
        channels = net.conv1.in_channels
        self.fold_dim = math.ceil(channels // n_div / 4) * 4
        setattr(self, attribute, reference.GSM(self.fold_dim, n_segment))
        self.attribute = attribute
        self.net = net
        self.n_segment = n_segment
        self.reverse = reverse

    def forward(self, x):
        gate = getattr(self, self.attribute)
        y = torch.zeros_like(x)
        if self.reverse:
            y[:, -self.fold_dim:] = gate(x[:, -self.fold_dim:])
            y[:, : -self.fold_dim] = x[:, : -self.fold_dim]
        else:
            y[:, : self.fold_dim] = gate(x[:, : self.fold_dim])
            y[:, self.fold_dim:] = x[:, self.fold_dim:]
        return self.net(y)


class InplaceShift(torch.autograd.Function):
    """TSM's in-place shift, as its codebase and E2E-Spot write it: the input's own storage
    is overwritten (first fold from the next frame, second fold from the previous one)."""

    @staticmethod
    def forward(ctx, x5, fold):
        ctx.fold = fold
        buffer = x5.new_zeros(x5.shape[0], x5.shape[1], fold, *x5.shape[3:])
        buffer[:, :-1] = x5[:, 1:, :fold]
        x5[:, :, :fold] = buffer
        buffer.zero_()
        buffer[:, 1:] = x5[:, :-1, fold: 2 * fold]
        x5[:, :, fold: 2 * fold] = buffer
        ctx.mark_dirty(x5)
        return x5

    @staticmethod
    def backward(ctx, grad):
        fold = ctx.fold
        grad = grad.clone()
        buffer = grad.new_zeros(grad.shape[0], grad.shape[1], fold, *grad.shape[3:])
        buffer[:, 1:] = grad[:, :-1, :fold]
        grad[:, :, :fold] = buffer
        buffer.zero_()
        buffer[:, :-1] = grad[:, 1:, fold: 2 * fold]
        grad[:, :, fold: 2 * fold] = buffer
        return grad, None


class TSMTemporalShift(nn.Module):
    """TSM's TemporalShift(net, n_segment, n_div, inplace), written as its codebase writes it."""

    def __init__(self, net, n_segment=3, n_div=8, inplace=False):
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div
        self.inplace = inplace

    def forward(self, x):
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.n_segment, self.n_segment, c, h, w)
        fold = c // self.fold_div
        if self.inplace:
            out = InplaceShift.apply(x5, fold)
        else:
            out = torch.zeros_like(x5)
            out[:, :-1, :fold] = x5[:, 1:, :fold]
            out[:, 1:, fold: 2 * fold] = x5[:, :-1, fold: 2 * fold]
            out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
        return self.net(out.view(nt, c, h, w))


class MMActionTemporalShift(nn.Module):
    """mmaction2's TemporalShift(net, num_segments, shift_div): the same shift by slices and cat."""

    def __init__(self, net, num_segments=3, shift_div=8):
        super().__init__()
        self.net = net
        self.num_segments = num_segments
        self.shift_div = shift_div

    def forward(self, x):
        n, c, h, w = x.shape
        x4 = x.view(-1, self.num_segments, c, h * w)
        fold = c // self.shift_div
        left, mid, right = x4[:, :, :fold], x4[:, :, fold: 2 * fold], x4[:, :, 2 * fold:]
        left = torch.cat((left[:, 1:], torch.zeros_like(left[:, :1])), 1)
        mid = torch.cat((torch.zeros_like(mid[:, :1]), mid[:, :-1]), 1)
        return self.net(torch.cat((left, mid, right), 2).view(n, c, h, w))


def assert_same_numbers(converted, before, x, gen):
    """Outputs and input gradients of both models, in training and in eval mode."""
    for training in (True, False):
        converted.train(training)
        before.train(training)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = converted(x1 * 1), before(x2 * 1)
        torch.testing.assert_close(y1, y2)
        g = torch.randn(y1.shape, generator=gen, dtype=y1.dtype)
        torch.testing.assert_close(torch.autograd.grad(y1, x1, g)[0], torch.autograd.grad(y2, x2, g)[0])


@pytest.mark.parametrize("attribute", ["gsm", "gs", "gse"])
def test_spotting_wrappers_are_recognised_whatever_their_gsm_is_called(attribute, gen):
    model = randomise(nn.Sequential(SpottingGatedShift(BasicBlock(16), 4, 4, attribute),
                                    SpottingGatedShift(BasicBlock(16), 4, 2, attribute)), gen).double()
    before = copy.deepcopy(model)
    keys = list(model.state_dict())
    converted, report = gateshift.convert(model)
    assert [str(r) for r in report] == ["0: SpottingGatedShift -> FusedGatedShift",
                                        "1: SpottingGatedShift -> FusedGatedShift"]
    assert isinstance(getattr(converted[0], attribute), gateshift.GSM)
    assert list(converted.state_dict()) == keys  # the published keys: checkpoints still load
    converted.load_state_dict(before.state_dict(), strict=True)
    assert_same_numbers(converted, before, torch.randn(8, 16, 5, 5, generator=gen, dtype=torch.float64), gen)


@pytest.mark.parametrize("style,inplace", [("tsm", False), ("tsm", True), ("mmaction2", False)])
def test_tsm_temporal_shifts_become_the_fused_shift(style, inplace, gen):

    def block():
        return nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU())

    def shift(net):
        return TSMTemporalShift(net, 4, 8, inplace) if style == "tsm" else MMActionTemporalShift(net, 4, 8)

    model = randomise(nn.Sequential(shift(block()), nn.Conv2d(16, 16, 3, padding=1), shift(block())), gen).double()
    before = copy.deepcopy(model)
    name = type(model[0]).__name__
    converted, report = gateshift.convert(model)
    assert [str(r) for r in report] == [f"0: {name} -> TemporalShift", f"2: {name} -> TemporalShift"]
    assert isinstance(converted[0], gateshift.TemporalShift) and converted[0].inplace == inplace
    assert converted[0].fold_div == 8 and converted[0].n_segment == 4
    assert_same_numbers(converted, before, torch.randn(8, 16, 5, 5, generator=gen, dtype=torch.float64), gen)


def test_the_probe_leaves_a_lookalike_wrapper_alone_and_the_model_as_it_was(gen):
    lookalike = SpottingGatedShift(BasicBlock(16), 4, 4, reverse=True)  # the right parts, another forward
    model = randomise(nn.Sequential(lookalike, SpottingGatedShift(BasicBlock(16), 4, 4)), gen)
    model[0].net.bn1.eval()  # a frozen BN, whose mode the probe must keep
    before = copy.deepcopy(model)
    rng = torch.get_rng_state()
    converted, report = gateshift.convert(model)
    assert converted[0] is lookalike and isinstance(converted[1], gateshift.FusedGatedShift)
    assert [r.replaced for r in report] == [False, True]
    assert str(report[0]).startswith("0: SpottingGatedShift left alone: its output differs")
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in converted.modules()][:8] == [m.training for m in before.modules()][:8]
    for (name, b1), b2 in zip(before.named_buffers(), converted.buffers()):
        assert torch.equal(b1, b2), name
    assert all(p.grad is None for p in converted.parameters())


def test_verify_false_trusts_the_structure_and_dry_run_changes_nothing(gen):
    # Freshly built: the GSM's gating conv is zero, the identity; the probe draws its own
    # weights, so the look-alike is told apart all the same.
    model = nn.Sequential(SpottingGatedShift(BasicBlock(16), 4, 4, reverse=True), TSMTemporalShift(nn.Identity(), 4))
    _, report = gateshift.convert(model, dry_run=True)
    assert [str(r).split(":")[1] for r in report] == [" SpottingGatedShift left alone", " TSMTemporalShift -> TemporalShift"]
    assert isinstance(model[0], SpottingGatedShift) and isinstance(model[1], TSMTemporalShift)
    converted, report = gateshift.convert(model, verify=False)
    assert all(r.replaced for r in report)
    assert isinstance(converted[0], gateshift.FusedGatedShift)  # taken on its structure alone
    assert isinstance(converted[1], gateshift.TemporalShift)


def test_hooks_do_not_fire_during_the_probe(gen):
    model = nn.Sequential(reference.GSM(8, 2))
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append("gsm"))
    model[0].conv3D.register_forward_hook(lambda *args: calls.append("conv3D"))
    converted, _ = gateshift.convert(model)
    assert calls == []
    with pytest.warns(UserWarning, match="hooks on conv3D"):
        converted(torch.randn(4, 8, 3, 3, generator=gen))
    assert calls == ["conv3D", "gsm"]


def test_a_torchvision_resnet18_with_spotting_wrappers(gen):
    # E2E-Spot's placement: every BasicBlock of a torchvision ResNet-18 wrapped in a
    # GatedShift (clip of 4 frames, a quarter of the channels gated).
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=5)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for i, block in enumerate(layer):
            layer[i] = SpottingGatedShift(block, 4, 4)
            randomise(layer[i].gsm, gen)
    net = net.double()
    before = copy.deepcopy(net)
    converted, report = gateshift.convert(net)
    assert len(report) == 8 and all(r.replaced and r.now == "FusedGatedShift" for r in report)
    assert [r.name for r in report][:2] == ["layer1.0", "layer1.1"]
    assert_same_numbers(converted, before, torch.randn(8, 3, 32, 32, generator=gen, dtype=torch.float64), gen)
