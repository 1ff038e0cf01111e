"""gateshift.models: the published TSN networks built from the fused modules.

Each network is built twice, from the published modules (``implementation="published"``:
the authors' computation, op for op) and from the fused ones; an authors'-format
checkpoint of the first (``module.``-prefixed keys inside ``state_dict`` or
``model_state_dict``, as their training scripts save) is loaded into the second, and the
two must give the same outputs and gradients in float64, in eval and in training mode.
The architecture itself is checked against facts of the authors' code and papers: the
checkpoint key counts, named layers with their shapes, parameter counts and FLOPs.
"""

from __future__ import annotations

import pytest
import torch
from helpers import randomise_network
from torch import nn

import gateshift
from gateshift.models import NETWORKS, load_published, tsn
from gateshift.models.complexity import count

FRAMES = 3  # one clip: first, interior and last frame
CLASSES = 7


def authors_checkpoint(net: nn.Module, temporal: str | None) -> dict:
    """``net``'s weights as the authors' scripts save a DataParallel model: the GSF code
    under ``model_state_dict``, the GSM and TSM code under ``state_dict``."""
    state = {f"module.{k}": v.clone() for k, v in net.state_dict().items()}
    key = "model_state_dict" if temporal == "gsf" else "state_dict"
    return {"epoch": 3, key: state, "best_prec1": 47.2}


def network_ids(networks):
    return [f"{b}-{t or 'tsn'}" for b, t in networks]


@pytest.mark.parametrize(("backbone", "temporal"), NETWORKS, ids=network_ids(NETWORKS))
def test_fused_network_matches_the_published_one(backbone, temporal, tmp_path):
    gen = torch.Generator().manual_seed(hash((backbone, temporal)) % 2**31)
    published = randomise_network(tsn(backbone, temporal, num_classes=CLASSES, num_segments=FRAMES,
                                      implementation="published"), gen).double()
    fused = tsn(backbone, temporal, num_classes=CLASSES, num_segments=FRAMES).double()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(authors_checkpoint(published, temporal), path)
    assert load_published(fused, path) is fused
    size = fused.input_size
    for training in (False, True):
        published.train(training)
        fused.train(training)
        x = torch.randn(FRAMES, 3, size, size, generator=gen, dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        seed = int(torch.randint(2**31, (1,), generator=gen))
        torch.manual_seed(seed)  # the same dropout mask for both
        y1 = published(x1)
        torch.manual_seed(seed)
        y2 = fused(x2)
        assert y1.shape == (1, CLASSES)
        torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-9, msg=lambda m: f"training={training} output: {m}")
        g = torch.randn(y1.shape, generator=gen, dtype=torch.float64)
        params1 = [p for p in published.parameters() if p.requires_grad]
        params2 = [p for p in fused.parameters() if p.requires_grad]
        assert len(params1) == len(params2)
        grads1 = torch.autograd.grad(y1, [x1, *params1], g)
        grads2 = torch.autograd.grad(y2, [x2, *params2], g)
        names = ["input"] + [n for n, p in published.named_parameters() if p.requires_grad]
        # A convolution bias before a training-mode BatchNorm has a zero gradient up to
        # rounding: the absolute tolerance is set by the largest gradient anywhere.
        largest = max(float(b.abs().max()) for b in grads1)
        for name, a, b in zip(names, grads2, grads1):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10 * largest,
                                       msg=lambda m: f"training={training} grad {name}: {m}")
        for (name, b1), b2 in zip(published.named_buffers(), fused.buffers()):
            torch.testing.assert_close(b2, b1, rtol=1e-9, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")


def test_the_fused_network_holds_the_fused_modules():
    kinds = {"gsm": gateshift.GSM, "gsf": gateshift.GSF, "tsm": gateshift.TemporalShift}
    expected = {("bninception", "gsm"): 10, ("bninception", "gsf"): 10, ("bninception", "tsm"): 11,
                ("inceptionv3", "gsm"): 10, ("inceptionv3", "gsf"): 11,
                ("resnet50", "gsf"): 16, ("resnet50", "tsm"): 16}
    for (backbone, temporal), n in expected.items():
        net = tsn(backbone, temporal, num_classes=CLASSES)
        found = [m for m in net.modules() if isinstance(m, kinds[temporal])]
        assert len(found) == n, (backbone, temporal)
        published = tsn(backbone, temporal, num_classes=CLASSES, implementation="published")
        assert not any(isinstance(m, tuple(kinds.values())) for m in published.modules())


# Facts from the authors' code (their network definitions and builders) and papers.
AUTHORS_KEYS = {  # state_dict entries of the authors' TSN (num_batches_tracked included)
    ("inceptionv3", "gsm"): 730,
    ("inceptionv3", "gsf"): 781,
    ("resnet50", "gsf"): 496,
}
AUTHORS_SHAPES = {
    ("bninception", "gsm"): {
        "base_model.conv1_7x7_s2.weight": (64, 3, 7, 7),
        "base_model.gsm_inception_3c_3x3_reduce.conv3D.weight": (2, 64, 3, 3, 3),
        "base_model.gsm_inception_4d_1x1.bn.running_var": (96,),
        "base_model.inception_4e_double_3x3_2.weight": (256, 256, 3, 3),
        "base_model.inception_5b_pool_proj_bn.weight": (128,),
        "new_fc.weight": (CLASSES, 1024),
    },
    ("bninception", "gsf"): {
        "base_model.gsf_inception_5a_1x1.channel_conv2.weight": (1, 2, 3, 3),
        "base_model.gsf_inception_3a_1x1.conv3D.weight": (2, 32, 3, 3, 3),
    },
    ("bninception", "tsm"): {"base_model.inception_3a_1x1.weight": (64, 192, 1, 1)},
    ("inceptionv3", "gsm"): {
        "base_model.gsm_mixed_3_tower_conv_Conv2D.conv3D.weight": (2, 32, 3, 3, 3),
        "base_model.mixed_9_tower_1_mixed_conv_1_Conv2D.weight": (384, 384, 1, 3),
        "base_model.mixed_6_conv_batchnorm.running_mean": (192,),
        "new_fc.weight": (CLASSES, 2048),
    },
    ("inceptionv3", "gsf"): {"base_model.gsf_mixed_6_conv_Conv2D.bn.weight": (192,),
                             "base_model.gsf_mixed_3_conv_Conv2D.conv3D.weight": (2, 192, 3, 3, 3)},
    ("resnet50", "gsf"): {"base_model.layer4.2.gsf.conv3D.weight": (2, 1024, 3, 3, 3),
                          "base_model.layer2.0.downsample.0.weight": (512, 256, 1, 1)},
    ("resnet50", "tsm"): {"base_model.layer3.5.conv1.net.weight": (256, 1024, 1, 1)},
}
ABSENT = {
    ("bninception", "gsm"): ["base_model.fc.weight", "base_model.gsm_inception_3c_3x3.conv3D.weight"],
    ("inceptionv3", "gsm"): ["base_model.gsm_mixed_6_conv_Conv2D.conv3D.weight",
                             "base_model.gsm_mixed_3_conv_Conv2D.conv3D.weight"],
    ("bninception", "tsm"): ["base_model.inception_3a_1x1.net.weight"],
}


@pytest.mark.parametrize(("backbone", "temporal"), NETWORKS, ids=network_ids(NETWORKS))
def test_names_and_shapes_are_the_authors(backbone, temporal):
    state = tsn(backbone, temporal, num_classes=CLASSES).state_dict()
    if (backbone, temporal) in AUTHORS_KEYS:
        assert len(state) == AUTHORS_KEYS[backbone, temporal]
    for key, shape in AUTHORS_SHAPES.get((backbone, temporal), {}).items():
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT.get((backbone, temporal), []):
        assert key not in state


@pytest.mark.parametrize(("backbone", "temporal", "params", "gflops"), [
    ("bninception", None, 10.45, 16.37),  # GSM paper, Tab. 2 (174 classes, 8 frames)
    ("bninception", "gsm", 10.5, 16.46),
    ("inceptionv3", "gsm", 22.21, 26.85),  # GSM paper, Tab. 4
])
def test_parameters_and_flops_against_the_papers(backbone, temporal, params, gflops):
    n, macs = count(backbone, temporal, frames=8, classes=174)
    assert round(n / 1e6, 2) == pytest.approx(params, abs=0.005)
    # The papers count a few element-wise layers the counter leaves out: within 1.5%, below.
    assert 0.985 * gflops * 1e9 < macs <= gflops * 1e9


def test_the_fused_ops_count_as_the_published_modules():
    # The GSM overhead over TSN: 10 gating convolutions, 27 * fPlane multiply-adds per
    # pixel and frame (the paper: 16.46G - 16.37G = 0.09G).
    published = tsn("bninception", "gsm", num_classes=174, implementation="published")
    fused = tsn("bninception", "gsm", num_classes=174)
    counts = []
    for net in (published, fused):
        x = torch.randn(8, 3, 224, 224)
        with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            net.eval()(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1]
    _, plain = count("bninception", None)
    pixels_times_fplane = 784 * (64 + 64 + 128) + 196 * (224 + 192 + 160 + 96 + 128) + 49 * (352 + 352)
    assert counts[1] // 2 - plain == 8 * 27 * pixels_times_fplane


def test_complexity_command_prints_every_network(capsys):
    from gateshift.models.complexity import main

    main(["--frames", "2"])
    out = capsys.readouterr().out
    for backbone, temporal in NETWORKS:
        assert f"| {backbone}-{temporal or 'tsn'} |" in out
    assert "GSM paper, Tab. 2" in out


def test_partial_bn_is_the_published_one():
    net = tsn("bninception", "gsm", num_classes=CLASSES).train()
    norms = [m for m in net.base_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms[0].training and norms[0].weight.requires_grad
    assert all(not m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in norms[1:])
    gsms = [m for m in net.modules() if isinstance(m, gateshift.GSM)]
    assert all(m.bn.training and m.bn.weight.requires_grad for m in gsms)  # BatchNorm3d keeps training
    assert not any(m.training for m in net.eval().modules())
    # The GSF code has no partial BN; partial_bn=False turns it off anywhere.
    for net in (tsn("resnet50", "gsf", num_classes=CLASSES), tsn("bninception", "gsm", num_classes=CLASSES,
                                                                    partial_bn=False)):
        net.train()
        assert all(m.training and m.weight.requires_grad for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_dropout_zero_puts_the_classifier_in_the_backbone():
    net = tsn("resnet50", "tsm", num_classes=CLASSES, dropout=0)
    assert net.new_fc is None and isinstance(net.base_model.fc, nn.Linear)
    assert "base_model.fc.weight" in net.state_dict()


def test_published_loaders_layout_is_accepted():
    gen = torch.Generator().manual_seed(5)
    net = randomise_network(tsn("bninception", "tsm", num_classes=CLASSES, num_segments=2), gen).eval()
    x = torch.randn(4, 3, 224, 224, generator=gen)
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(net(x.reshape(2, 6, 224, 224)), y)  # (B, T*3, H, W), as their loaders give
    assert y.shape == (2, CLASSES)


def test_load_published_accepts_every_wrapper_and_prefix():
    gen = torch.Generator().manual_seed(6)
    source = randomise_network(tsn("resnet50", "tsm", num_classes=CLASSES), gen)
    state = source.state_dict()
    for checkpoint in (state, {"state_dict": state}, {"model_state_dict": state},
                       {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1},
                       {f"module._orig_mod.{k}": v for k, v in state.items()}):
        target = tsn("resnet50", "tsm", num_classes=CLASSES)
        load_published(target, checkpoint)
        for k, v in target.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_load_published_names_what_does_not_match():
    gsm = tsn("bninception", "gsm", num_classes=CLASSES)
    plain = tsn("bninception", None, num_classes=CLASSES).state_dict()
    with pytest.raises(KeyError, match=r"70 missing key\(s\) \[base_model.gsm_inception_3a_1x1"):
        load_published(gsm, plain)
    with pytest.raises(KeyError, match=r"70 unexpected key\(s\)"):
        load_published(tsn("bninception", None, num_classes=CLASSES), gsm.state_dict())
    with pytest.raises(ValueError, match=r"new_fc.weight: checkpoint \(9, 1024\), network \(7, 1024\)"):
        load_published(gsm, tsn("bninception", "gsm", num_classes=9).state_dict())
    with pytest.raises(TypeError, match="checkpoint must be a path or a dict"):
        load_published(gsm, [1, 2])
    with pytest.raises(TypeError, match="'epoch' is a int, not a tensor"):
        load_published(gsm, {"epoch": 1, "weights": plain})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"backbone": "vgg16"}, ValueError, "backbone must be one of"),
    ({"temporal": "gsm", "backbone": "resnet50"}, ValueError, r"temporal for resnet50 must be one of \('gsf', 'tsm', None\)"),
    ({"temporal": "tsm", "backbone": "inceptionv3"}, ValueError, "temporal for inceptionv3"),
    ({"num_classes": 0}, ValueError, "num_classes must be a positive int"),
    ({"num_segments": 2.0}, ValueError, "num_segments must be a positive int"),
    ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
    ({"implementation": "cuda"}, ValueError, "implementation must be one of"),
])
def test_tsn_errors(kwargs, error, match):
    args = {"backbone": "bninception", "temporal": "gsm", "num_classes": CLASSES} | kwargs
    with pytest.raises(error, match=match):
        tsn(args.pop("backbone"), args.pop("temporal"), **args)


def test_frames_must_fill_whole_clips():
    net = tsn("bninception", None, num_classes=CLASSES, num_segments=3)
    with pytest.raises(ValueError, match="not a multiple of num_segments=3"):
        net(torch.randn(4, 3, 224, 224))
    with pytest.raises(ValueError, match=r"must view as \(B\*T, 3, H, W\)"):
        net(torch.randn(4, 5, 224, 224))
