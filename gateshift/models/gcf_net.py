"""GCF-Net: any clip backbone, then the gated clip fusion head (``gateshift.GatedClipFusion``)."""

from __future__ import annotations

from torch import Tensor, nn

from ..clip_fusion import GatedClipFusion


class GCFNet(nn.Module):
    """``clip_backbone`` on every clip of every video, then :class:`GatedClipFusion`.

    Input ``(B, num_clips, T, 3, H, W)``. The backbone takes the frames of all clips in TSN
    layout, ``(B * num_clips * T, 3, H, W)`` (a TSN with ``num_segments=T``, say), and must
    return one descriptor per clip, ``(B * num_clips, dim)``: a GSM TSN whose classifier is
    ``nn.Identity()`` returns the consensus of its frame features. Output ``(logits, att)``
    as the head's: ``(B, num_classes)`` and ``(B, num_clips)``.
    """

    def __init__(self, clip_backbone: nn.Module, dim: int, num_clips: int, num_classes: int, **head_options):
        super().__init__()
        self.backbone = clip_backbone
        self.head = GatedClipFusion(dim, num_clips, num_classes, **head_options)

    def forward(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        if videos.dim() != 6 or videos.shape[1] != self.head.num_clips:
            raise ValueError(f"videos must be (B, num_clips={self.head.num_clips}, T, C, H, W), "
                             f"got {tuple(videos.shape)}")
        batch, clips = videos.shape[:2]
        descriptors = self.backbone(videos.flatten(0, 2))
        if descriptors.shape != (batch * clips, self.head.dim):
            raise ValueError(f"clip_backbone must return (B*num_clips, dim) = ({batch * clips}, {self.head.dim}), "
                             f"got {tuple(descriptors.shape)}")
        return self.head(descriptors.unflatten(0, (batch, clips)))
