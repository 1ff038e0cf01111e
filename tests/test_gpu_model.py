"""The GPU cost model (gateshift.testing.gpu_model): its occupancy and time arithmetic,
its kernel names against the built cubins' register table, and a whole run."""

from __future__ import annotations

import json

import pytest
import torch

from gateshift.testing import cases, cuda_emulator, gpu_model

H100 = gpu_model.GPUS["h100"]


@pytest.mark.parametrize("regs,threads,shared,expected", [
    (128, 256, 0, 2),         # the gate-shift kernels' design point: 2 x 256 x 128 = 65536 registers
    (64, 256, 0, 4),
    (32, 256, 0, 8),          # then threads: 2048 per SM
    (40, 256, 0, 6),          # 40 registers round to 40 x 32 = 1280 per warp, 10240 per block
    (32, 256, 100 * 1024, 2),  # then shared memory (228 KB per SM, 1 KB per block reserved)
    (255, 1024, 0, 0),        # cannot run at all
])
def test_resident_blocks_follow_the_occupancy_rules(regs, threads, shared, expected):
    assert gpu_model.resident_blocks(H100, regs, threads, shared) == expected


def _launch(**counts):
    launch = dict(kernel="k<float>", blocks=H100.sms * 2, threads=256, shared_bytes=0, barriers=0, shuffles=0,
                  sampled_blocks=4, global_requests=0, global_sectors=0, unique_global_bytes=0, shared_requests=0,
                  shared_wavefronts=0, reuse_log2_bytes=[0] * 48)
    launch.update(counts)
    # Blocks that touch no sector another block touches: the sample's bytes, scaled.
    launch.setdefault("grid_unique_global_bytes",
                      round(launch["unique_global_bytes"] * launch["blocks"] / launch["sampled_blocks"]))
    return launch


def test_a_streaming_launch_is_dram_bound_at_the_datasheet_bandwidth():
    # 4 sampled blocks of 264, each touching 1 MB once: 264 MB at 3.35 TB/s.
    m = gpu_model.model_launch(H100, _launch(global_sectors=4 * 2**20 // 32, unique_global_bytes=4 * 2**20), 128)
    assert m["bound"] == "dram" and m["waves"] == 1
    assert m["modeled_us"] == pytest.approx(264 * 2**20 / H100.dram_bytes_per_s * 1e6, rel=1e-3)


def _reread(bucket):
    # Each of the 4 sampled blocks touches 128 KB (4096 sectors) and re-requests it 9
    # times, at a reuse distance in the given log2 bucket.
    reuse = [0] * 48
    reuse[bucket] = 9 * 4 * 2**12
    return gpu_model.model_launch(
        H100, _launch(global_sectors=40 * 2**12, unique_global_bytes=4 * 2**17, reuse_log2_bytes=reuse), 128)


def test_re_reads_hit_l1_then_l2_as_far_as_the_blocks_sharing_each_let_them():
    unique = 264 * 2**17
    # [64, 128) KB: the SM's 2 resident blocks span at most 256 KB - 2 KB of L1: hits.
    near = _reread(17)
    assert near["dram_bytes"] == near["l2_bytes"] == unique
    # [128, 256) KB: not in L1, but 264 blocks span 33-66 MB: from the 50 MB L2.
    mid = _reread(18)
    assert mid["dram_bytes"] == unique and mid["l2_bytes"] == 10 * unique
    # [256, 512) KB: 264 blocks span 66 MB or more: every re-request misses both.
    far = _reread(19)
    assert far["dram_bytes"] == far["l2_bytes"] == 10 * unique


def test_a_partial_last_wave_costs_a_whole_wave_and_shared_time_counts_the_busiest_sm():
    full = gpu_model.model_launch(H100, _launch(blocks=264, unique_global_bytes=2**20, global_sectors=2**15), 128)
    tail = gpu_model.model_launch(H100, _launch(blocks=265, unique_global_bytes=2**20, global_sectors=2**15), 128)
    assert (full["waves"], tail["waves"]) == (1, 2)
    assert tail["limits_us"]["dram"] == pytest.approx(full["limits_us"]["dram"] * 2, rel=0.01)
    # 3 blocks on the busiest SM, 1000 wavefronts each, one per clock.
    shared = gpu_model.model_launch(H100, _launch(blocks=265, shared_requests=4000, shared_wavefronts=4000), 128)
    assert shared["limits_us"]["shared"] == pytest.approx(3 * 1000 / H100.clock_hz * 1e6, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_emulated_kernel_has_registers_for_every_modeled_gpu(dtype, gen):
    x = torch.randn(2, 3, 8, 9, 10, generator=gen).to(dtype)
    w, b = torch.randn(2, 4, 3, 3, 3, generator=gen).to(dtype), torch.randn(2, generator=gen).to(dtype)
    fw, fb = torch.randn(2, 2, 3, 3, generator=gen).to(dtype), torch.randn(2, generator=gen).to(dtype)
    scale, shift = torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)
    ops = cuda_emulator.ops
    with cuda_emulator.record_launches() as launches:
        ops.batch_stats(x, 8)
        out, gates = ops.gate_shift_forward(x, w, b, scale, shift, 8, True)
        ops.gate_shift_backward(x, x, gates, w, scale, shift, 8, True)
        out, gates, fusion = ops.gate_shift_fuse_forward(x, w, b, scale, shift, fw, fb, 8, True)
        ops.gate_shift_fuse_backward(x, x, gates, fusion, w, scale, shift, fw, 8, True)
        ops.temporal_shift(x, 1, False)
    names = {r["kernel"] for r in launches}
    assert len(names) == 11
    for gpu in gpu_model.GPUS.values():
        table = gpu_model.registers(gpu)
        for name in names:
            assert gpu_model.kernel_key(name) in table, (gpu.arch, name)


def test_the_grids_bytes_count_a_tensor_once_when_blocks_also_read_their_neighbours_data(gen):
    # GSF's forward on 4 clips of 8 frames, 4 of each launch's blocks sampled. The gate
    # kernel's blocks read their tiles' halos and the frames around their runs; the
    # combine kernel's threads read their element's frame and the neighbouring one.
    # Scaled to the grid, the sample's distinct sectors count those tensors up to twice;
    # the grid's estimate counts each at most once: x (read), and the outputs, the gates
    # and the small tables the kernel touches.
    B, T, C, H, W = 4, 8, 16, 16, 16
    x = torch.randn(B, T, C, H, W, generator=gen)
    w, b = torch.randn(2, C // 2, 3, 3, 3, generator=gen), torch.randn(2, generator=gen)
    fw, fb = torch.randn(2, 2, 3, 3, generator=gen), torch.randn(2, generator=gen)
    scale, shift = torch.rand(C, generator=gen) + 0.5, torch.randn(C, generator=gen)
    with cuda_emulator.record_launches(count_accesses=True, sample_blocks=4) as launches:
        cuda_emulator.ops.gate_shift_fuse_forward(x, w, b, scale, shift, fw, fb, C, True)
    x_bytes = x.numel() * 4
    gates = B * T * 2 * H * W * 4
    tables = B * T * 3 * C * 4 + B * T * 4 * 2 * C * 4  # the fusion table; the 4 tiles' sums
    by_kernel = {r["kernel"].split("<")[0]: r for r in launches}
    for kernel, outputs in [("gate_shift_forward_kernel", 0), ("fuse_combine_kernel", x_bytes)]:
        r = by_kernel[kernel]
        scaled = r["unique_global_bytes"] * r["blocks"] / r["sampled_blocks"]
        assert x_bytes + outputs <= r["grid_unique_global_bytes"] <= x_bytes + outputs + gates + tables, r
        assert scaled > 1.05 * r["grid_unique_global_bytes"], r
    # Without a sample the estimate is the count itself.
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops.gate_shift_fuse_forward(x, w, b, scale, shift, fw, fb, C, True)
    assert all(r["grid_unique_global_bytes"] == r["unique_global_bytes"] for r in launches)


def test_a_whole_run_writes_labelled_records_with_floors_and_ratios(tmp_path, capsys):
    out = tmp_path / "model.json"
    records = gpu_model.main(["--gpu", "a100", "--shape", "2,4,16,12,12", "--dtype", "bfloat16", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "MODEL" in printed and "not a measurement" in printed
    saved = json.loads(out.read_text())
    assert "not a measurement" in saved["model"] and saved["records"] == records
    seen = {(r["op"], r["case"], r["direction"]) for r in records}
    assert seen == {(op, case, d) for op, case in cases.FLOOR_BYTES for d in ("forward", "backward")}
    numel = 2 * 4 * 16 * 12 * 12
    for r in records:
        assert r["shape"] == [2, 4, 16, 12, 12] and r["dtype"] == "bfloat16"
        floor = cases.FLOOR_BYTES[(r["op"], r["case"])][r["direction"] == "backward"] / 2 * numel
        assert r["floor_us"] == pytest.approx(floor / gpu_model.GPUS["a100"].dram_bytes_per_s * 1e6, abs=1e-3)
        assert r["modeled_us"] == pytest.approx(sum(m["modeled_us"] for m in r["launches"]), abs=1e-2)
        assert r["ratio"] == pytest.approx(r["modeled_us"] / r["floor_us"], rel=1e-2)
        for m in r["launches"]:  # the sample's counts, and the grid's bytes scaled from them
            assert m["unique_global_bytes"] > 0 and m["global_sectors"] > 0, m
            assert m["unique_bytes"] >= m["unique_global_bytes"] and m["l2_bytes"] >= m["unique_bytes"], m
    # A model cannot beat the bytes it must move: every ratio is at least ~1.
    assert min(r["ratio"] for r in records) > 0.9


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        gpu_model.main(["--ops", "gsm,nope", "--shape", "1,2,4,8,8"])
    with pytest.raises(SystemExit):
        gpu_model.main(["--gpu", "v100"])
    with pytest.raises(ValueError, match="unexpected kernel name"):
        gpu_model.kernel_key("not a kernel")
