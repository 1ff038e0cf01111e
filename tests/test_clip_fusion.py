"""GCF-Net's gated clip fusion: the head against the paper's equations written clip by
clip (gateshift.reference.gated_clip_fusion) in float64, gradcheck, the sparsity loss,
GCFNet over a GSM TSN clip backbone, clear errors, and two learning tests on synthetic
clip descriptors: the head beats averaging the clips' predictions, and its att, trained
on video labels alone, picks out the informative clips."""

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


CLIPS, INFORMATIVE_CLIPS, DIM, CLASSES = 8, 2, 16, 4


def synthetic_videos(n, class_vectors, gen, *, distractors, noise, action_feature):
    """``n`` videos of ``CLIPS`` clip descriptors ``(n, CLIPS, T=1, C=DIM, 1, 1)``, their labels
    and which clips are informative. ``INFORMATIVE_CLIPS`` random clips hold twice their
    class's vector. The distractors hold another class's vector each (``"other class"``)
    or nothing but the noise (``"background"``). Every feature gets Gaussian ``noise``,
    except feature 0, an "action present" feature: ``action_feature`` is ``(off, on)``, its
    mean in the distractors and in the informative clips, plus Gaussian noise of standard
    deviation 0.3."""
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    informative = torch.rand(n, CLIPS, generator=gen).argsort(1) < INFORMATIVE_CLIPS
    if distractors == "other class":
        other = (y[:, None] + torch.randint(1, CLASSES, (n, CLIPS), generator=gen)) % CLASSES
        signal = class_vectors[torch.where(informative, y[:, None], other)]
    elif distractors == "background":
        signal = class_vectors[y][:, None, :] * informative[..., None]
    else:
        raise ValueError(f"distractors must be 'other class' or 'background', got {distractors!r}")
    v = 2 * signal + noise * torch.randn(n, CLIPS, DIM, generator=gen)
    v[..., 0] = torch.tensor(action_feature)[informative.long()] + 0.3 * torch.randn(n, CLIPS, generator=gen)
    return v[:, :, None, :, None, None], y, informative


def train_against_averaging(videos, gen, *, steps, batch, lr, **head_options):
    """GCF-Net over the descriptors themselves (``nn.Flatten()`` as the clip backbone) and
    the baseline, a per-clip classifier whose predictions are averaged, trained side by
    side on the same videos (Adam; cross-entropy on video labels, plus the sparsity loss
    for GCF-Net). Returns both."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    net = gateshift.models.GCFNet(nn.Flatten(), DIM, CLIPS, CLASSES, **head_options)
    per_clip = nn.Linear(DIM, CLASSES)
    optimizer = torch.optim.Adam([*net.parameters(), *per_clip.parameters()], lr=lr)
    for _ in range(steps):
        v, y, _ = videos(batch)
        logits, att = net(v)
        averaged = per_clip(v.flatten(2)).mean(1)
        loss = (nn.functional.cross_entropy(logits, y) + 0.01 * gateshift.gcf_sparsity_loss(att) / CLIPS
                + nn.functional.cross_entropy(averaged, y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, per_clip


def evaluate(net, per_clip, v, y):
    """Accuracy of GCF-Net and of the averaged per-clip classifier on videos ``v``, and
    GCF-Net's ``att``."""
    net.eval()
    with torch.no_grad():
        logits, att = net(v)
        fused = (logits.argmax(1) == y).float().mean().item()
        averaged = (per_clip(v.flatten(2)).mean(1).argmax(1) == y).float().mean().item()
    return fused, averaged, att


def orthogonal_class_vectors(gen):
    # Norm sqrt(DIM) and orthogonal: every draw equally separable (random vectors now and
    # then drew two classes close together, and the fused head's accuracy fell with them).
    return torch.linalg.qr(torch.randn(DIM, CLASSES, generator=gen)).Q.T * DIM**0.5


def roc_auc(scores, positive):
    """ROC AUC of ``scores`` for the ``positive`` mask, pooled over every element: the
    probability that a random positive scores above a random negative (ties count half),
    by ranks (a search in the sorted negatives) rather than all pairs."""
    negatives = scores[~positive].sort().values
    positives = scores[positive]
    below = torch.searchsorted(negatives, positives, right=False).double()
    tied = torch.searchsorted(negatives, positives, right=True).double() - below
    return ((below + 0.5 * tied).sum() / (positives.numel() * negatives.numel())).item()


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
    # Sigmoid gates: in (0, 1), but in floating point a large logit rounds to exactly 1
    # (float64 from about 37; seed 926962699 drew one).
    assert ((att >= 0) & (att <= 1)).all()


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
    # Each distractor holds another class's vector: averaging the clips' predictions is near
    # chance (the 6 distractors outvote the 2 informative clips); the fused head is not.
    class_vectors = orthogonal_class_vectors(gen)

    def videos(n):
        return synthetic_videos(n, class_vectors, gen, distractors="other class", noise=0.5, action_feature=(-1.0, 1.0))

    net, per_clip = train_against_averaging(videos, gen, steps=300, batch=32, lr=1e-2)
    v, y, _ = videos(1000)
    fused, averaged, _ = evaluate(net, per_clip, v, y)
    assert fused > 0.9 and averaged < 0.5, (fused, averaged)


def test_gcf_net_att_picks_out_the_informative_clips(gen):
    # GCF-Net's use for localisation: trained on video labels alone, its clip attention
    # marks the clips that hold the action; here the distractors are background. It needs
    # three settings, each measured against the alternative:
    # - Noisy features (standard deviation 3, against the class signal's RMS of 2): the
    #   labels are never fitted outright, so the gate keeps a gradient.
    #   On clean descriptors (noise 0.5) the head fits the labels through b_i alone, and
    #   the sparsity loss then drives every att to 0 (AUC 0.5).
    # - A faint action feature (0.7 over its noise of 0.3; alone it ranks clips at AUC
    #   0.95, so the test asks att to find it from video labels, not to beat it): with a
    #   clear one (1.0) the head again leans on b_i, and 1 run in 30 stalled at AUC 0.79.
    # - Four gate units per clip: the gate mixes the clips, and with one unit per clip
    #   occasional runs left one clip position unranked (its clips at AUC 0.63).
    class_vectors = orthogonal_class_vectors(gen)

    def videos(n):
        return synthetic_videos(n, class_vectors, gen, distractors="background", noise=3.0,
                                action_feature=(0.0, 0.7))

    net, per_clip = train_against_averaging(videos, gen, steps=1000, batch=128, lr=3e-3, gate_hidden=4 * CLIPS)
    v, y, informative = videos(1000)
    fused, averaged, att = evaluate(net, per_clip, v, y)
    auc = roc_auc(att, informative)
    # Measured over 100 seeds: AUC 0.944-0.981 in 97 runs; accuracy fused 0.905-0.972,
    # averaged 0.735-0.823. The other 3 (and 1 CI run) stalled on a plateau at AUC 0.77-0.88,
    # the gate half-using the action feature (2000 steps lift one from 0.82 to 0.84). A
    # wider gate stalls too (8 units per clip: 1 run in 200, 16: 3 in 200, AUC 0.78-0.80),
    # a learning rate of 1e-2 more often (17 in 100, down to 0.74). So the bound is 0.7:
    # far above chance (0.5), below every stall seen at this setting.
    assert auc > 0.7, (auc, att[informative].mean().item(), att[~informative].mean().item())
    assert fused > averaged + 0.08, (fused, averaged)
