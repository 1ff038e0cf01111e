"""Networks built from gateshift's modules.

* :func:`tsn`: the published TSN networks (BN-Inception with GSM, GSF or TSM, ...), with
  the authors' module names; :func:`load_published` loads their checkpoints.
* :func:`gst_resnet50`: the published GST ResNet-50.
* :class:`GCFNet`: gated clip fusion over any clip backbone.
"""

from .checkpoints import load_published
from .gcf_net import GCFNet
from .gst_resnet import gst_resnet50
from .video_model import TSN
from .zoo import BACKBONES, NETWORKS, tsn

__all__ = ["BACKBONES", "NETWORKS", "GCFNet", "TSN", "gst_resnet50", "load_published", "tsn"]
