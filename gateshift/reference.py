"""Plain-PyTorch Gate-Shift: the oracle for tests and the baseline for benchmarks.

Nothing here is fused or clever. :func:`gate_shift` follows ``DESIGN.md`` section 1
line by line, and :class:`GSM` performs the published module's sequence of
operations (BatchNorm3d, ReLU, grouped Conv3d, tanh, gating, zero-padded shifts,
residual add, interleave, permutes), so that benchmarks compare the fused op with
what users run today and tests compare it with an independent formulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "gate_shift",
    "GSM",
    "gate_shift_fuse",
    "GSF",
    "gsf_channels",
    "temporal_shift",
    "TemporalShift",
    "GST",
    "interleave_channels",
    "shift_from_next",
    "shift_from_previous",
]


def shift_from_next(y: Tensor) -> Tensor:
    """Frame ``t`` takes frame ``t + 1``'s value; the last frame gets zeros. ``y``: ``(B, C, T, H, W)``."""
    return torch.cat((y[:, :, 1:], torch.zeros_like(y[:, :, :1])), dim=2)


def shift_from_previous(y: Tensor) -> Tensor:
    """Frame ``t`` takes frame ``t - 1``'s value; the first frame gets zeros. ``y``: ``(B, C, T, H, W)``."""
    return torch.cat((torch.zeros_like(y[:, :, :1]), y[:, :, :-1]), dim=2)


def interleave_channels(y: Tensor) -> Tensor:
    """The published module's channel order inside one group of ``(B, P/2, T, H, W)``.

    In-group channel ``q = i * (P/4) + j`` (``i`` in ``{0, 1}``) moves to position ``2 * j + i``.
    """
    b, half = y.shape[:2]
    return y.unflatten(1, (2, half // 2)).transpose(1, 2).flatten(1, 2)


def _gates(x, weight, bias, num_segments, bn_scale, bn_shift, channels) -> tuple[Tensor, int, Tensor]:
    """``x`` ``(B*T, C, H, W)`` as ``(B, C, T, H, W)``, the gated channel count ``P``, and
    the gates ``(B, 2, T, H, W)``: tanh of the grouped conv of ``relu(BN affine(x[:, :P]))``."""
    n = x.shape[0]
    t = num_segments
    p = x.shape[1] if channels is None else channels
    x5 = x.unflatten(0, (n // t, t)).transpose(1, 2)  # (B, C, T, H, W)
    xg = x5[:, :p]
    if bn_scale is not None:
        u = torch.relu(xg * bn_scale.view(1, p, 1, 1, 1) + bn_shift.view(1, p, 1, 1, 1))
    else:
        u = xg
    # Conv3d's zero padding applies to u, so positions outside the clip contribute nothing.
    return x5, p, torch.tanh(F.conv3d(u, weight, bias, padding=1, groups=2))


def gate_shift(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, num_segments: int,
               bn_scale: Tensor | None = None, bn_shift: Tensor | None = None, channels: int | None = None,
               channel_order: str = "interleaved") -> Tensor:
    """Reference Gate-Shift on ``x`` of shape ``(B*T, C, H, W)``; see ``gateshift.gate_shift``.

    Differentiable through autograd in every tensor argument. No argument checking
    beyond what the operations themselves do: this is the oracle, kept short.
    """
    x5, p, gates = _gates(x, weight, bias, num_segments, bn_scale, bn_shift, channels)
    xg = x5[:, :p]
    g0, g1 = gates[:, 0:1], gates[:, 1:2]
    x0, x1 = xg[:, : p // 2], xg[:, p // 2 :]
    # The residual is x - g x, as the published module writes it ((1 - g) x differs at infinite x).
    z0 = (x0 - g0 * x0) + shift_from_next(g0 * x0)  # group 0 takes from the next frame
    z1 = (x1 - g1 * x1) + shift_from_previous(g1 * x1)  # group 1 takes from the previous frame
    if channel_order == "interleaved":
        z0, z1 = interleave_channels(z0), interleave_channels(z1)
    elif channel_order != "grouped":
        raise ValueError(f"channel_order must be 'interleaved' or 'grouped', got {channel_order!r}")
    out5 = torch.cat((z0, z1, x5[:, p:]), dim=1)
    return out5.transpose(1, 2).flatten(0, 1)


class GSM(nn.Module):
    """The published Gate-Shift Module's computation, op for op, in plain PyTorch.

    Same constructor, submodules and ``state_dict`` keys as the published module
    (``conv3D``, ``bn``); ``conv3D`` starts at zero so a fresh module is the identity.
    Input and output are ``(B*T, fPlane, H, W)``.
    """

    def __init__(self, fPlane: int, num_segments: int = 3):
        super().__init__()
        self.fPlane = fPlane
        self.num_segments = num_segments
        self.conv3D = nn.Conv3d(fPlane, 2, (3, 3, 3), stride=1, padding=(1, 1, 1), groups=2)
        nn.init.constant_(self.conv3D.weight, 0)
        nn.init.constant_(self.conv3D.bias, 0)
        self.tanh = nn.Tanh()
        self.bn = nn.BatchNorm3d(num_features=fPlane)
        self.relu = nn.ReLU()

    def extra_repr(self) -> str:
        return f"fPlane={self.fPlane}, num_segments={self.num_segments}"

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        t = self.num_segments
        b = n // t
        x = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
        gate = self.tanh(self.conv3D(self.relu(self.bn(x))))
        half = self.fPlane // 2
        x0, x1 = x[:, :half], x[:, half:]
        y0 = gate[:, 0:1] * x0
        y1 = gate[:, 1:2] * x1
        r0 = x0 - y0
        r1 = x1 - y1
        y0 = shift_from_next(y0) + r0
        y1 = shift_from_previous(y1) + r1
        y0 = y0.view(b, 2, half // 2, t, h, w).permute(0, 2, 1, 3, 4, 5).contiguous()
        y1 = y1.view(b, 2, half // 2, t, h, w).permute(0, 2, 1, 3, 4, 5).contiguous()
        y = torch.cat((y0.view(b, half, t, h, w), y1.view(b, half, t, h, w)), dim=1)
        return y.permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


def gsf_channels(fplane: int, gsf_ch_ratio: float) -> int:
    """The published GSF's gated channel count: int(fPlane * ratio / 100), plus one if odd."""
    p = int(fplane * gsf_ch_ratio / 100)
    return p + 1 if p % 2 != 0 else p


def gate_shift_fuse(x: Tensor, weight: Tensor, bias: Tensor | None, fuse_weight: Tensor, fuse_bias: Tensor, *,
                    num_segments: int, bn_scale: Tensor | None = None, bn_shift: Tensor | None = None,
                    channels: int | None = None, channel_order: str = "interleaved") -> Tensor:
    """Reference Gate-Shift-Fuse (DESIGN.md section 2) on ``x`` ``(B*T, C, H, W)``.

    ``fuse_weight`` ``(2, 2, 3, 3)`` and ``fuse_bias`` ``(2,)`` hold the two groups'
    channel convolutions (``channel_conv1``, ``channel_conv2`` of the published module:
    input channel 0 the shifted part's means, 1 the residual's).
    """
    x5, p, gates = _gates(x, weight, bias, num_segments, bn_scale, bn_shift, channels)
    xg = x5[:, :p]
    groups = []
    for k, shift in ((0, shift_from_next), (1, shift_from_previous)):
        g = gates[:, k : k + 1]
        xk = xg[:, k * (p // 2) : (k + 1) * (p // 2)]
        ys = shift(g * xk)
        r = xk - g * xk  # as the published module writes it
        means = torch.stack((ys.mean(dim=(3, 4)), r.mean(dim=(3, 4))), dim=1)  # (B, 2, P/2, T)
        f = torch.sigmoid(F.conv2d(means, fuse_weight[k : k + 1], fuse_bias[k : k + 1], padding=1))  # (B, 1, P/2, T)
        f = f[:, 0, :, :, None, None]
        z = f * ys + (1 - f) * r
        groups.append(interleave_channels(z) if channel_order == "interleaved" else z)
    out5 = torch.cat((*groups, x5[:, p:]), dim=1)
    return out5.transpose(1, 2).flatten(0, 1)


class GSF(nn.Module):
    """The published Gate-Shift-Fuse module's computation, op for op, in plain PyTorch.

    Same constructor, submodules and ``state_dict`` keys as the published module
    (``conv3D``, ``bn``, ``channel_conv1``, ``channel_conv2``); ``conv3D`` keeps its
    default initialisation, as published. The first ``P = gsf_channels(fPlane,
    gsf_ch_ratio)`` channels are gated; the rest pass through.
    """

    def __init__(self, fPlane: int, num_segments: int = 8, gsf_ch_ratio: float = 100):
        super().__init__()
        self.fPlane = gsf_channels(fPlane, gsf_ch_ratio)
        self.num_segments = num_segments
        self.conv3D = nn.Conv3d(self.fPlane, 2, (3, 3, 3), stride=1, padding=(1, 1, 1), groups=2)
        self.tanh = nn.Tanh()
        self.bn = nn.BatchNorm3d(num_features=self.fPlane)
        self.relu = nn.ReLU()
        self.channel_conv1 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.channel_conv2 = nn.Conv2d(2, 1, (3, 3), padding=(1, 1))
        self.sigmoid = nn.Sigmoid()

    def extra_repr(self) -> str:
        return f"fPlane={self.fPlane}, num_segments={self.num_segments}"

    def forward(self, x_full: Tensor) -> Tensor:
        x = x_full[:, : self.fPlane]
        n, c, h, w = x.shape
        t = self.num_segments
        b = n // t
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
        gate = self.tanh(self.conv3D(self.relu(self.bn(x))))
        half = self.fPlane // 2
        outs = []
        for k, (conv, shift) in enumerate(((self.channel_conv1, shift_from_next), (self.channel_conv2, shift_from_previous))):
            xk = x[:, k * half : (k + 1) * half]
            y = gate[:, k : k + 1] * xk
            r = xk - y
            y = shift(y)
            y_mean = y.mean(dim=-1).mean(dim=-1).unsqueeze(3)
            r_mean = r.mean(dim=-1).mean(dim=-1).unsqueeze(3)
            weights = self.sigmoid(conv(torch.cat([y_mean, r_mean], dim=3).permute(0, 3, 1, 2)))
            y_weights = weights.squeeze(1).unsqueeze(-1).unsqueeze(-1)
            y = y * y_weights + r * (1 - y_weights)
            y = y.view(b, 2, half // 2, t, h, w).permute(0, 2, 1, 3, 4, 5).contiguous()
            outs.append(y.view(b, half, t, h, w))
        y = torch.cat(outs, dim=1).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)
        return torch.cat([y, x_full[:, self.fPlane :]], dim=1)


def temporal_shift(x: Tensor, num_segments: int, fold_div: int = 8) -> Tensor:
    """TSM's temporal shift of ``x`` ``(B*T, C, H, W)``, as the published code writes it.

    Of ``C`` channels the first ``C // fold_div`` take the next frame's values, the
    next ``C // fold_div`` the previous frame's, the rest are unchanged; zeros at the
    clip ends.
    """
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """The published TSM wrapper: shift, then the wrapped module (``net``; None = identity)."""

    def __init__(self, net: nn.Module | None = None, n_segment: int = 3, n_div: int = 8):
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}"

    def forward(self, x: Tensor) -> Tensor:
        x = temporal_shift(x, self.n_segment, fold_div=self.fold_div)
        return x if self.net is None else self.net(x)


def gated_clip_fusion(v: Tensor, fusion: nn.Module) -> tuple[Tensor, Tensor]:
    """GCF-Net's head, eqs. (1)-(8), written clip by clip as the paper writes it, with the
    parameters of ``fusion`` (a :class:`gateshift.GatedClipFusion`): the oracle of its
    batched matrix products. ``v`` ``(B, N, dim)``; returns ``(logits, att)``."""
    wq, wk, wv, wz = fusion.query.weight, fusion.key.weight, fusion.value.weight, fusion.out.weight
    logits, atts = [], []
    for video in v:  # (N, dim)
        n = video.shape[0]
        b = []
        for i in range(n):
            total = 0
            for j in range(n):
                relation = torch.dot(wq @ video[i], wk @ video[j]) / n
                total = total + relation * (wv @ video[j])
            b.append(wz @ total)  # (1)
        b = torch.stack(b)  # (N, dim)
        g = torch.stack([b_i.mean() for b_i in b])  # (2)
        hidden = torch.relu(fusion.gate_fc1.weight @ g + fusion.gate_fc1.bias)
        att = torch.sigmoid(fusion.gate_fc2.weight @ hidden + fusion.gate_fc2.bias)  # (3)
        r = torch.stack([b[i] + att[i] * b[i] for i in range(n)])  # (4)-(6)
        v_prime = r.sum(dim=0) / n  # (7)
        logits.append(fusion.classifier.weight @ v_prime + fusion.classifier.bias)  # (8)
        atts.append(att)
    return torch.stack(logits), torch.stack(atts)


class GST(nn.Module):
    """The published GST, op for op: two ``Conv3d`` on ``(B, C, T, H, W)`` tensors and a
    ``cat``. With ``num_segments``, ``(B*T, C, H, W)`` tensors are permuted to 5-D and back,
    as a 2-D network that holds the published block would have to. Parameters as
    :class:`gateshift.GST`'s."""

    def __init__(self, in_channels: int, out_channels: int, alpha: int = 4, beta: int = 2, stride: int = 1,
                 num_segments: int | None = None):
        super().__init__()
        self.beta, self.num_segments = beta, num_segments
        o_t = out_channels // alpha
        i_s = in_channels // 2 if beta == 2 else in_channels
        i_t = in_channels - i_s if beta == 2 else in_channels
        self.conv2 = nn.Conv3d(i_s, out_channels - o_t, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                               bias=False)
        self.Tconv = nn.Conv3d(i_t, o_t, 3, stride=(1, stride, stride), padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        frames = x.dim() == 4
        if frames:
            n, c, h, w = x.shape
            x = x.view(n // self.num_segments, self.num_segments, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
        if self.beta == 2:
            half = x.shape[1] // 2
            out = torch.cat((self.conv2(x[:, :half]), self.Tconv(x[:, half:])), dim=1)
        else:
            out = torch.cat((self.conv2(x), self.Tconv(x)), dim=1)
        if frames:
            out = out.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 1)
        return out
