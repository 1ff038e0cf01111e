"""gateshift-bench and gateshift-check: argument parsing, output schemas, and that
every implementation a benchmark times computes what the reference computes."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from gateshift import check
from gateshift.bench import cli, report, runner, timing, workloads

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--shape", "1,3,8,5,6", "--ops", "gsm", "--repeat", "2", "--warmup", "1", "--network", "none", "--no-progress"]
REQUIRED = {"impl", "shape", "dtype", "device", "fwd_ms", "fwd_bwd_ms", "saved_bytes"}


def test_defaults_are_the_quick_reference_case_and_a_published_network():
    args = cli.parse_args(["--quick"])
    assert args.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert [str(s) for s in args.shapes] == ["2x8x64x28x28"]
    assert args.networks == ["bninception-gsm"]
    assert args.impls == ["eager", "compile", "fused"] and args.ops == ["gsm", "gsf", "tsm"]


def test_network_selection():
    args = cli.parse_args(["--network", "resnet50-gsf"])
    assert args.networks == ["resnet50-gsf"] and args.shapes == []  # a network alone: no op cases
    every = cli.parse_args(["--network", "all"]).networks
    assert len(every) == 7 and "bninception-tsn" not in every  # a TSN is every network's baseline
    assert "inceptionv3-gsf" in workloads.NETWORKS and "resnet50-tsm" in workloads.NETWORKS
    assert cli.parse_args(["--quick", "--network", "none"]).networks == []


def test_presets_and_custom_shapes():
    args = cli.parse_args(["--preset", "resnet50", "--frames", "8,16", "--clips", "3", "--shape", "1,2,8,4,4"])
    shapes = [str(s) for s in args.shapes]
    assert shapes[0] == "1x2x8x4x4"
    assert "3x8x64x56x56" in shapes and "3x16x512x7x7" in shapes and len(shapes) == 1 + 2 * 4
    assert args.networks == []  # shapes were given: no network case unless asked for
    labels = {s.label for s in cli.parse_args(["--preset", "bn-inception", "--frames", "8"]).shapes}
    assert "bn-inception 5b" in labels and len(labels) == 10


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--shape", "1,2,3"], "B,T,C,H,W"),
        (["--shape", "1,2,0,4,4"], "positive"),
        (["--ops", "tsm9"], "unknown op"),
        (["--impls", "fused,numba"], "unknown implementation"),
        (["--repeat", "1"], "at least 2"),
        (["--frames", "8,x"], "comma-separated integers"),
        (["--device", "tpu"], "cpu or cuda"),
        (["--dtype", "int8"], "invalid choice"),
        (["--network-size", "8"], "at least 32"),
        (["--network", "resnet50-gsm"], "invalid choice"),
        (["--network-clips", "0"], "must be positive"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--device", "cuda"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def refuse_non_json(name):
    raise ValueError(f"{name} is not JSON")


def test_json_and_csv_records(tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert cli.main([*TINY, "--impls", "eager,fused", "--json", str(out_json), "--csv", str(out_csv)]) == 0
    table = capsys.readouterr().out
    assert "fwd+bwd ms" in table and "fused" in table and "eager" in table
    data = json.loads(out_json.read_text(), parse_constant=refuse_non_json)  # strict JSON: no NaN
    assert data["meta"]["copy_bandwidth_GBps"] > 0 and data["meta"]["command"].startswith("gateshift-bench")
    records = data["records"]
    assert [r["impl"] for r in records] == ["eager", "fused"]
    for r in records:
        assert REQUIRED <= set(r)
        assert r["shape"] == "1x3x8x5x6" and r["dtype"] == "float32" and r["device"].startswith("cpu")
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["saved_bytes"] > 0
    fused, eager = records[1], records[0]
    assert fused["saved_bytes"] < eager["saved_bytes"]  # what the package is for
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["impl"] for row in rows] == ["eager", "fused"]
    assert REQUIRED <= set(rows[0])


def test_record_fields_are_the_keys_of_the_committed_results():
    # JSON keys and CSV columns are the record's field names: renaming one would
    # silently break the summaries of results already written.
    # New fields may follow the committed ones.
    committed = list(json.loads((ROOT / "benchmarks/results/cpu-quick.json").read_text())["records"][0])
    assert [f.name for f in dataclasses.fields(runner.Record)][: len(committed)] == committed


def test_every_implementation_computes_the_reference_output():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    w = workloads.op_workload(workloads.OPS["gsm"], workloads.Shape(2, 4, 16, 7, 9), gen)
    records = runner.benchmark_workload(
        w, torch.float32, torch.device("cpu"), ["eager", "compile", "fused", "op"], warmup=1, repeat=2,
        bandwidth=timing.copy_bandwidth(torch.device("cpu"), repeat=2), gen=gen,
    )
    assert [r.impl for r in records] == ["eager", "compile", "fused", "op"]
    for r in records:
        assert r.max_abs_err < 1e-4, f"{r.impl} differs from the reference by {r.max_abs_err}"
    # Saved for backward: x and the two gate planes (2/C of x), plus parameter-sized bits.
    assert records[2].saved_ratio <= 1 + 2 / 16 + 0.1 < records[0].saved_ratio


def test_temporal_shift_joins_through_the_same_code_path():
    gen = torch.Generator().manual_seed(0)
    w = workloads.op_workload(workloads.OPS["tsm"], workloads.Shape(2, 4, 16, 5, 5), gen)
    records = runner.benchmark_workload(
        w, torch.float32, torch.device("cpu"), ["eager", "fused", "op"], warmup=1, repeat=2, bandwidth=1e10, gen=gen
    )
    # "op" is left out: the fused shift module is the op itself.
    assert [r.op for r in records] == ["tsm", "tsm"] and all(r.max_abs_err == 0 for r in records)
    assert records[1].saved_bytes == 0  # a shift saves nothing for backward


def test_gsf_joins_through_the_same_code_path():
    gen = torch.Generator().manual_seed(0)
    w = workloads.op_workload(workloads.OPS["gsf"], workloads.Shape(2, 4, 16, 5, 5), gen)
    records = runner.benchmark_workload(
        w, torch.float32, torch.device("cpu"), ["eager", "fused", "op"], warmup=1, repeat=2, bandwidth=1e10, gen=gen
    )
    assert [r.op for r in records] == ["gsf"] * 3 and all(r.max_abs_err < 1e-4 for r in records[1:])
    assert records[1].saved_bytes < records[0].saved_bytes


@pytest.mark.parametrize("op", ["gsm", "gsf"])
def test_op_alone_is_the_eval_module_forward_and_backward(op):
    # impl "op": the fused op with the module's BN folded beforehand. Its output and
    # gradients are the eval-mode module's, whose BN normalises with the same running
    # statistics (random here, so that the fold is not the identity).
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    w = workloads.op_workload(workloads.OPS[op], workloads.Shape(2, 4, 16, 5, 7), gen)
    module = copy.deepcopy(w.fused).double()
    with torch.no_grad():
        module.bn.running_mean.normal_(generator=gen)
        module.bn.running_var.uniform_(0.5, 2, generator=gen)
    alone = workloads.FoldedOp(copy.deepcopy(module)).train()  # train mode too: no batch statistics
    module.eval()
    x = torch.randn(w.input_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(w.input_shape, generator=gen, dtype=torch.float64)
    results = []
    for m in (module, alone):
        x.grad = None
        out = m(x)
        out.backward(grad)
        weight = m.conv3D.weight if m is module else m.module.conv3D.weight
        results.append((out.detach(), x.grad.clone(), weight.grad.clone()))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert workloads.OPS["tsm"].op_alone is None and workloads.OPS["gst"].op_alone is None


def test_gst_joins_on_request():
    assert cli.parse_args(["--quick"]).ops == ["gsm", "gsf", "tsm"]
    assert cli.parse_args(["--ops", "gst", "--shape", "1,4,8,6,6"]).ops == ["gst"]
    gen = torch.Generator().manual_seed(0)
    w = workloads.op_workload(workloads.OPS["gst"], workloads.Shape(2, 4, 16, 6, 7), gen)
    records = runner.benchmark_workload(
        w, torch.float32, torch.device("cpu"), ["eager", "compile", "fused"], warmup=1, repeat=2, bandwidth=1e10,
        gen=gen,
    )
    assert [r.op for r in records] == ["gst"] * 3 and all(r.max_abs_err < 1e-4 for r in records)


def test_network_case_runs_the_published_network_ours_and_the_baseline():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    # 64x64 planes and 4 frames: with 2 frames of 32x32 the last stage's BatchNorm statistics
    # come from 1x1 maps of a few frames, and float32 errors of either network reach 5e-3.
    w = workloads.network_workload("resnet50-gsf", clips=1, frames=4, gen=gen, size=64)
    input_draw = gen.get_state()  # the case's input is its first draw
    records = runner.benchmark_workload(
        w, torch.float32, torch.device("cpu"), ["eager", "fused"], warmup=1, repeat=2, bandwidth=1e10, gen=gen
    )
    assert [r.impl for r in records] == ["eager", "fused", "baseline"]
    assert all(r.op == "resnet50-gsf" and r.shape == "1x4x3x64x64" for r in records)
    eager, fused, baseline = records
    assert math.isnan(baseline.max_abs_err)
    # Both float32 networks carry their own rounding noise (outputs O(1-10); they were 1.2e-3
    # apart once): ours is judged against the published network in float64 on the same
    # input, beside the published float32 one (ratio 0.93-1.40 over 8 seeds).
    x = torch.randn(w.input_shape, generator=torch.Generator().set_state(input_draw))
    with torch.no_grad():
        truth = copy.deepcopy(w.published).double().eval()(x.double())
        published32 = copy.deepcopy(w.published).eval()(x)
        fused32 = copy.deepcopy(w.fused).eval()(x)
    published_err = (published32.double() - truth).abs().max().item()
    assert (fused32.double() - truth).abs().max().item() <= 3 * published_err
    # The bench's figure is the two float32 networks' difference on that input.
    assert fused.max_abs_err == pytest.approx((fused32 - published32).abs().max().item(), rel=1e-3)
    assert fused.saved_bytes < eager.saved_bytes
    for r in (eager, fused):  # the share of the step the 16 GSFs take, measured against the baseline
        assert r.temporal_share == pytest.approx(1 - baseline.fwd_bwd_ms / r.fwd_bwd_ms)
        assert r.temporal_share_infer == pytest.approx(1 - baseline.infer_ms / r.infer_ms)
    assert math.isnan(baseline.temporal_share)


def test_network_case_leaves_compile_out_and_repeats_less(monkeypatch):
    # A whole network compiles for minutes on a CPU and a step costs hundreds of op calls.
    calls = []

    def record_call(w, dtype, device, impls, *, warmup, repeat, **kwargs):
        calls.append((w.op, list(impls), warmup, repeat))
        return []

    monkeypatch.setattr(runner, "benchmark_workload", record_call)
    gen = torch.Generator().manual_seed(0)
    cases = [
        lambda: workloads.op_workload(workloads.OPS["gsm"], workloads.Shape(1, 2, 4, 3, 3), gen),
        lambda: workloads.network_workload("resnet50-tsm", clips=1, frames=2, gen=gen, size=32),
    ]
    kwargs = dict(warmup=4, repeat=12, bandwidth=1e10, gen=gen, progress=False)
    runner.benchmark_all(cases, torch.float32, torch.device("cpu"), ["eager", "compile", "fused"], **kwargs)
    assert calls == [("gsm", ["eager", "compile", "fused"], 4, 12), ("resnet50-tsm", ["eager", "fused"], 2, 6)]
    calls.clear()
    runner.benchmark_all(
        cases[1:], torch.float32, torch.device("cpu"), ["eager", "compile"], compile_model=True, **kwargs
    )
    assert calls == [("resnet50-tsm", ["eager", "compile"], 2, 6)]


def test_network_weights_keep_float32_close_to_float64():
    # Random BatchNorm statistics would make a 50-layer network chaotic; the workload's
    # are measured, so the float32 published network is close to its float64 run and the
    # fused network's error is that of float32.
    gen = torch.Generator().manual_seed(1)
    w = workloads.network_workload("resnet50-gsf", clips=1, frames=4, gen=gen, size=64)
    x = torch.randn(w.input_shape, generator=gen)
    with torch.no_grad():
        y32 = w.published.eval()(x)
        y_fused = w.fused.eval()(x)
        y64 = w.published.double()(x.double())
    scale = float(y64.abs().max())
    published_error = float((y32 - y64).abs().max())
    assert published_error < 1e-3 * scale  # with random running statistics: 20% and more
    assert float((y_fused - y64).abs().max()) <= 2 * published_error


def test_time_calls_times_each_call_after_the_warmup():
    calls = []

    def sleep_2ms():
        calls.append(None)
        time.sleep(0.002)

    times = timing.time_calls(sleep_2ms, torch.device("cpu"), warmup=3, repeat=5)
    assert len(calls) == 3 + 5 and len(times.seconds) == 5  # --warmup and --repeat, exactly
    assert 2 <= times.median_ms < 200 and times.iqr_ms >= 0


def test_time_calls_counts_the_page_faults_of_each_call():
    if math.isnan(timing.minor_page_faults()):
        pytest.skip("this OS does not count page faults (getrusage)")
    pages = 256
    # Three warm-up calls and two timed: counting the warm-up, or dividing by the wrong
    # count, gives at least 2.5 x pages a call.
    touching = timing.time_calls(lambda: timing.touch_fresh_pages(pages), torch.device("cpu"), warmup=3, repeat=2)
    idle = timing.time_calls(lambda: None, torch.device("cpu"), warmup=3, repeat=2)
    # Huge pages, where the kernel gives them, fault once per huge page: at least one a call.
    assert 1 <= touching.minor_faults <= 2 * pages
    assert idle.minor_faults < touching.minor_faults


def test_time_interleaved_rotates_the_order_of_each_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.time_interleaved(fns, torch.device("cpu"), warmup=1, repeat=4)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert all(len(t.seconds) == 4 for t in times.values()) and list(times) == list("abc")


def test_call_times_median_and_iqr():
    # The quartiles are statistics' default (exclusive) ones, as in every result so far.
    times = timing.CallTimes((0.004, 0.001, 0.003, 0.002))
    assert times.median_ms == pytest.approx(2.5)
    assert times.iqr_ms == pytest.approx(3.75 - 1.25)


def test_table_names_the_forward_bandwidth_column_unambiguously():
    header = report.format_table([]).splitlines()[0]
    assert "fwd % floor" in header and "fwd bw" not in header


@pytest.mark.parametrize("flag,disable", [(["--no-progress"], True), ([], None)])
def test_progress_bar_is_tqdm_on_stderr_and_off_with_no_progress(flag, disable, monkeypatch, capsys):
    # disable=None is tqdm's "only on a terminal"; --no-progress turns it off outright.
    made = []
    real_tqdm = runner.tqdm

    def recording_tqdm(*args, **kwargs):
        made.append(kwargs)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(runner, "tqdm", recording_tqdm)
    argv = [a for a in TINY if a != "--no-progress"] + flag
    assert cli.main([*argv, "--impls", "fused"]) == 0
    assert len(made) == 1 and made[0]["disable"] is disable and made[0]["file"] is sys.stderr
    assert made[0]["total"] == 1
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar either way


SMALL_RESULTS = {
    "meta": {"command": "gateshift-bench --shape 1,2,8,4,4", "device": "cpu (x86_64, 2 threads)", "dtype": "float32",
             "repeat": 5},
    "records": [
        {"op": "gsm", "impl": "eager", "shape": "1x2x8x4x4", "label": "custom", "fwd_bwd_ms": 6.0, "saved_ratio": 2.0},
        {"op": "gsm", "impl": "fused", "shape": "1x2x8x4x4", "label": "custom", "fwd_bwd_ms": 0.5, "saved_ratio": 1.25},
        {"op": "resnet50-gsf", "impl": "eager", "shape": "1x2x3x32x32", "label": "", "fwd_bwd_ms": 9.0,
         "infer_ms": 3.0, "saved_bytes": 4 * 2**20, "saved_ratio": math.nan, "temporal_share": 0.5},
        {"op": "resnet50-gsf", "impl": "fused", "shape": "1x2x3x32x32", "label": "", "fwd_bwd_ms": 4.5,
         "infer_ms": 2.0, "saved_bytes": 3 * 2**20, "saved_ratio": math.nan, "temporal_share": 0.2},
        {"op": "resnet50-gsf", "impl": "baseline", "shape": "1x2x3x32x32", "label": "", "fwd_bwd_ms": 3.6,
         "infer_ms": 1.5, "saved_bytes": 2 * 2**20, "saved_ratio": math.nan, "temporal_share": math.nan},
    ],
}


def test_markdown_summary_rows(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_RESULTS))
    assert report.markdown_summary([str(path)]).splitlines() == [
        "`gateshift-bench --shape 1,2,8,4,4` (cpu (x86_64, 2 threads), float32, medians of 5):",
        "",
        "| op | where | B x T x C x H x W | eager ms | compile ms | fused ms | x eager | x compile "
        "| saved/x eager | saved/x fused |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| gsm | custom | 1x2x8x4x4 | 6.00 | - | 0.50 | 12.0 | - | 2.00 | 1.25 |",
        "",
        "| network | clips x T x 3 x H x W | step ms, published | step ms, fused | x | inference ms, published "
        "| inference ms, fused | x | saved MB, published | saved MB, fused | temporal share of step, published "
        "| temporal share of step, fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| resnet50-gsf | 1x2x3x32x32 | 9 | 4 | 2.00 | 3 | 2 | 1.50 | 4 | 3 | 50% | 20% |",
    ]


def test_summarize_script_prints_the_report_summary(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_RESULTS))
    paths = [str(path), str(ROOT / "benchmarks/results/cpu-quick.json")]
    script = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/summarize.py"), *paths], capture_output=True, text=True, check=True
    )
    assert script.stdout == report.markdown_summary(paths) + "\n"


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "gateshift.bench", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "gateshift-bench" in result.stdout and "--no-progress" in result.stdout


def test_plot_and_profile(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the `plot` extra) is not installed")
    png, traces = tmp_path / "bench.png", tmp_path / "traces"
    assert cli.main([*TINY, "--impls", "eager,fused", "--plot", str(png), "--profile", str(traces)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = sorted(p.name for p in traces.iterdir())
    assert len(written) == 2 and all(name.endswith(".pt.trace.json") for name in written)
    trace = json.loads((traces / written[0]).read_text())
    assert any("gate_shift" in e.get("name", "") or "aten::" in e.get("name", "") for e in trace["traceEvents"])


def test_check_command_passes_and_reports(capsys):
    assert check.main(["--quick", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "parity grad weight" in out and "gradcheck" in out and " 0 failed" in out


def test_check_command_fails_on_a_wrong_kernel(monkeypatch, capsys):
    # A fused op that gets the shift direction wrong must fail the check.
    import gateshift

    right = gateshift.gate_shift

    def wrong(x, weight, bias=None, **kwargs):  # shifts backwards in time
        return right(x.flip(0), weight, bias, **kwargs).flip(0)

    monkeypatch.setattr(gateshift, "gate_shift", wrong)
    assert check.main(["--quick", "--seed", "3"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_first_quick_run_writes_nothing_to_stderr():
    # What a new user runs first: no warnings (numpy is a dependency; nothing imports the
    # extension-building helpers' CUDA note), only the table on stdout.
    result = subprocess.run(
        [sys.executable, "-m", "gateshift.bench", "--quick", "--repeat", "2", "--warmup", "1", "--no-progress"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert "bninception-gsm" in result.stdout and "fused" in result.stdout


def test_roofline_reports_the_useful_flop_rate_against_sgemm(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    assert cli.main([*TINY, "--impls", "eager,fused", "--roofline", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "fwd % sgemm" in table and "fwd+bwd % sgemm" in table and "infer % sgemm" in table
    assert "sgemm" in table.splitlines()[1]
    data = json.loads(out_json.read_text())
    fused = data["records"][1]
    # Each case against the rate measured just before it; the run's median in the meta.
    rate = fused["matmul_gflops"] * 1e9
    assert rate > 0 and data["records"][0]["matmul_gflops"] == fused["matmul_gflops"]
    assert data["meta"]["matmul_GFLOPs"] == fused["matmul_gflops"] == data["meta"]["matmul_GFLOPs_range"][0]
    assert "sgemm GFLOP/s" in table and "# sgemm before each case:" in table
    numel = 1 * 3 * 8 * 5 * 6
    assert fused["matmul_frac"] == pytest.approx(54 * numel / (fused["fwd_ms"] / 1e3) / rate)
    assert fused["matmul_frac_fwd_bwd"] == pytest.approx(162 * numel / (fused["fwd_bwd_ms"] / 1e3) / rate)
    assert fused["matmul_frac_infer"] == pytest.approx(54 * numel / (fused["infer_ms"] / 1e3) / rate)
    if data["records"][0]["device"].startswith("cpu") and not math.isnan(timing.minor_page_faults()):
        assert "faults/step" in table
        assert all(r["fwd_bwd_faults"] >= 0 for r in data["records"])


def test_roofline_measures_sgemm_before_each_case(monkeypatch, tmp_path):
    # A drifting machine: each case's fractions use the rate measured just before it.
    rates = iter([100e9, 300e9])
    monkeypatch.setattr(runner, "measure_matmul_rate", lambda device: next(rates))
    out_json = tmp_path / "r.json"
    argv = ["--shape", "1,3,8,5,6", "--shape", "1,3,8,4,4", "--ops", "gsm,tsm", "--impls", "fused", "--repeat", "2",
            "--warmup", "1", "--network", "none", "--no-progress", "--roofline", "--json", str(out_json)]
    assert cli.main(argv) == 0
    data = json.loads(out_json.read_text())
    first, second, *shifts = data["records"]
    # The shift has no useful FLOP to count (no sgemm measured for it), but its page faults.
    assert [r["op"] for r in shifts] == ["tsm", "tsm"] and all(r["matmul_gflops"] is None for r in shifts)
    if not math.isnan(timing.minor_page_faults()):
        assert all(r["fwd_bwd_faults"] >= 0 for r in data["records"])
    assert (first["matmul_gflops"], second["matmul_gflops"]) == (100, 300)
    assert first["matmul_frac"] == pytest.approx(54 * 720 / (first["fwd_ms"] / 1e3) / 100e9)
    assert second["matmul_frac"] == pytest.approx(54 * 384 / (second["fwd_ms"] / 1e3) / 300e9)
    assert data["meta"]["matmul_GFLOPs"] == 200 and data["meta"]["matmul_GFLOPs_range"] == [100, 300]


def test_op_alone_from_the_command_line(tmp_path, capsys):
    # As the README runs it: the op alone beside each module, TSM left with the module only.
    out_json = tmp_path / "r.json"
    argv = ["--shape", "1,3,8,5,6", "--ops", "gsm,gsf,tsm", "--impls", "fused,op", "--repeat", "2", "--warmup", "1",
            "--network", "none", "--no-progress", "--json", str(out_json)]
    assert cli.main(argv) == 0
    records = json.loads(out_json.read_text())["records"]
    assert [(r["op"], r["impl"]) for r in records] == [
        ("gsm", "fused"), ("gsm", "op"), ("gsf", "fused"), ("gsf", "op"), ("tsm", "fused")]
    assert all(r["max_abs_err"] < 1e-4 for r in records)
    assert " op " in capsys.readouterr().out


def test_columns_nothing_measured_are_left_out(capsys):
    assert cli.main([*TINY, "--impls", "fused"]) == 0
    header = capsys.readouterr().out.splitlines()[2]
    assert "fwd ms" in header and "sgemm" not in header and "temporal" not in header


def test_channels_last_runs_every_implementation_on_channels_last_activations(tmp_path, monkeypatch):
    # --channels-last: the input and output gradient (and a network's weights) in
    # channels_last, and every implementation still computes the reference output.
    seen = []
    original = runner.benchmark_workload

    def spy(w, *args, memory_format=torch.contiguous_format, **kwargs):
        seen.append(memory_format)
        return original(w, *args, memory_format=memory_format, **kwargs)

    monkeypatch.setattr(runner, "benchmark_workload", spy)
    out_json = tmp_path / "r.json"
    assert cli.main([*TINY, "--impls", "eager,fused", "--channels-last", "--json", str(out_json)]) == 0
    assert seen == [torch.channels_last]
    data = json.loads(out_json.read_text(), parse_constant=refuse_non_json)
    assert data["meta"]["memory_format"] == "channels_last"
    assert all(r["max_abs_err"] < 1e-4 for r in data["records"])
    assert "float32, channels_last, medians of 2" in report.markdown_summary([str(out_json)]).splitlines()[0]
