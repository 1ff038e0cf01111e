"""gateshift.GSM as a drop-in for the published module (gateshift.reference.GSM)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import train_step_and_compare
from torch import nn

import gateshift
from gateshift import reference


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial weights and statistics (a fresh GSM is the identity map)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if "conv3D" in name else 0.2
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale + (1.0 if name == "bn.weight" else 0.0))
        if module.bn.running_mean is not None:
            module.bn.running_mean.copy_(torch.randn(module.bn.num_features, generator=gen) * 0.3)
            module.bn.running_var.copy_(torch.rand(module.bn.num_features, generator=gen) + 0.5)


def pair(fplane, segments, gen, dtype=torch.float64, **bn_options):
    published = reference.GSM(fplane, segments)
    if bn_options:
        published.bn = nn.BatchNorm3d(fplane, **bn_options)
    randomise(published, gen)
    published = published.to(dtype)
    fused = gateshift.GSM(fplane, segments)
    fused.bn = copy.deepcopy(published.bn)
    fused.load_state_dict(published.state_dict(), strict=True)
    return published, fused.to(dtype)


def features(gen, b, t, c, h, w, dtype=torch.float64):
    return (torch.randn(b * t, c, h, w, generator=gen, dtype=torch.float64) * 1.5 + 0.3).to(dtype)


def test_state_dict_is_the_published_modules(gen):
    published = reference.GSM(16, 8)
    fused = gateshift.GSM(16, 8)
    assert list(fused.state_dict()) == list(published.state_dict())
    for key, value in published.state_dict().items():
        assert fused.state_dict()[key].shape == value.shape
    randomise(published, gen)
    fused.load_state_dict(published.state_dict(), strict=True)
    published.load_state_dict(fused.state_dict(), strict=True)  # and back
    for key, value in published.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value)


def test_new_module_is_the_identity_like_the_published_one(gen):
    fused = gateshift.GSM(8, 4)
    x = features(gen, 2, 4, 8, 5, 5, dtype=torch.float32)
    # Zero gates: no shift, and the interleaving permutes channels only.
    torch.testing.assert_close(fused(x), reference.GSM(8, 4)(x))


@pytest.mark.parametrize("segments,shape", [(8, (2, 32, 6, 7)), (3, (3, 8, 5, 1)), (1, (2, 12, 4, 4))])
def test_training_steps_match_published_module(segments, shape, gen):
    b, c, h, w = shape
    published, fused = pair(c, segments, gen)
    for step in range(3):
        train_step_and_compare(published, fused, features(gen, b, segments, c, h, w), gen, 0.1, step)
    assert int(fused.bn.num_batches_tracked) == 3


def test_eval_uses_running_statistics(gen):
    published, fused = pair(16, 4, gen)
    published.eval()
    fused.eval()
    x = features(gen, 2, 4, 16, 5, 6)
    before = copy.deepcopy(fused.bn.state_dict())
    torch.testing.assert_close(fused(x), published(x))
    for key, value in fused.bn.state_dict().items():
        assert torch.equal(value, before[key]), f"eval changed bn.{key}"


@pytest.mark.parametrize(
    "bn_options",
    [dict(momentum=None), dict(track_running_stats=False), dict(affine=False), dict(eps=1e-3, momentum=0.3)],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_options(bn_options, training, gen):
    published, fused = pair(8, 3, gen, **bn_options)
    published.train(training)
    fused.train(training)
    for _ in range(2):
        x = features(gen, 2, 3, 8, 4, 5)
        torch.testing.assert_close(fused(x), published(x))
        for b1, b2 in zip(published.buffers(), fused.buffers()):
            torch.testing.assert_close(b2, b1)


def relu_input(published: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The BatchNorm output (ReLU input) of the published module in training mode, in float64."""
    bn, t = published.bn, published.num_segments
    x5 = x.double().unflatten(0, (-1, t)).transpose(1, 2)
    var, mean = torch.var_mean(x5, dim=(0, 2, 3, 4), correction=0, keepdim=True)
    w, b = bn.weight.double().view(1, -1, 1, 1, 1), bn.bias.double().view(1, -1, 1, 1, 1)
    return ((x5 - mean) * torch.rsqrt(var + bn.eps) * w + b).transpose(1, 2).flatten(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_training_step(dtype, gen):
    published, fused = pair(16, 4, gen, dtype=torch.float64)
    x = features(gen, 2, 4, 16, 6, 6)
    published_lp = copy.deepcopy(published).to(dtype)
    fused = fused.to(dtype)
    x64, xlp, xf = (x.clone().requires_grad_() for _ in range(3))
    outs = [published(x64), published_lp(xlp.to(dtype)), fused(xf.to(dtype))]
    g = torch.randn(outs[0].shape, generator=gen, dtype=torch.float64)
    for out in outs:
        out.backward(g.to(out.dtype))
    exact, ref_lp, ours = outs
    # Where the BN output is within a few units of `dtype` of zero, rounding x may
    # flip the ReLU's mask, in the reference as in ours, and move the gradient of that
    # one element by its whole du: such elements are not compared.
    eps = torch.finfo(dtype).eps
    pre = relu_input(published, x)
    away = pre.abs() > 4 * eps * (pre.abs().max() + 1)
    for name, a, r, e, mask in [
        ("out", ours, ref_lp, exact, torch.ones_like(away)),
        ("grad x", xf.grad, xlp.grad, x64.grad, away),
    ]:
        err = ((a.double() - e.detach()).abs() * mask).max().item()
        if dtype == torch.float32:
            assert err <= 1e-4 * max(1.0, e.abs().max().item()), f"{name}: {err}"
        else:
            ref_err = ((r.double() - e.detach()).abs() * mask).max().item()
            assert err <= 2 * ref_err + eps * e.abs().max().item(), f"{name}: {err} vs reference's {ref_err}"


def test_extra_channels_pass_through(gen):
    fused = gateshift.GSM(8, 2)
    randomise(fused, gen)
    x = features(gen, 2, 2, 12, 3, 3, dtype=torch.float32)
    y = fused(x)
    assert torch.equal(y[:, 8:], x[:, 8:])
    torch.testing.assert_close(y[:, :8], fused(x[:, :8].contiguous()))


def test_repr_and_constructor_errors():
    assert "fPlane=16, num_segments=8" in repr(gateshift.GSM(16, 8))
    assert gateshift.GSM(16).num_segments == 3  # the published default
    for bad in (6, 0, -4, 8.0):
        with pytest.raises(ValueError, match="fPlane"):
            gateshift.GSM(bad)
    with pytest.raises(ValueError, match="num_segments"):
        gateshift.GSM(8, 0)


def test_running_statistics_that_are_not_tracked_stay_put(gen):
    # BatchNorm3d semantics when tracking is switched off after construction: the
    # buffers exist but training leaves them alone, and eval still uses them.
    published, fused = pair(8, 2, gen)
    for m in (published, fused):
        m.bn.track_running_stats = False
    x = features(gen, 2, 2, 8, 3, 4)
    torch.testing.assert_close(fused(x), published(x))
    for (name, b1), b2 in zip(published.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b2, b1, msg=lambda m: f"{name}: {m}")
    published.eval()
    fused.eval()
    torch.testing.assert_close(fused(x), published(x))


def test_eval_without_running_statistics_needs_more_than_one_value(gen):
    published, fused = pair(8, 1, gen, track_running_stats=False)
    published.eval()
    fused.eval()
    x = torch.randn(1, 8, 1, 1, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        published(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(x)


def test_training_needs_more_than_one_value_per_channel(gen):
    fused = gateshift.GSM(8, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(torch.randn(1, 8, 1, 1, generator=gen))
    fused.eval()
    assert fused(torch.randn(1, 8, 1, 1, generator=gen)).shape == (1, 8, 1, 1)


def test_module_input_errors(gen):
    fused = gateshift.GSM(8, 4)
    with pytest.raises(ValueError, match="expects input"):
        fused(torch.randn(8, 4, 3, 3, generator=gen))
    with pytest.raises(ValueError, match="multiple of num_segments"):
        fused(torch.randn(6, 8, 3, 3, generator=gen))
