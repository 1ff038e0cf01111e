"""gateshift: fused Gate-Shift (GSM) operators for PyTorch, on the CPU and CUDA."""

from . import _ops  # noqa: F401  (loads the extension, registers autograd and fake kernels)
from . import reference
from .functional import gate_shift, temporal_shift
from .modules import GSM, TemporalShift

__all__ = ["gate_shift", "temporal_shift", "GSM", "TemporalShift", "reference"]
__version__ = "0.1.0"
