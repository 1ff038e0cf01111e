"""ONNX export of models that hold gateshift's modules, in standard ONNX operators.

``torch.onnx.export(..., dynamo=True)`` traces a model with ``torch.export``; the fused
ops would reach the exporter as ``torch.ops.gateshift.*``, which no ONNX runtime knows.
:func:`export` traces the model with every gateshift op running as its plain-PyTorch
reference instead (the same math: the folded BatchNorm as a scale and shift of the gate
input, the gate convolution as ``Conv``, the shifts as ``Slice`` and ``Concat`` with
zeros), so the graph has standard operators only, no custom domain, and nothing
unrolled over frames or clips. The clip count stays dynamic: one export serves any
batch of ``clips * T`` frames.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import standard_ops
from .gst import GST
from .models.video_model import TSN
from .modules import GSF, GSM, TemporalShift
from . import reference

__all__ = ["export", "frames_per_clip"]


def frames_per_clip(model: nn.Module) -> int:
    """The ``num_segments`` every temporal module (and TSN) of ``model`` agrees on."""
    found = set()
    for m in model.modules():
        if isinstance(m, (GSM, GSF, reference.GSM, reference.GSF, TSN)) or (
                isinstance(m, GST) and m.num_segments is not None):
            found.add(m.num_segments)
        elif isinstance(m, (TemporalShift, reference.TemporalShift)):
            found.add(m.n_segment)
    if len(found) != 1:
        raise ValueError("export(dynamic_clips=True) needs the model's temporal modules to agree on the frames "
                         f"per clip; found {sorted(found) or 'none'}: pass dynamic_shapes yourself")
    return found.pop()


def export(model: nn.Module, args: tuple, f=None, *, dynamic_clips: bool = True, **kwargs):
    """``torch.onnx.export(model, args, f, dynamo=True, **kwargs)`` in standard operators.

    ``model`` must be in eval mode (training-mode BatchNorm statistics are not exported).
    With ``dynamic_clips`` (and no ``dynamic_shapes`` in ``kwargs``), the first dimension of
    the single input ``args[0]``, ``(clips * T, C, H, W)``, is exported as a multiple of the
    model's ``T`` (:func:`frames_per_clip`). Returns the ``torch.onnx.ONNXProgram``.
    """
    if model.training:
        raise ValueError("export: call model.eval() first (training-mode BatchNorm is not exported)")
    if not isinstance(args, tuple):
        raise TypeError(f"export: args must be a tuple of the model's inputs, got {type(args).__name__}")
    if dynamic_clips and "dynamic_shapes" not in kwargs:
        if len(args) != 1 or not isinstance(args[0], Tensor):
            raise ValueError("export(dynamic_clips=True) takes one input tensor (clips * T, C, H, W); "
                             "pass dynamic_shapes for other signatures")
        t = frames_per_clip(model)
        if args[0].shape[0] % t != 0:
            raise ValueError(f"export: the example input has {args[0].shape[0]} frames, not a multiple of T={t}")
        if args[0].shape[0] // t < 2:
            # torch.export specialises a size of 1: the clip count would be fixed at 1.
            raise ValueError(f"export(dynamic_clips=True): give an example of at least 2 clips ({2 * t} frames), "
                             f"got {args[0].shape[0]} frames")
        clips = torch.export.Dim("clips", min=1)
        kwargs["dynamic_shapes"] = ({0: t * clips},)
    with standard_ops(), torch.no_grad():
        return torch.onnx.export(model, args, f, dynamo=True, **kwargs)
