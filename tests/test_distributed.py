"""DistributedDataParallel across two CPU processes (gloo): the fused modules train as any
autograd module does there, and their BatchNorm statistics behave as BatchNorm3d's
(per process) or SyncBatchNorm's (over the process group) do."""

from __future__ import annotations

import faulthandler
import os
import random

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gateshift
from gateshift import reference

WORLD_SIZE = 2
SEGMENTS = 4
CLIPS_PER_PROCESS = 2
STEPS = 3
# Clips per process of each combined batch, for the SyncBatchNorm runs.
SYNC_BN_SPLITS = {"sync_bn_even": (2, 2), "sync_bn_uneven": (1, 3), "sync_bn_empty": (0, 4)}


class SmallVideoNet(nn.Module):
    """Stem, a GSM, a GSF and a linear head with TSN's average of frame scores."""

    def __init__(self, published: bool):
        super().__init__()
        modules = reference if published else gateshift
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gsm = modules.GSM(16, SEGMENTS)
        self.gsf = modules.GSF(16, SEGMENTS)
        self.head = nn.Linear(16, 5)

    def forward(self, clips):
        x = self.gsf(self.gsm(self.stem(clips).relu()))
        scores = self.head(x.mean(dim=(2, 3)))
        return scores.unflatten(0, (-1, SEGMENTS)).mean(dim=1)


def make_model(published: bool, seed: int) -> nn.Module:
    """The same random float64 model on every process (conv3D is random, not the
    published zero initialisation, so the gates and their gradients are not trivial)."""
    model = SmallVideoNet(published).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model


def batches(seed: int, clips: int):
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(STEPS):
        x = torch.randn(clips * SEGMENTS, 3, 6, 6, generator=gen, dtype=torch.float64)
        yield x, torch.randint(0, 5, (clips,), generator=gen)


def frozen_batch_norm(model: nn.Module) -> nn.Module:
    """Training mode, but every BatchNorm normalises with its running statistics (as when
    fine-tuning with frozen BN): then no statistic depends on how the batch is split."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def train(model: nn.Module, seed: int, rank: int = 0, split: tuple[int, ...] = (), average_gradients: bool = False) -> None:
    """STEPS of SGD on combined batches of CLIPS_PER_PROCESS * WORLD_SIZE clips; process
    ``rank`` takes ``split[rank]`` of each batch's clips (``split`` empty: one process takes
    all). The loss is scaled so that averaging the processes' gradients, as DDP does, gives
    the gradient of the combined batch's mean loss, however unevenly the clips are split.
    ``average_gradients``: all-reduce the gradients by hand, as DDP would."""
    total = CLIPS_PER_PROCESS * WORLD_SIZE
    split = split or (total,)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, labels in batches(seed, total):
        start = sum(split[:rank])
        clips = slice(start, start + split[rank])
        frames = slice(clips.start * SEGMENTS, clips.stop * SEGMENTS)
        scores = model(x[frames])
        loss = nn.functional.cross_entropy(scores, labels[clips], reduction="sum") * (len(split) / total)
        optimizer.zero_grad()
        loss.backward()
        if average_gradients:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= len(split)
        optimizer.step()


def worker(rank: int, init_file: str, out_dir: str, seed: int) -> None:
    faulthandler.enable(all_threads=True)  # a native abort in a worker prints its Python stacks
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        even = (CLIPS_PER_PROCESS,) * WORLD_SIZE
        runs = {
            "fused_frozen_bn": lambda: frozen_batch_norm(make_model(False, seed)),
            "fused": lambda: make_model(False, seed),
            "published": lambda: make_model(True, seed),
        }
        for name, make in runs.items():
            model = make()
            train(DistributedDataParallel(model), seed, rank, even)
            if rank == 0:
                torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pt"))
        # DDP refuses SyncBatchNorm in CPU modules (a check for GPUs only), so these runs
        # average the gradients as DDP does, by hand; on an even, an uneven and an empty split.
        for name, split in SYNC_BN_SPLITS.items():
            model = nn.SyncBatchNorm.convert_sync_batchnorm(make_model(False, seed))
            train(model, seed, rank, split, average_gradients=True)
            if rank == 0:
                torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pt"))
        # Both processes are past their last collective before either tears down its
        # connections (gloo aborts a process whose peer closes mid-operation).
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: about one run in thirty under pytest, a
    # worker that had finished and saved everything aborted at exit ("terminate called
    # without an active exception", no Python frame left: a joinable std::thread among
    # torch's static objects; gateshift's kernels start no threads of their own).
    os._exit(0)


def assert_same_state(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}, {key}: {m}")


def test_ddp_on_two_processes_matches_single_process_training(tmp_path):
    seed = random.SystemRandom().randrange(2**31)
    print(f"seed {seed}")
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), seed), nprocs=WORLD_SIZE, join=True)
    names = ("fused_frozen_bn", "fused", "published", *SYNC_BN_SPLITS)
    ddp = {name: torch.load(tmp_path / f"{name}.pt") for name in names}

    # Frozen BatchNorm (running statistics): DDP on two processes with half batches trains
    # exactly as one process on the combined batch.
    single = frozen_batch_norm(make_model(False, seed))
    train(single, seed)
    assert_same_state(ddp["fused_frozen_bn"], single.state_dict(), "DDP, frozen BN, vs one process")

    # With SyncBatchNorm, BN normalises over both processes' clips: two processes train
    # exactly as one process on the combined batch (parameters and running statistics),
    # however the clips are split, a process with none included.
    single = make_model(False, seed)
    train(single, seed)
    for name in SYNC_BN_SPLITS:
        assert_same_state(ddp[name], single.state_dict(), f"{name} vs one process")

    # With BatchNorm3d, each process normalises its own clips, for the fused module as for
    # the published one: the DDP runs agree with each other ...
    assert_same_state(ddp["fused"], ddp["published"], "DDP, fused vs published module")
    # ... and differ from one process on the combined batch (so the check above has teeth).
    differs = [
        key for key, value in single.state_dict().items()
        if value.is_floating_point() and not torch.allclose(ddp["fused"][key], value, rtol=1e-6, atol=1e-8)
    ]
    assert differs, "per-process BatchNorm statistics should have changed the training"
