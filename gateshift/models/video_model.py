"""The TSN video model around a backbone, as the GSM/GSF authors' ``VideoModel`` runs it.

Frames of all clips go through the 2-D backbone together (``(B*T, 3, H, W)``); the
backbone's classifier slot becomes dropout, ``new_fc`` scores every frame, and the
scores are averaged over the ``T`` frames of each clip. With ``partial_bn`` every
``BatchNorm2d`` of the backbone but the first stays in eval mode with frozen affine
parameters whenever the model is put in training mode ("partial BN", as published;
the temporal modules' ``BatchNorm3d`` keep training).
"""

from __future__ import annotations

from torch import Tensor, nn


class TSN(nn.Module):
    """``base_model``: a backbone giving ``(N, feature_dim)`` features, whose classifier
    attribute ``last_layer_name`` this model replaces. Module names and the
    ``state_dict`` keys (``base_model.*``, ``new_fc.*``) are the published ones."""

    def __init__(self, base_model: nn.Module, last_layer_name: str, feature_dim: int, num_classes: int,
                 num_segments: int, dropout: float = 0.5, partial_bn: bool = True, input_size: int = 224):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_segments = num_segments
        self.input_size = input_size
        self.base_model = base_model
        # As published: the classifier slot becomes dropout and new_fc follows it; with
        # dropout 0 the slot itself becomes the classifier.
        if dropout > 0:
            setattr(base_model, last_layer_name, nn.Dropout(p=dropout))
            self.new_fc = nn.Linear(feature_dim, num_classes)
            classifier = self.new_fc
        else:
            classifier = nn.Linear(feature_dim, num_classes)
            setattr(base_model, last_layer_name, classifier)
            self.new_fc = None
        nn.init.normal_(classifier.weight, 0, 0.001)
        nn.init.zeros_(classifier.bias)
        self.partial_bn = partial_bn
        self.train()  # applies partial BN from the start, as the published training does

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, partial_bn={self.partial_bn}"

    def train(self, mode: bool = True) -> TSN:
        super().train(mode)
        if self.partial_bn:
            norms = [m for m in self.base_model.modules() if isinstance(m, nn.BatchNorm2d)]
            for m in norms[1:]:
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return self

    def forward(self, frames: Tensor) -> Tensor:
        """``frames``: ``(B*T, 3, H, W)`` (or any shape that views as it, such as the
        published loaders' ``(B, T*3, H, W)``); returns ``(B, num_classes)``."""
        if frames.dim() < 3 or frames.numel() % (3 * frames.shape[-1] * frames.shape[-2]) != 0:
            raise ValueError(f"frames must view as (B*T, 3, H, W), got {tuple(frames.shape)}")
        frames = frames.reshape(-1, 3, *frames.shape[-2:])
        if frames.shape[0] % self.num_segments != 0:
            raise ValueError(f"frames holds {frames.shape[0]} frames, not a multiple of num_segments="
                             f"{self.num_segments}")
        scores = self.base_model(frames)
        if self.new_fc is not None:
            scores = self.new_fc(scores)
        return scores.unflatten(0, (-1, self.num_segments)).mean(dim=1)

