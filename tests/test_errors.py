"""Bad input gets a clear error naming the argument, for every op: ValueError/TypeError
from the Python API (gate_shift, gate_shift_fuse, temporal_shift), and TORCH_CHECK errors
(same Python types) from the raw ops of every implementation, whose messages start with
the name of the op that was called, whichever shared check raised them."""

from __future__ import annotations

import pytest
import torch
from helpers import GATED_OPS, IMPLEMENTATIONS, RAW_ARGUMENTS, Case, call_raw, make_inputs, op_params, raw_arguments

import gateshift
from gateshift.testing.implementations import implementation

# ---------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------


@pytest.fixture
def args(gen):
    """Valid float32 arguments of gate_shift_fuse by keyword (gate_shift takes all but fuse_*)."""
    case = Case(2, 4, 8, 5, 5)
    x = make_inputs(case, gen, dtype=torch.float32)[0]
    return dict(x=x, num_segments=4, **op_params("gate_shift_fuse", case, gen, dtype=torch.float32))


def call(op, args, **changes):
    a = {**args, **changes}
    x, weight, bias = a.pop("x"), a.pop("weight"), a.pop("bias")
    fuse_weight, fuse_bias = a.pop("fuse_weight"), a.pop("fuse_bias")
    if op == "gate_shift":
        return gateshift.gate_shift(x, weight, bias, **a)
    return gateshift.gate_shift_fuse(x, weight, bias, fuse_weight, fuse_bias, **a)


@pytest.mark.parametrize("op", GATED_OPS)
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
        (lambda a: dict(x=a["x"].half(), weight=a["weight"].half(), bias=a["bias"].half(),
                        bn_scale=a["bn_scale"].double()),
         TypeError, r"bn_scale must be torch.float16 or torch.float32 for x of dtype torch.float16"),
        (lambda a: dict(x=a["x"].half(), weight=a["weight"].half(), bias=a["bias"].half(),
                        bn_scale=a["bn_scale"].half()),
         TypeError, r"bn_scale \(torch.float16\) and bn_shift \(torch.float32\) must have the same dtype"),
        (lambda a: dict(x=a["x"].to(torch.int32)), TypeError, r"x must be float32, float64, float16 or bfloat16"),
        (lambda a: dict(x=a["x"].bool()), TypeError, r"x must be float32"),
        (lambda a: dict(x=a["x"].tolist()), TypeError, r"x must be a Tensor"),
        (lambda a: dict(weight="weights"), TypeError, r"weight must be a Tensor"),
        (lambda a: dict(bias=a["bias"].to("meta")), ValueError, r"bias must be on the device of x \(cpu\)"),
        (lambda a: dict(x=a["x"][:, :, :, :0].contiguous(), num_segments=5), ValueError, r"multiple of num_segments"),
    ],
)
def test_functional_errors(op, args, change, error, match):
    with pytest.raises(error, match=match):
        call(op, args, **change(args))


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: dict(fuse_weight=a["fuse_weight"][:1]), ValueError, r"fuse_weight must have shape \(2, 2, 3, 3\)"),
        (lambda a: dict(fuse_bias=torch.zeros(3)), ValueError, r"fuse_bias must have shape \(2,\)"),
        (lambda a: dict(fuse_bias=a["fuse_bias"].double()), TypeError, r"fuse_bias must have the dtype of x"),
        (lambda a: dict(fuse_weight=None), TypeError, r"fuse_weight must be a Tensor"),
        (lambda a: dict(fuse_weight=a["fuse_weight"].to("meta")),
         ValueError, r"fuse_weight must be on the device of x"),
    ],
)
def test_gate_shift_fuse_functional_errors(args, change, error, match):
    with pytest.raises(error, match=match):
        call("gate_shift_fuse", args, **change(args))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x: gateshift.temporal_shift(x, 3), ValueError, "multiple of num_segments"),
        (lambda x: gateshift.temporal_shift(x, None), TypeError, "num_segments is required"),
        (lambda x: gateshift.temporal_shift(x, 4, 0), ValueError, "fold_div must be >= 1"),
        (lambda x: gateshift.temporal_shift(x, 4, 2.0), TypeError, "fold_div must be an int"),
        (lambda x: gateshift.temporal_shift(x.to(torch.complex64), 4), TypeError,
         "x must be a real floating, integer or bool tensor"),
        (lambda x: gateshift.temporal_shift(x[0], 4), ValueError, "x must be a 4-D"),
        (lambda x: gateshift.temporal_shift(x, 4, layout="NHWC"), ValueError, "layout must be one of"),
        (lambda x: gateshift.TemporalShift(None, 0), ValueError, "n_segment must be a positive int"),
        (lambda x: gateshift.TemporalShift(None, 4, 0), ValueError, "n_div must be a positive int"),
    ],
)
def test_temporal_shift_functional_errors(call, error, match, gen):
    x = torch.randn(8, 16, 3, 3, generator=gen)
    with pytest.raises(error, match=match):
        call(x)


@pytest.mark.parametrize("op", ("gate_shift", "gate_shift_fuse", "temporal_shift"))
def test_bcthw_layout_errors(op, args):
    x5 = args["x"].unflatten(0, (2, 4)).transpose(1, 2)

    def call_with(x, num_segments):
        if op == "temporal_shift":
            return gateshift.temporal_shift(x, num_segments, layout="BCTHW")
        return call(op, args, x=x, layout="BCTHW", num_segments=num_segments)

    with pytest.raises(ValueError, match=r"x must be a 5-D \(B, C, T, H, W\)"):
        call_with(args["x"], None)
    with pytest.raises(ValueError, match=r"num_segments = 3 disagrees with x.shape\[2\] = 4"):
        call_with(x5, 3)


# ---------------------------------------------------------------------------
# The raw ops (torch.ops.gateshift.* and the emulator's torch.ops.gateshift_emulated.*)
# ---------------------------------------------------------------------------

def test_raw_arguments_are_valid(gen):
    # The error tests below change one argument of a valid call: it must be valid.
    arguments = raw_arguments(gen)
    for op in RAW_ARGUMENTS:
        call_raw(implementation("cpu"), op, arguments)


# (what is wrong, the argument changed, its new value, error, message after "<op>: ")
GATE_SHIFT_ARGUMENT_ERRORS = [
    ("x must be a 5-D", "x", lambda a: a["x"].flatten(0, 1),
     ValueError, r"x must be a 5-D \(B, T, C, H, W\) tensor, got 4-D"),
    ("x must be float32", "x", lambda a: a["x"].int(),
     TypeError, r"x must be float32, float64, float16 or bfloat16, got Int"),
    ("weight must have shape", "weight", lambda a: a["weight"][:, :2],
     ValueError, r"weight must have shape \[2, 4, 3, 3, 3\], got \[2, 2, 3, 3, 3\]"),
    ("weight must have the dtype of x", "weight", lambda a: a["weight"].double(),
     TypeError, r"weight must have the dtype of x \(Float\), got Double"),
    ("bn_scale and bn_shift must be given together", "bn_scale", lambda a: None,
     ValueError, r"bn_scale and bn_shift must be given together"),
    ("bn_shift must have shape", "bn_shift", lambda a: a["bn_shift"][:4],
     ValueError, r"bn_shift must have shape \[8\], got \[4\]"),
    ("bn_scale must have the dtype of x", "bn_scale", lambda a: a["bn_scale"].half(),
     TypeError, r"bn_scale must have the dtype of x \(Float\) or Float, got Half"),
    ("interleaved order, channels = 6", "channels", lambda a: 6,
     ValueError, r"the interleaved channel order needs channels % 4 == 0, got channels = 6"),
    ("channels = 9 > C", "channels", lambda a: 9,
     ValueError, r"channels must be even, positive and at most C = 8, got 9"),
]
FORWARD_ONLY_ERRORS = [
    ("bias must have shape", "bias", lambda a: torch.zeros(4), ValueError, r"bias must have shape \[2\], got \[4\]"),
]
BACKWARD_ONLY_ERRORS = [
    ("grad_out must have the shape of x", "grad_out", lambda a: a["grad_out"][:1],
     ValueError, r"grad_out must have the shape of x \[2, 4, 8, 5, 5\]"),
    ("grad_out must have the dtype of x", "grad_out", lambda a: a["grad_out"].double(),
     TypeError, r"grad_out must have the dtype of x \(Float\)"),
    ("gates must have shape", "gates", lambda a: a["gates"][:, :, :1],
     ValueError, r"gates must have shape \[2, 4, 2, 5, 5\], got \[2, 4, 1, 5, 5\]"),
    ("gates must be Float", "gates", lambda a: a["gates"].double(),
     TypeError, r"gates must be Float for x of dtype Float, got Double"),
]
FUSE_ONLY_ERRORS = [
    ("fuse_weight must have shape", "fuse_weight", lambda a: a["fuse_weight"][:1],
     ValueError, r"fuse_weight must have shape \[2, 2, 3, 3\], got \[1, 2, 3, 3\]"),
    ("fuse_weight must have the dtype of x", "fuse_weight", lambda a: a["fuse_weight"].double(),
     TypeError, r"fuse_weight must have the dtype of x \(Float\)"),
]
FUSE_FORWARD_ONLY_ERRORS = [
    ("fuse_bias must have shape", "fuse_bias", lambda a: a["fuse_bias"][:1],
     ValueError, r"fuse_bias must have shape \[2\], got \[1\]"),
]
FUSE_BACKWARD_ONLY_ERRORS = [
    ("fusion must have shape", "fusion", lambda a: a["fusion"][:, :, :2],
     ValueError, r"fusion must have shape \[2, 4, 3, 8\], got \[2, 4, 2, 8\]"),
    ("fusion must be Float", "fusion", lambda a: a["fusion"].half(),
     TypeError, r"fusion must be Float for x of dtype Float, got Half"),
]
# (op, what is wrong, the argument changed, its new value, error, message after "<op>: ")
OTHER_OPS_ERRORS = [
    ("temporal_shift", "fold = 9 > C", "fold", lambda a: 9,
     ValueError, r"fold must be in \[0, C\] for C = 8, got 9"),
    ("temporal_shift", "fold = -1", "fold", lambda a: -1,
     ValueError, r"fold must be in \[0, C\] for C = 8, got -1"),
    ("temporal_shift", "x must be a 5-D", "x", lambda a: a["x"][0],
     ValueError, r"x must be a 5-D \(B, T, C, H, W\) tensor, got 4-D"),
    ("temporal_shift", "x must be float32", "x", lambda a: a["x"].int(),
     TypeError, r"x must be float32, float64, float16 or bfloat16"),
    ("batch_stats", "channels = 9 > C", "channels", lambda a: 9,
     ValueError, r"channels must be in \[1, C = 8\], got 9"),
    ("batch_stats", "channels = 0", "channels", lambda a: 0,
     ValueError, r"channels must be in \[1, C = 8\], got 0"),
    ("batch_stats", "x must be a 5-D", "x", lambda a: a["x"][0], ValueError, r"x must be a 5-D"),
    ("batch_stats", "x must be float32", "x", lambda a: a["x"].long(), TypeError, r"x must be float32"),
    ("batch_stats_backward", "grad_var must have shape", "grad_var", lambda a: a["grad_var"][:4], ValueError,
     r"grad_var must have shape \[8\], got \[4\]"),
    ("batch_stats_backward", "grad_mean must be Float", "grad_mean", lambda a: a["grad_mean"].double(), TypeError,
     r"grad_mean must be Float for x of dtype Float, got Double"),
    ("batch_stats_backward", "mean must be Float", "mean", lambda a: a["mean"].double(),
     TypeError, r"mean must be Float"),
    ("batch_stats_backward", "channels = 9 > C", "channels", lambda a: 9,
     ValueError, r"channels must be in \[1, C = 8\], got 9"),
    ("batch_stats_backward", "x must be a 5-D", "x", lambda a: a["x"][0], ValueError, r"x must be a 5-D"),
    ("batch_stats_backward", "grad_in must have the shape of x", "grad_in", lambda a: a["grad_in"][:, :2],
     ValueError, r"grad_in must have the shape of x \[2, 4, 8, 5, 5\], got \[2, 2, 8, 5, 5\]"),
    ("batch_stats_backward", "grad_in must have the dtype of x", "grad_in", lambda a: a["grad_in"].double(),
     TypeError, r"grad_in must have the dtype of x \(Float\), got Double"),
]


def raw_error_cases():
    cases = []
    for op in ("gate_shift_forward", "gate_shift_fuse_forward", "gate_shift_backward", "gate_shift_fuse_backward"):
        forward, fuse = op.endswith("forward"), "fuse" in op
        errors = GATE_SHIFT_ARGUMENT_ERRORS + (FORWARD_ONLY_ERRORS if forward else BACKWARD_ONLY_ERRORS)
        if fuse:
            errors = errors + FUSE_ONLY_ERRORS + (FUSE_FORWARD_ONLY_ERRORS if forward else FUSE_BACKWARD_ONLY_ERRORS)
        cases += [(op, *error) for error in errors]
    cases += OTHER_OPS_ERRORS
    return [pytest.param(op, what, *rest, id=f"{op}: {what}") for op, what, *rest in cases]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op,what,name,value,error,match", raw_error_cases())
def test_raw_op_errors_start_with_the_op_name(impl, op, what, name, value, error, match, gen):
    arguments = raw_arguments(gen, impl.device)
    with pytest.raises(error, match=rf"^{op}: {match}"):
        call_raw(impl, op, arguments, **{name: value(arguments)})


# ---------------------------------------------------------------------------
# Tensors on two devices (CUDA)
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("op", GATED_OPS)
def test_functional_mixed_devices_are_a_clear_error(op, args):
    with pytest.raises(ValueError, match=r"weight must be on the device of x \(cpu\), got cuda"):
        call(op, args, weight=args["weight"].cuda())
    with pytest.raises(ValueError, match=r"bias must be on the device of x \(cuda:0\), got cpu"):
        call(op, {name: t.cuda() if torch.is_tensor(t) else t for name, t in args.items()}, bias=args["bias"])


# The raw ops with tensors besides x.
OPS_WITH_SEVERAL_TENSORS = [op for op in RAW_ARGUMENTS if op not in ("temporal_shift", "batch_stats")]


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS_WITH_SEVERAL_TENSORS)
def test_raw_op_mixed_devices_are_a_clear_error(op, gen):
    impl = implementation("cuda")
    arguments = raw_arguments(gen, "cuda")
    # x on the CPU, the rest on the GPU: the op dispatches to its CUDA kernel, which
    # must refuse x.
    with pytest.raises(ValueError, match=rf"^{op}: x must be a CUDA tensor like the other arguments, got cpu"):
        call_raw(impl, op, arguments, x=arguments["x"].cpu())
    # x on the GPU, another tensor on the CPU.
    other = next(name for name in RAW_ARGUMENTS[op] if name != "x" and torch.is_tensor(arguments[name]))
    with pytest.raises(ValueError, match=rf"^{op}: {other} must .*device of x \(cuda:0\), got cpu"):
        call_raw(impl, op, arguments, **{other: arguments[other].cpu()})
