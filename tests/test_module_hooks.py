"""Hooks and parametrizations on the fused modules' submodules, as users put them on the
published modules' (``conv3D``, ``bn``, the fusion convolutions):

* weight-recomputing hooks (pruning, ``weight_norm``, ``spectral_norm``) and
  parametrizations keep the fused path and train exactly as the published module;
* hooks that would see a submodule's own input, output or gradient make the module
  run the published, unfused sequence of ops, with a warning, so they fire;
* ``convert`` carries the hooks of a published module over to its fused twin.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import published_and_fused, train_step_and_compare
from torch import nn
from torch.nn.utils import parametrizations, prune

import gateshift
from gateshift import reference

MODULES = {"GSM": (reference.GSM, gateshift.GSM), "GSF": (reference.GSF, gateshift.GSF)}


def l1_pruning(conv: nn.Module) -> None:
    prune.l1_unstructured(conv, "weight", amount=0.3)


def legacy_weight_norm(conv: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of the parametrization
        nn.utils.weight_norm(conv)


def legacy_spectral_norm(conv: nn.Module) -> None:
    torch.manual_seed(0)  # the same random start of the power iteration in both modules
    nn.utils.spectral_norm(conv)


def parametrized_weight_norm(conv: nn.Module) -> None:
    parametrizations.weight_norm(conv)


def parametrized_spectral_norm(conv: nn.Module) -> None:
    torch.manual_seed(0)
    parametrizations.spectral_norm(conv)


WEIGHT_HOOKS = [l1_pruning, legacy_weight_norm, legacy_spectral_norm, parametrized_weight_norm,
                parametrized_spectral_norm]


@pytest.mark.parametrize("apply", WEIGHT_HOOKS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("module", MODULES)
def test_weight_hooks_train_as_in_the_published_module(apply, module, gen):
    published, fused = published_and_fused(module, gen)
    for m in (published, fused):
        apply(m.conv3D)
        if module == "GSF":
            apply(m.channel_conv1)
    # The fused module keeps its fused path: no warning, no fallback.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.randn(6, 8, 5, 4, generator=gen, dtype=torch.float64)
        for step in range(3):  # the pruning pre-hook used to be skipped: step 2 failed
            train_step_and_compare(published, fused, x, gen, lr=0.1, step=step)


def test_pruning_trains_over_steps_without_graph_errors(gen):
    # The reported failure: "backward through the graph a second time" on step two.
    fused = gateshift.GSM(8, 3)
    prune.random_unstructured(fused.conv3D, "weight", amount=0.5)
    optimizer = torch.optim.SGD(fused.parameters(), lr=0.1)
    for _ in range(2):
        x = torch.randn(6, 8, 4, 4, generator=gen)
        fused(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(fused.conv3D.weight == 0, fused.conv3D.weight_mask == 0)


@pytest.mark.parametrize("hook_kind", ["forward", "forward_pre", "full_backward"])
@pytest.mark.parametrize("submodule", ["conv3D", "bn"])
@pytest.mark.parametrize("module", MODULES)
def test_hooks_on_submodules_fire_through_the_unfused_path(hook_kind, submodule, module, gen):
    published, fused = published_and_fused(module, gen)
    seen = {"published": [], "fused": []}
    for key, m in (("published", published), ("fused", fused)):
        def record(mod, *args, key=key):
            seen[key].append(type(mod).__name__)

        getattr(getattr(m, submodule), f"register_{hook_kind}_hook")(record)
    x = torch.randn(6, 8, 5, 4, generator=gen, dtype=torch.float64)
    with pytest.warns(UserWarning, match=f"hooks on {submodule}"):
        train_step_and_compare(published, fused, x, gen, lr=0.1, step=0)
    assert seen["fused"] == seen["published"] != []


def test_the_unfused_path_passes_extra_channels_through(gen):
    published, fused = published_and_fused("GSM", gen)
    fused.bn.register_forward_hook(lambda *args: None)
    x = torch.randn(6, 12, 5, 4, generator=gen, dtype=torch.float64)  # 4 channels past fPlane
    with pytest.warns(UserWarning):
        out = fused(x)
    torch.testing.assert_close(out[:, :8], published(x[:, :8]))
    torch.testing.assert_close(out[:, 8:], x[:, 8:])


class Network(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gsm = reference.GSM(8, 2)

    def forward(self, x):
        return self.gsm(self.conv(x))


def test_convert_carries_the_hooks_of_published_modules_over(gen):
    model = Network().double()
    calls = []
    model.gsm.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m))))
    model.gsm.register_forward_hook(lambda m, args, out: calls.append(("post", type(m))))
    model.gsm.register_full_backward_hook(lambda m, gin, gout: calls.append(("backward", type(m))))
    model.gsm.register_state_dict_post_hook(lambda m, sd, prefix, local: sd.__setitem__(prefix + "tag", 1))
    model.gsm.conv3D.register_forward_hook(lambda *args: calls.append(("conv3D", None)))
    converted, report = gateshift.convert(model)
    assert [str(r) for r in report] == ["gsm: GSM -> GSM"]
    assert isinstance(converted.gsm, gateshift.GSM)
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="hooks on conv3D"):  # a hook that needs conv3D's output
        converted(x).sum().backward()
    assert calls == [("pre", gateshift.GSM), ("conv3D", None), ("post", gateshift.GSM), ("backward", gateshift.GSM)]
    assert "gsm.tag" in converted.state_dict()
