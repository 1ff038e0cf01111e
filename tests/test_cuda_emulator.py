"""The CPU execution emulator of the CUDA kernels itself (gateshift.testing.cuda_emulator):
its library mirrors the real one, its launch-configuration knob behaves, and its outputs
sit inside the poisoned guard margins that make stray writes and unwritten elements show.
What the emulated kernels compute is tested with every op's other implementations, in
the op's own file (its "cuda_emulator" parameter)."""

from __future__ import annotations

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
