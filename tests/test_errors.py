"""Bad input gets a clear error naming the argument: ValueError/TypeError from the
Python API, and TORCH_CHECK errors (same Python types) from the raw ops."""

from __future__ import annotations

import pytest
import torch
from helpers import Case, make_inputs

import gateshift
from gateshift._ops import ops


@pytest.fixture
def args(gen):
    x, weight, bias, scale, shift = make_inputs(Case(2, 4, 8, 5, 5), gen, dtype=torch.float32)
    return dict(x=x, weight=weight, bias=bias, bn_scale=scale, bn_shift=shift, num_segments=4)


def call(args, **changes):
    a = {**args, **changes}
    return gateshift.gate_shift(
        a.pop("x"), a.pop("weight"), a.pop("bias"), **a
    )


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: dict(x=a["x"][0]), ValueError, r"x must be a 4-D \(B\*T, C, H, W\)"),
        (lambda a: dict(x=a["x"].unsqueeze(0)), ValueError, r"x must be a 4-D"),
        (lambda a: dict(num_segments=3), ValueError, r"multiple of num_segments = 3"),
        (lambda a: dict(num_segments=0), ValueError, r"num_segments must be >= 1"),
        (lambda a: dict(num_segments=2.0), TypeError, r"num_segments must be an int"),
        (lambda a: dict(num_segments=None), TypeError, r"num_segments is required"),
        (lambda a: dict(channels=7), ValueError, r"channels must be even"),
        (lambda a: dict(channels=10), ValueError, r"channels must be even and at most C = 8"),
        (lambda a: dict(channels=0), ValueError, r"channels must be >= 2"),
        (lambda a: dict(channels=6, weight=torch.zeros(2, 3, 3, 3, 3), bn_scale=None, bn_shift=None), ValueError,
         r"channels % 4 == 0"),
        (lambda a: dict(channel_order="sideways"), ValueError, r"channel_order must be one of"),
        (lambda a: dict(layout="NHWC"), ValueError, r"layout must be one of"),
        (lambda a: dict(weight=a["weight"][:, :3]), ValueError, r"weight must have shape \(2, 4, 3, 3, 3\)"),
        (lambda a: dict(weight=a["weight"].flatten()), ValueError, r"weight must have shape"),
        (lambda a: dict(bias=torch.zeros(3)), ValueError, r"bias must have shape \(2,\)"),
        (lambda a: dict(bn_scale=torch.ones(7)), ValueError, r"bn_scale must have shape \(8,\)"),
        (lambda a: dict(bn_shift=torch.ones(8, 1)), ValueError, r"bn_shift must have shape \(8,\)"),
        (lambda a: dict(bn_shift=None), ValueError, r"bn_scale and bn_shift must be given together"),
        (lambda a: dict(weight=a["weight"].double()), TypeError, r"weight must have the dtype of x \(torch.float32\)"),
        (lambda a: dict(bn_scale=a["bn_scale"].half()), TypeError, r"bn_scale must be torch.float32 for x of dtype"),
        (lambda a: dict(x=a["x"].half(), weight=a["weight"].half(), bias=a["bias"].half(), bn_scale=a["bn_scale"].double()),
         TypeError, r"bn_scale must be torch.float16 or torch.float32 for x of dtype torch.float16"),
        (lambda a: dict(x=a["x"].half(), weight=a["weight"].half(), bias=a["bias"].half(), bn_scale=a["bn_scale"].half()),
         TypeError, r"bn_scale \(torch.float16\) and bn_shift \(torch.float32\) must have the same dtype"),
        (lambda a: dict(x=a["x"].to(torch.int32)), TypeError, r"x must be float32, float64, float16 or bfloat16"),
        (lambda a: dict(x=a["x"].bool()), TypeError, r"x must be float32"),
        (lambda a: dict(x=a["x"].tolist()), TypeError, r"x must be a Tensor"),
        (lambda a: dict(weight="weights"), TypeError, r"weight must be a Tensor"),
        (lambda a: dict(bias=a["bias"].to("meta")), ValueError, r"bias must be on the device of x \(cpu\)"),
        (lambda a: dict(x=a["x"][:, :, :, :0].contiguous(), num_segments=5), ValueError, r"multiple of num_segments"),
    ],
)
def test_functional_errors(args, change, error, match):
    with pytest.raises(error, match=match):
        call(args, **change(args))


def test_bcthw_layout_errors(args):
    x5 = args["x"].unflatten(0, (2, 4)).transpose(1, 2)
    with pytest.raises(ValueError, match=r"x must be a 5-D \(B, C, T, H, W\)"):
        call(args, x=args["x"], layout="BCTHW", num_segments=None)
    with pytest.raises(ValueError, match=r"num_segments = 3 disagrees with x.shape\[2\] = 4"):
        call(args, x=x5, layout="BCTHW", num_segments=3)


def raw_args(args):
    x5 = args["x"].unflatten(0, (2, 4))
    return [x5, args["weight"], args["bias"], args["bn_scale"], args["bn_shift"], 8, True]


@pytest.mark.parametrize(
    "index,value,error,match",
    [
        (0, lambda a: a[0].flatten(0, 1), ValueError, r"x must be a 5-D"),
        (0, lambda a: a[0].int(), TypeError, r"x must be float32"),
        (1, lambda a: a[1][:, :2], ValueError, r"weight must have shape \[2, 4, 3, 3, 3\]"),
        (1, lambda a: a[1].double(), TypeError, r"weight must have the dtype of x"),
        (2, lambda a: torch.zeros(4), ValueError, r"bias must have shape \[2\]"),
        (3, lambda a: None, ValueError, r"bn_scale and bn_shift must be given together"),
        (4, lambda a: a[4][:4], ValueError, r"bn_shift must have shape \[8\]"),
        (5, lambda a: 6, ValueError, r"interleaved channel order needs channels % 4 == 0"),
        (5, lambda a: 9, ValueError, r"channels must be even, positive and at most C = 8"),
    ],
)
def test_raw_op_errors(args, index, value, error, match):
    a = raw_args(args)
    a[index] = value(a)
    with pytest.raises(error, match=match):
        ops.gate_shift_forward(*a)


def test_raw_backward_errors(args):
    a = raw_args(args)
    out, gates = ops.gate_shift_forward(*a)
    x5, weight, _, scale, shift, p, inter = a
    with pytest.raises(ValueError, match=r"grad_out must have the shape of x"):
        ops.gate_shift_backward(out[:1], x5, gates, weight, scale, shift, p, inter)
    with pytest.raises(ValueError, match=r"gates must have shape \[2, 4, 2, 5, 5\]"):
        ops.gate_shift_backward(out, x5, gates[:, :, :1], weight, scale, shift, p, inter)
    with pytest.raises(TypeError, match=r"gates must be Float for x of dtype Float, got Double"):
        ops.gate_shift_backward(out, x5, gates.double(), weight, scale, shift, p, inter)
    with pytest.raises(TypeError, match=r"grad_out must have the dtype of x"):
        ops.gate_shift_backward(out.double(), x5, gates, weight, scale, shift, p, inter)


def test_raw_batch_stats_errors(gen):
    x5 = torch.randn(2, 3, 8, 4, 4, generator=gen)
    with pytest.raises(ValueError, match=r"channels must be in \[1, C = 8\]"):
        ops.batch_stats(x5, 9)
    with pytest.raises(ValueError, match=r"x must be a 5-D"):
        ops.batch_stats(x5[0], 4)
    mean, var = ops.batch_stats(x5, 8)
    with pytest.raises(ValueError, match=r"grad_var must have shape \(8\)"):
        ops.batch_stats_backward(mean, var[:4], x5, mean, 8)
    with pytest.raises(TypeError, match=r"mean must be Float"):
        ops.batch_stats_backward(mean, var, x5, mean.double(), 8)
