"""The CPU execution emulator of the CUDA kernels itself (gateshift.testing.cuda_emulator):
its library mirrors the real one, its launch-configuration knob behaves, its outputs sit
inside the poisoned guard margins that make stray writes and unwritten elements show, every
op gives the same bits whatever the order of its blocks, and each of its checks (barriers
from two call sites, shared memory out of bounds or over the architecture's limit, input
alignment) fails on deliberately broken device code.
What the emulated kernels compute is tested with every op's other implementations, in
the op's own file (its "cuda_emulator" parameter)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import RAW_ARGUMENTS, call_raw, raw_arguments

from gateshift.testing import cuda_emulator
from gateshift.testing.implementations import implementation


def test_set_num_sms_validates():
    with pytest.raises(ValueError, match="num_sms must be positive"):
        cuda_emulator.set_num_sms(0)


def test_num_sms_is_restored_after_the_block_even_on_error():
    before = cuda_emulator.set_num_sms(7)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with cuda_emulator.num_sms(64):
                assert cuda_emulator.set_num_sms(64) == 64  # set_num_sms returns the previous count
                raise RuntimeError("inside")
        assert cuda_emulator.set_num_sms(7) == 7
    finally:
        cuda_emulator.set_num_sms(before)


@pytest.mark.parametrize("op", RAW_ARGUMENTS)
def test_emulated_ops_have_the_real_ops_schemas_and_fake_kernels(op, gen):
    # One test body serves both libraries only if the emulated ops are called exactly as
    # the real ones and trace the same under torch.compile.
    real, emulated = implementation("cpu"), implementation("cuda_emulator")
    real_schema = getattr(real.ops, op).default._schema
    emulated_schema = getattr(emulated.ops, op).default._schema
    assert str(emulated_schema).replace("gateshift_emulated::", "gateshift::") == str(real_schema)
    arguments = raw_arguments(gen)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = {name: mode.from_tensor(a) if torch.is_tensor(a) else a for name, a in arguments.items()}
        outs = [call_raw(impl, op, fake) for impl in (real, emulated)]
    for a, b in zip(*(out if isinstance(out, tuple) else (out,) for out in outs)):
        assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype)


@pytest.mark.parametrize("op", ["temporal_shift", "batch_stats_backward"])
def test_outputs_sit_inside_poisoned_guard_margins(op, gen):
    # Every output is a view into a larger buffer filled with 0xFF bytes (NaN in every
    # float dtype): an element a kernel never writes stays NaN, and a write past the view
    # changes a margin, which the emulator checks after each launch.
    out = call_raw(implementation("cuda_emulator"), op, raw_arguments(gen))
    raw = torch.empty(0, dtype=torch.uint8).set_(out.untyped_storage())
    start = out.storage_offset() * out.element_size()
    end = start + out.numel() * out.element_size()  # outputs of these ops are dense
    assert out.is_contiguous()
    assert start >= 1024 and raw.numel() - end >= 1024, "guard margins of at least 1 KiB each side"
    assert torch.all(raw[:start] == 0xFF) and torch.all(raw[end:] == 0xFF)
    assert not torch.isnan(out).any()  # and the view itself was written everywhere


# ---------------------------------------------------------------------------
# Block schedules: a kernel's bits must not depend on the order of its blocks
# ---------------------------------------------------------------------------


def _outputs(op, arguments):
    out = call_raw(implementation("cuda_emulator"), op, arguments)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("op", RAW_ARGUMENTS)
@pytest.mark.parametrize("schedule,seed", [("shuffled", 1), ("concurrent", 2), ("concurrent", 3)])
def test_every_op_gives_the_same_bits_in_any_block_order(op, schedule, seed, gen):
    # Many SMs and small partials: the launches cut the clips into several blocks each.
    arguments = raw_arguments(gen)
    with cuda_emulator.num_sms(16), cuda_emulator.min_partials_bytes(0):
        expected = _outputs(op, arguments)
        with cuda_emulator.block_schedule(schedule, seed):
            actual = _outputs(op, arguments)
    for a, e in zip(actual, expected):
        assert not torch.isnan(e).any()
        assert torch.equal(a, e), f"{op}: results depend on the order of the blocks ({schedule}, seed {seed})"


def test_block_schedule_validates_and_is_restored():
    with pytest.raises(ValueError, match="schedule must be one of"):
        with cuda_emulator.block_schedule("backwards"):
            pass
    with cuda_emulator.block_schedule("concurrent", 5):
        assert cuda_emulator.ops.set_block_schedule(2, 5) == 2  # returns the schedule in force
    assert cuda_emulator.ops.set_block_schedule(0, 0) == 0  # in grid order again


# ---------------------------------------------------------------------------
# The emulator's checks, each shown to fail on deliberately broken device code
# (csrc/emulator/runtime_selftest.cpp)
# ---------------------------------------------------------------------------


def test_barriers_met_at_one_call_site_pass():
    assert cuda_emulator.ops._runtime_selftest("syncthreads_one_site") == 0


@pytest.mark.parametrize("case, what", [("syncthreads_two_sites", "__syncthreads"), ("shuffle_two_sites", "shuffle")])
def test_barriers_and_shuffles_met_from_two_call_sites_are_errors(case, what):
    with pytest.raises(RuntimeError, match=rf"threads met at .*{what}.* from two call sites, .*runtime_selftest\.cpp:\d+ and "):
        cuda_emulator.ops._runtime_selftest(case)


@pytest.mark.parametrize("case", ["shared_write_past_end", "shared_write_before_start"])
def test_writes_outside_shared_memory_are_errors(case):
    with pytest.raises(RuntimeError, match="wrote outside its 128 bytes of dynamic shared memory"):
        cuda_emulator.ops._runtime_selftest(case)


def test_reads_past_shared_memory_give_nan():
    assert math.isnan(cuda_emulator.ops._runtime_selftest("shared_read_past_end"))


@pytest.mark.parametrize(
    "sm, opt_in, bytes, fits",
    [
        (86, False, 48 * 1024, True),
        (86, False, 48 * 1024 + 1, False),
        (86, True, 99 * 1024, True),
        (86, True, 99 * 1024 + 1, False),
        (89, True, 99 * 1024 + 1, False),
        (80, True, 163 * 1024, True),
        (80, True, 163 * 1024 + 1, False),
        (90, True, 227 * 1024, True),
        (90, True, 227 * 1024 + 1, False),
    ],
)
def test_shared_memory_requests_are_checked_against_the_architecture(sm, opt_in, bytes, fits):
    with cuda_emulator.architecture(sm):
        if fits:
            cuda_emulator.ops._check_shared_request(bytes, opt_in)
        else:
            limit = f"the opt-in maximum of sm_{sm}" if opt_in else "the limit without opt-in"
            with pytest.raises(ValueError, match=f"asks for {bytes} bytes .* \\({limit}\\)"):
                cuda_emulator.ops._check_shared_request(bytes, opt_in)


def test_unknown_architectures_are_errors():
    with pytest.raises(ValueError, match="unknown architecture sm_75"):
        with cuda_emulator.architecture(75):
            pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_inputs_keep_their_storage_offset_modulo_256_bytes(dtype, gen):
    # A GPU allocation starts at a multiple of 256 bytes, so a slice's storage offset
    # decides its alignment there; the emulator's guarded copy must sit as far past a
    # multiple of 256 for the kernels.
    base = torch.randn(4096, generator=gen).to(dtype)
    for offset in range(0, 40, 3):
        view = base[offset:]
        assert cuda_emulator.ops._input_alignment(view) == offset * view.element_size() % 256


@pytest.mark.parametrize("schedule", ["in_order", "shuffled", "concurrent"])
def test_block_schedules_change_the_order_and_the_overlap_of_blocks(schedule):
    blocks = 16
    with cuda_emulator.block_schedule(schedule, seed=7):
        *order, most_at_once = cuda_emulator.ops._block_order(blocks)
    assert sorted(order) == list(range(blocks))
    assert (order == list(range(blocks))) == (schedule == "in_order")  # 1 / 16! odds of a shuffled identity
    assert most_at_once == (2 if schedule == "concurrent" else 1)


# ---------------------------------------------------------------------------
# Launch records: the grids the launch code chose, and what the threads met
# ---------------------------------------------------------------------------


def test_launch_records_give_each_kernels_grid_barriers_and_shuffles(gen):
    B, T, C, H, W = 2, 3, 8, 9, 10
    P, half = C, C // 2

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    x, weight, fuse_weight, fuse_bias = leaf(B * T, C, H, W), leaf(2, half, 3, 3, 3), leaf(2, 2, 3, 3), leaf(2)
    with cuda_emulator.num_sms(4), cuda_emulator.record_launches() as gsm:
        cuda_emulator.gate_shift(x, weight, num_segments=T).sum().backward()
    with cuda_emulator.record_launches() as gsf:
        cuda_emulator.gate_shift_fuse(x, weight, None, fuse_weight, fuse_bias, num_segments=T).sum().backward()
    with cuda_emulator.record_launches() as others:
        cuda_emulator.temporal_shift(x.detach(), num_segments=T)
        cuda_emulator.ops.batch_stats(torch.randn(2, 3, 4, 50, 50, generator=gen), 4)
    cuda_emulator.temporal_shift(x.detach(), num_segments=T)  # after the block: not recorded

    assert [r["kernel"] for r in gsm] == [
        "gate_shift_forward_kernel<double, false>", "gate_shift_backward_kernel<double>",
        "sum_partials_kernel<double, double>"]
    assert all(r["threads"] == 256 and r["barriers"] > 0 for r in gsm)
    partials = 29 * P + 2  # a column per parameter gradient (common/layout.h)
    assert gsm[2]["blocks"] == -(-partials // 32) and gsm[2]["barriers"] == gsm[2]["blocks"]
    assert gsm[2]["shuffles"] == 0

    by_name = {r["kernel"].split("<")[0]: r for r in gsf}
    assert by_name["sum_partials_kernel"]["blocks"] == -(-(partials + 38) // 32)  # and GSF's 38 parameters
    # A block per clip and group; fuse_weights: two barriers per frame (half <= 32
    # channels: one row of 32) and one more; fuse_backward: a warp per fusion
    # parameter of the group (19), each summed by a 5-step shuffle tree.
    assert by_name["fuse_weights_kernel"]["blocks"] == 2 * B
    assert by_name["fuse_weights_kernel"]["barriers"] == 2 * B * (2 * T + 1)
    assert by_name["fuse_backward_kernel"]["shuffles"] == 2 * B * 19 * 5
    # A warp per gated plane, 5 shuffles each.
    assert by_name["fuse_gradient_kernel"]["shuffles"] == B * T * P * 5

    assert [r["kernel"] for r in others] == [
        "temporal_shift_kernel<double>", "batch_stats_partials_kernel<float>", "batch_stats_finish_kernel<float>"]
    assert others[0]["blocks"] == -(-(B * T * C) // 8)  # a warp per plane, 8 warps a block
    runs = -(-2 * 3 * 50 * 50 // 8192)  # runs of 8,192 elements per channel
    assert (others[1]["blocks"], others[2]["blocks"]) == (4 * runs, 4)
    assert others[1]["shared_bytes"] == 2 * 256 * 8


@pytest.mark.parametrize(
    "num_sms,size,clips,runs",
    [
        # 14x14 planes (4 tiles): 8 blocks a run of frames, 18 block slots. Two runs of
        # 4 frames fill one wave; three (the "two blocks per SM" rule this replaced)
        # take two waves and restage more frames around the cuts.
        (9, 14, 2, 2),
        (16, 7, 1, 8),  # one tile of one clip, many SMs: single frames
        (1, 7, 2, 1),  # few SMs: whole clips
    ],
)
def test_clips_are_cut_into_the_runs_of_frames_the_cost_estimate_prefers(num_sms, size, clips, runs, gen):
    T, C = 8, 4
    x = torch.randn(clips * T, C, size, size, generator=gen, dtype=torch.float64)
    weight = torch.randn(2, C // 2, 3, 3, 3, generator=gen, dtype=torch.float64)
    with cuda_emulator.num_sms(num_sms), cuda_emulator.record_launches() as launches:
        cuda_emulator.gate_shift(x, weight, num_segments=T)
    tiles = (-(-size // 8)) ** 2
    assert launches[0]["kernel"].startswith("gate_shift_forward_kernel")
    assert launches[0]["blocks"] == clips * runs * tiles


# ---------------------------------------------------------------------------
# Access counting: requests, sectors and wavefronts as a GPU issues them
# ---------------------------------------------------------------------------


def _wavefronts(stride: int, element_bytes: int, offset_bytes: int = 0) -> int:
    """The shared-memory rule, written out: per phase of 128 bytes' worth of lanes, the
    most distinct 4-byte words that one of the 32 banks must deliver."""
    phase_lanes = 32 // max(1, element_bytes // 4)
    total = 0
    for phase in range(32 // phase_lanes):
        words = {(offset_bytes + lane * stride * element_bytes) // 4 + k
                 for lane in range(phase * phase_lanes, (phase + 1) * phase_lanes) for k in range(element_bytes // 4)}
        total += max(sum(1 for w in words if w % 32 == bank) for bank in range(32))
    return total


@pytest.mark.parametrize("stride,element_bytes,offset,wavefronts", [
    (1, 4, 0, 1), (0, 4, 0, 1), (2, 4, 0, 2), (3, 4, 0, 1), (8, 4, 0, 8), (32, 4, 0, 32), (33, 4, 4, 1),
    (1, 8, 0, 2), (2, 8, 0, 4), (1, 16, 0, 4),
    (0, 16, 0, 4),  # by the rule: each quarter-warp phase is a wavefront, even when all read one element
])
def test_shared_memory_wavefronts_count_bank_conflicts(stride, element_bytes, offset, wavefronts):
    assert _wavefronts(stride, element_bytes, offset) == wavefronts  # the rule, against known cases
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops._access_pattern("shared", stride, element_bytes, offset)
    (r,) = launches
    assert (r["shared_requests"], r["shared_wavefronts"]) == (1, wavefronts)
    assert r["global_requests"] == r["global_sectors"] == r["unique_global_bytes"] == 0


@pytest.mark.parametrize("stride,element_bytes,offset,sectors", [
    (1, 4, 0, 4), (1, 4, 4, 5), (0, 4, 0, 1), (2, 4, 0, 8), (8, 4, 0, 32), (1, 8, 0, 8), (1, 16, 0, 16),
    (2, 16, 0, 32),
])
def test_global_requests_count_32_byte_sectors(stride, element_bytes, offset, sectors):
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops._access_pattern("global", stride, element_bytes, offset)
    (r,) = launches
    assert (r["global_requests"], r["global_sectors"], r["unique_global_bytes"]) == (1, sectors, 32 * sectors)
    assert r["shared_requests"] == 0 and r["sampled_blocks"] == r["blocks"] == 1


@pytest.mark.parametrize("skip_lane,skip_row", [(0, 0), (5, 1), (29, 2), (12, 3)])
def test_lanes_that_skip_an_access_join_the_warps_next_request_at_their_next_address(skip_lane, skip_row):
    # 4 rows of 32 aligned floats, lane l reading element l of each: 4 requests of 4
    # sectors, also when two lanes skip a row (their later reads must not be paired
    # with the other lanes' reads of the row they skipped).
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops._divergent_reads(skip_lane, skip_row)
    (r,) = launches
    assert (r["global_requests"], r["global_sectors"], r["unique_global_bytes"]) == (4, 16, 512)


def test_counting_a_coalesced_kernel_gives_its_exact_traffic(gen):
    # The temporal shift: each lane of a warp takes 32 consecutive elements of one
    # plane (8 x 8: 256 aligned bytes), reads the shifted one unless the shift leaves
    # the clip (zeros: no read) and writes its output. So every request is 4 sectors,
    # and every byte of x that is read and of the output is touched once.
    B, T, C, H, W, fold = 3, 5, 16, 8, 8, 2
    x = torch.randn(B, T, C, H, W, generator=gen)
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops.temporal_shift(x, fold, False)
    (r,) = launches
    zeros = 2 * fold * B * H * W  # per clip, one frame of each shifted fold has no source
    reads, writes = (x.numel() - zeros) // 32, x.numel() // 32
    assert r["global_requests"] == reads + writes
    assert r["global_sectors"] == 4 * (reads + writes)
    assert r["unique_global_bytes"] == 4 * (x.numel() - zeros + x.numel())
    assert r["shared_requests"] == 0
    assert sum(r["reuse_log2_bytes"]) == 0  # nothing is requested twice


def test_reuse_distances_count_the_new_bytes_between_two_requests(gen):
    # GSM's forward reads x for the gates, then again for the output. One clip of one
    # frame and one 8 x 8 tile is one block: every sector the launch requests twice,
    # that block requests twice, at a distance of at most its own distinct bytes.
    x = torch.randn(1, 1, 8, 8, 8, generator=gen)
    w = torch.randn(2, 4, 3, 3, 3, generator=gen)
    with cuda_emulator.record_launches(count_accesses=True) as launches:
        cuda_emulator.ops.gate_shift_forward(x, w, None, None, None, 8, True)
    (r,) = launches
    assert r["blocks"] == 1
    reuse = r["reuse_log2_bytes"]
    first_requests = r["global_sectors"] - sum(reuse)
    assert sum(reuse) > 0 and first_requests * 32 == r["unique_global_bytes"]
    assert max(k for k, n in enumerate(reuse) if n) <= r["unique_global_bytes"].bit_length()


def test_a_sample_of_blocks_runs_in_runs_and_scales_to_the_grid(gen):
    x = torch.randn(4, 8, 32, 16, 16, generator=gen)
    with cuda_emulator.record_launches(count_accesses=True) as full:
        cuda_emulator.ops.temporal_shift(x, 4, True)
    with cuda_emulator.record_launches(count_accesses=True, sample_blocks=8) as sampled:
        out = cuda_emulator.ops.temporal_shift(x, 4, True)
    (f,), (s,) = full, sampled
    assert f["blocks"] == s["blocks"] == 128 and f["sampled_blocks"] == 128 and s["sampled_blocks"] == 8
    for key in ("global_requests", "global_sectors", "unique_global_bytes"):
        assert s[key] * s["blocks"] / s["sampled_blocks"] == pytest.approx(f[key], rel=0.15), key
    assert out.isnan().any()  # the blocks left out wrote nothing: a model's sample, not a result
    with pytest.raises(ValueError, match="sample_blocks"):
        with cuda_emulator.record_launches(sample_blocks=4):
            pass


def test_without_counting_records_carry_no_counts_and_every_block_runs(gen):
    x = torch.randn(2, 4, 8, 5, 5, generator=gen)
    with cuda_emulator.record_launches() as launches:
        out = cuda_emulator.ops.temporal_shift(x, 1, False)
    assert "global_sectors" not in launches[0]
    assert not out.isnan().any()
