"""The measured side of the GPU figures: the cases both the model and the profile run
(gateshift.testing.cases), the profile's kernel names and comparison table, and the
Nsight Compute summary (tools/ncu_summary.py). Timing itself needs a GPU and is not
tested here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import gateshift  # noqa: F401  (registers torch.ops.gateshift)
from gateshift.bench.workloads import Shape
from gateshift.testing import cases, gpu_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op", ["gsm", "gsf", "tsm"])
def test_every_case_has_a_floor_and_its_steps_run_on_the_cpu_ops(op, gen):
    shape = Shape(2, 3, 8, 5, 6, "test")
    run = cases.case_steps(op, shape, torch.float32, torch.ops.gateshift, gen)
    results = {name: step() for name, step in run.steps.items()}  # in order: later steps read earlier ones
    assert {(op, case) for case, _ in run.cases} <= set(cases.FLOOR_BYTES)
    for names in run.cases.values():
        assert names and all(name in run.steps for name in names)
    x_shape = (2, 3, 8, 5, 6)
    first = results["forward"][0] if op != "tsm" else results["forward"]
    assert first.shape == x_shape and torch.isfinite(first).all()
    if op != "tsm":  # the statistics' backward adds to the op's grad_x: x's shape
        assert results["stats_backward"].shape == x_shape


def test_floor_bytes_follow_design_md_and_halve_for_16_bit_dtypes():
    shape = Shape(2, 8, 64, 28, 28, "x")
    assert cases.floor_bytes("gsm", "op", "forward", shape, torch.float32) == 8 * shape.numel
    assert cases.floor_bytes("gsf", "module-train", "backward", shape, torch.float32) == 28 * shape.numel
    assert cases.floor_bytes("gsm", "op", "backward", shape, torch.bfloat16) == 6 * shape.numel


@pytest.mark.parametrize("name,short", [
    ("void gateshift::cuda::gate_shift_forward_kernel<float, true>(gateshift::cuda::Params<float>)",
     "gate_shift_forward_kernel<float, true>"),
    ("void gateshift::cuda::(anonymous namespace)::sum_partials_kernel<c10::BFloat16, float>(float const*, int)",
     "sum_partials_kernel<c10::BFloat16, float>"),
    ("temporal_shift_kernel", "temporal_shift_kernel"),
])
def test_kernel_names_are_shortened_to_the_emulators(name, short):
    assert gpu_profile.short_kernel_name(name) == short


def _record(op, direction, us, floor):
    return dict(op=op, case="op", direction=direction, where="bn-inception 3a", dtype="float32",
                measured_us=us, floor_us=floor, ratio=us / floor)


def test_compare_prints_after_over_before_for_the_cases_both_runs_have(tmp_path):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    records = [_record("gsm", "forward", 400.0, 25.0), _record("tsm", "forward", 80, 25)]
    before.write_text(json.dumps({"records": records}))
    after.write_text(json.dumps({"records": [_record("gsm", "forward", 100.0, 25.0)]}))
    table = gpu_profile.compare(before, after)
    row = next(line for line in table.splitlines() if line.startswith("gsm op forward 3a"))
    assert row.split()[-4:] == ["400.0", "100.0", "0.25", "4.00"]
    assert "tsm" not in table and "MEASURED" in table


def test_the_profile_refuses_to_run_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_profile.main(["--shape", "1,2,8,4,4"])


def _ncu_summary():
    spec = importlib.util.spec_from_file_location("ncu_summary", ROOT / "tools" / "ncu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ncu_summary_reads_ranges_units_and_missing_metrics(tmp_path):
    # The shape of `ncu --nvtx --csv --page raw` output: ncu's own lines, a header row,
    # a units row, one row per kernel.
    log = tmp_path / "ncu.log"
    log.write_text(
        '==PROF== Connected to process 7\n'
        '"ID","Process ID","thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg",'
        '"Kernel Name","gpu__time_duration.sum","dram__bytes_read.sum","launch__registers_per_thread"\n'
        '"","","","","ns","Kbyte","register/thread"\n'
        '"0","7","7  ""<default domain>:gsm 3a forward:none:none:none:none:none:none"" ",'
        '"void gate_shift_forward_kernel<float, 0>(P)","380,224","51,898","123"\n'
        '==PROF== Disconnected from process 7\n')
    (row,) = _ncu_summary().read(log)
    assert row["range"] == "gsm 3a forward" and row["kernel"] == "gate_shift_forward_kernel<float, 0>"
    assert row["us"] == pytest.approx(380.224) and row["dram rd MB"] == pytest.approx(51.898)
    assert row["regs"] == 123 and row["dram %"] is None
