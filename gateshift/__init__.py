"""gateshift: fused Gate-Shift (GSM) operators for PyTorch, on the CPU and CUDA."""

from . import _ops  # noqa: F401  (loads the extension, registers autograd and fake kernels)
from . import flop_formulas  # noqa: F401  (torch.utils.flop_counter counts the fused ops)
from . import reference
from .functional import gate_shift, gate_shift_fuse, temporal_shift
from .modules import GSF, GSM, TemporalShift
from .conversion import FusedGatedShift, convert
from .clip_fusion import GatedClipFusion, gcf_sparsity_loss
from .gst import GST
from . import models
from . import onnx

__all__ = [
    "gate_shift",
    "gate_shift_fuse",
    "temporal_shift",
    "GSM",
    "GSF",
    "TemporalShift",
    "convert",
    "FusedGatedShift",
    "GST",
    "GatedClipFusion",
    "gcf_sparsity_loss",
    "models",
    "onnx",
    "reference",
]
__version__ = "0.1.0"
