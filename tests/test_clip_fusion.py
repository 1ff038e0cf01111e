"""GCF-Net's gated clip fusion: the head against the paper's equations written clip by
clip (gateshift.reference.gated_clip_fusion) in float64, gradcheck, the sparsity loss,
GCFNet over a GSM TSN clip backbone, and clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise
from torch import nn

import gateshift
from gateshift import reference
from gateshift.tsn import TSNResNet


def head(dim, clips, classes, gen, **options):
    fusion = gateshift.GatedClipFusion(dim, clips, classes, **options).double()
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return fusion


@pytest.mark.parametrize("clips", [1, 4, 16])
@pytest.mark.parametrize("options", [{}, {"inner_dim": 7, "gate_hidden": 3}], ids=["defaults", "sizes"])
def test_matches_the_equations(clips, options, gen):
    fusion = head(12, clips, 5, gen, **options)
    v = torch.randn(3, clips, 12, generator=gen, dtype=torch.float64)
    logits, att = fusion(v)
    expected_logits, expected_att = reference.gated_clip_fusion(v, fusion)
    assert logits.shape == (3, 5) and att.shape == (3, clips)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(att, expected_att)
    assert ((att > 0) & (att < 1)).all()


def test_parameter_names_and_shapes():
    fusion = gateshift.GatedClipFusion(16, 4, 10, inner_dim=6, gate_hidden=2)
    shapes = {name: tuple(p.shape) for name, p in fusion.named_parameters()}
    assert shapes == {
        "query.weight": (6, 16), "key.weight": (6, 16), "value.weight": (6, 16), "out.weight": (16, 6),
        "gate_fc1.weight": (2, 4), "gate_fc1.bias": (2,), "gate_fc2.weight": (4, 2), "gate_fc2.bias": (4,),
        "classifier.weight": (10, 16), "classifier.bias": (10,),
    }
    default = gateshift.GatedClipFusion(16, 4, 10)
    assert default.query.out_features == 8 and default.gate_fc1.out_features == 4


def test_gradcheck(gen):
    fusion = head(6, 4, 3, gen)
    v = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: fusion(v), (v,))
    params = tuple(fusion.parameters())

    def of_parameters(*values):
        return torch.func.functional_call(fusion, dict(zip((n for n, _ in fusion.named_parameters()), values)), (v,))

    assert torch.autograd.gradcheck(of_parameters, tuple(p.detach().requires_grad_() for p in params))


def test_sparsity_loss_is_the_l1_norm_per_video_averaged(gen):
    att = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(gateshift.gcf_sparsity_loss(att), att.abs().sum(1).mean())
    with pytest.raises(ValueError, match=r"att must be \(B, num_clips\), got \(7,\)"):
        gateshift.gcf_sparsity_loss(att[0])


def test_gcf_net_over_a_gsm_tsn_clip_backbone(gen):
    frames, clips = 4, 3
    backbone = TSNResNet(gateshift.GSM, num_segments=frames, widths=(8, 16), stem_channels=8)
    backbone.head = nn.Identity()  # the clip descriptor: the consensus of the frame features (32)
    net = randomise(gateshift.models.GCFNet(backbone, 32, clips, 6), gen).double()
    videos = torch.randn(2, clips, frames, 3, 16, 16, generator=gen, dtype=torch.float64)
    logits, att = net(videos)
    assert logits.shape == (2, 6) and att.shape == (2, clips)
    # The same as the backbone clip by clip, then the head.
    net.eval()
    descriptors = torch.stack([torch.stack([backbone(videos[b, c]) [0] for c in range(clips)]) for b in range(2)])
    expected = reference.gated_clip_fusion(descriptors, net.head)
    torch.testing.assert_close(net(videos), expected)
    (logits.sum() + gateshift.gcf_sparsity_loss(att)).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: gateshift.GatedClipFusion(0, 4, 3), "dim must be a positive int"),
        (lambda: gateshift.GatedClipFusion(8, 4.0, 3), "num_clips must be a positive int"),
        (lambda: gateshift.GatedClipFusion(8, 4, 3, gate_hidden=0), "gate_hidden must be a positive int"),
        (lambda: gateshift.GatedClipFusion(8, 4, 3)(torch.randn(2, 5, 8)),
         r"v must be \(B, num_clips=4, dim=8\), got \(2, 5, 8\)"),
        (lambda: gateshift.models.GCFNet(nn.Flatten(), 8, 4, 3)(torch.randn(2, 3, 1, 3, 2, 2)),
         r"videos must be \(B, num_clips=4, T, C, H, W\)"),
        (lambda: gateshift.models.GCFNet(nn.Flatten(), 8, 4, 3)(torch.randn(2, 4, 1, 3, 2, 2)),
         r"clip_backbone must return \(B\*num_clips, dim\) = \(8, 8\), got \(8, 12\)"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_gcf_net_learns_from_the_informative_clips_where_averaging_fails(gen):
    # Synthetic videos of 8 clip descriptors: the class's vector in 2 random clips (which
    # carry a marker feature), another class's in each of the 6 distractors. Averaging the
    # clips' predictions is near chance (the distractors outvote the 2); the fused head,
    # trained the same way (Adam, cross-entropy + the sparsity loss), is not.
    clips, informative_clips, dim, classes = 8, 2, 16, 4
    # Orthogonal class vectors of norm sqrt(dim): every draw equally separable (random
    # vectors now and then drew two classes close together, and the fused head's
    # accuracy fell to 0.90 on such a draw).
    means = torch.linalg.qr(torch.randn(dim, classes, generator=gen)).Q.T * dim**0.5

    def videos(n):
        y = torch.randint(0, classes, (n,), generator=gen)
        informative = torch.rand(n, clips, generator=gen).argsort(1) < informative_clips
        other = (y[:, None] + torch.randint(1, classes, (n, clips), generator=gen)) % classes
        v = 2 * means[torch.where(informative, y[:, None], other)] + 0.5 * torch.randn(n, clips, dim, generator=gen)
        v[..., 0] = informative.float() * 2 - 1 + 0.3 * torch.randn(n, clips, generator=gen)
        return v[:, :, None, :, None, None], y  # (B, clips, T=1, C=dim, 1, 1)

    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    net = gateshift.models.GCFNet(nn.Flatten(), dim, clips, classes)  # the clip "backbone": the descriptor itself
    per_clip = nn.Linear(dim, classes)
    optimizer = torch.optim.Adam([*net.parameters(), *per_clip.parameters()], lr=1e-2)
    for _ in range(300):
        v, y = videos(32)
        logits, att = net(v)
        averaged = per_clip(v.flatten(2)).mean(1)
        loss = (nn.functional.cross_entropy(logits, y) + 0.01 * gateshift.gcf_sparsity_loss(att) / clips
                + nn.functional.cross_entropy(averaged, y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    v, y = videos(1000)
    with torch.no_grad():
        fused = (net(v)[0].argmax(1) == y).float().mean().item()
        averaged = (per_clip(v.flatten(2)).mean(1).argmax(1) == y).float().mean().item()
    assert fused > 0.9 and averaged < 0.5, (fused, averaged)
