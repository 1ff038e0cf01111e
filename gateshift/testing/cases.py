"""The kernel launches behind each case that DESIGN.md section 3 gives a floor for.

A case is an op at a shape and dtype, forward or backward: the op alone (BN folded:
``case="op"``) or the module in training mode (``case="module-train"``: the batch
statistics and the op forward; the op's backward and the statistics' backward, which
adds their gradient to the op's grad_x, as gateshift._training_node runs them).

Both the GPU cost model (:mod:`gateshift.testing.gpu_model`, which counts the launches
under the emulator) and the GPU profile (:mod:`gateshift.testing.gpu_profile`, which
times them on a real GPU) run exactly these steps, so that a modeled and a measured
figure are of the same launches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..bench.workloads import Shape, preset_shapes

OPS = ("gsm", "gsf", "tsm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# DESIGN.md section 3: bytes per element of x a case must move at least, in fp32
# (forward, backward); half of it for 16-bit dtypes.
FLOOR_BYTES = {
    ("gsm", "op"): (8, 12),
    ("gsm", "module-train"): (12, 20),
    ("gsf", "op"): (12, 20),
    ("gsf", "module-train"): (16, 28),
    ("tsm", "op"): (8, 8),
}


def floor_bytes(op: str, case: str, direction: str, shape: Shape, dtype: torch.dtype) -> float:
    """The fewest DRAM bytes the case must move (DESIGN.md section 3)."""
    per_element = FLOOR_BYTES[(op, case)][0 if direction == "forward" else 1]
    return per_element * torch.tensor([], dtype=dtype).element_size() / 4 * shape.numel


def parse_ops(text: str) -> list[str]:
    """``--ops``: comma-separated names of OPS (a command-line error otherwise)."""
    ops = [o.strip() for o in text.split(",") if o.strip()]
    if not ops or any(o not in OPS for o in ops):
        raise SystemExit(f"--ops: choose from {', '.join(OPS)}; got {text!r}")
    return ops


def select_shapes(shapes: list[Shape], presets: list[str] | None, clips: int, frames: int,
                  only: str | None) -> list[Shape]:
    """The shapes of a run: ``shapes`` and the presets' placements (bn-inception when
    neither is given), kept to the placement labels in ``only`` (comma-separated)."""
    presets = presets or ([] if shapes else ["bn-inception"])
    selected = shapes + [s for name in presets for s in preset_shapes(name, clips, [frames])]
    if only:
        keep = {v.strip() for v in only.split(",")}
        selected = [s for s in selected if s.label.split()[-1] in keep]
        if not selected:
            raise SystemExit(f"--only {only!r} matches no placement")
    return selected


def case_fields(op: str, case: str, direction: str, shape: Shape, dtype: torch.dtype) -> dict:
    """The fields that name a case in a record, modeled or measured."""
    return dict(op=op, case=case, where=shape.label,
                shape=[shape.clips, shape.frames, shape.channels, shape.height, shape.width],
                dtype=str(dtype).removeprefix("torch."), direction=direction)


def case_heading(r: dict, time_key: str) -> str:
    """A record's first table line: the case, its time (``time_key``), floor and ratio."""
    return (f"{r['op']} {r['case']} {r['direction']}  {'x'.join(map(str, r['shape']))}  {r['where']}  "
            f"{r['dtype']}  on {r['gpu']}: {time_key.removesuffix('_us')} {r[time_key]:.1f} us, "
            f"floor {r['floor_us']:.1f} us, ratio {r['ratio']:.2f}")


@dataclasses.dataclass
class CaseSteps:
    """``steps``: the op's calls, each run once in this order (a later step reads an
    earlier one's results); ``cases``: {(case, direction): the steps it consists of}."""

    steps: dict[str, Callable[[], object]]
    cases: dict[tuple[str, str], list[str]]


def random_inputs(shape: Shape, dtype: torch.dtype, gen: torch.Generator, device="cpu") -> dict:
    """Random inputs of one op at ``shape`` (NaN-free, so every branch of the kernels
    runs as in real use)."""
    B, T, C, H, W = shape.clips, shape.frames, shape.channels, shape.height, shape.width
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rand = lambda *s, dt=dtype: torch.randn(*s, generator=gen).to(device=device, dtype=dt)  # noqa: E731
    return dict(
        x=rand(B, T, C, H, W), grad_out=rand(B, T, C, H, W), weight=rand(2, C // 2, 3, 3, 3), bias=rand(2),
        scale=(torch.rand(C, generator=gen) + 0.5).to(device=device, dtype=acc), shift=rand(C, dt=acc),
        fuse_weight=rand(2, 2, 3, 3), fuse_bias=rand(2), grad_stats=rand(2, C, dt=acc),
    )


def case_steps(op: str, shape: Shape, dtype: torch.dtype, ops, gen: torch.Generator, device="cpu") -> CaseSteps:
    """The steps of ``op`` (gsm, gsf or tsm) at ``shape``, calling the library ``ops``
    (``torch.ops.gateshift`` or the emulator's ``torch.ops.gateshift_emulated``)."""
    if op not in ("gsm", "gsf", "tsm"):
        raise ValueError(f"op must be gsm, gsf or tsm, got {op!r}")
    t = random_inputs(shape, dtype, gen, device)
    C = shape.channels
    if op == "tsm":
        return CaseSteps(
            steps={"forward": lambda: ops.temporal_shift(t["x"], C // 8, False),
                   "backward": lambda: ops.temporal_shift(t["grad_out"], C // 8, True)},
            cases={("op", "forward"): ["forward"], ("op", "backward"): ["backward"]},
        )
    done: dict[str, object] = {}

    def remember(name, fn):
        def step():
            done[name] = fn()
            return done[name]
        return step

    if op == "gsf":
        forward = lambda: ops.gate_shift_fuse_forward(  # noqa: E731
            t["x"], t["weight"], t["bias"], t["scale"], t["shift"], t["fuse_weight"], t["fuse_bias"], C, True)
        backward = lambda: ops.gate_shift_fuse_backward(  # noqa: E731  (out, gates, fusion) -> gates, fusion
            t["grad_out"], t["x"], *done["forward"][1:], t["weight"], t["scale"], t["shift"], t["fuse_weight"], C,
            True)
    else:
        forward = lambda: ops.gate_shift_forward(  # noqa: E731
            t["x"], t["weight"], t["bias"], t["scale"], t["shift"], C, True)
        backward = lambda: ops.gate_shift_backward(  # noqa: E731  (out, gates) -> gates
            t["grad_out"], t["x"], done["forward"][1], t["weight"], t["scale"], t["shift"], C, True)
    g = t["grad_stats"]
    return CaseSteps(
        steps={
            "stats": remember("stats", lambda: ops.batch_stats(t["x"], C)),
            "forward": remember("forward", forward),
            "backward": backward,
            "stats_backward": lambda: ops.batch_stats_backward(g[0], g[1], t["x"], done["stats"][0], C, t["grad_out"]),
        },
        cases={
            ("op", "forward"): ["forward"],
            ("op", "backward"): ["backward"],
            ("module-train", "forward"): ["stats", "forward"],
            ("module-train", "backward"): ["backward", "stats_backward"],
        },
    )
