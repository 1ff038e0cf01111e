"""Networks built from gateshift's modules: GCF-Net (gated clip fusion over a clip backbone)."""

from .gcf_net import GCFNet

__all__ = ["GCFNet"]
