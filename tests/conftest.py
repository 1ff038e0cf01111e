"""Fixtures and markers of the gateshift tests (helpers live in helpers.py).

Every test draws fresh random inputs: the generator is seeded from the OS and
the seed is printed, so a failure can be replayed with GATESHIFT_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    # Decided when the tests run, never by a device query at import time.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen(request) -> torch.Generator:
    seed = int(os.environ.get("GATESHIFT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"{request.node.nodeid}: GATESHIFT_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def full_float32_convolutions():
    """cuDNN runs float32 convolutions in TF32 by default on Ampere and later GPUs (10
    mantissa bits): the published modules' Conv3d/Conv2d would then be no float32
    reference. Every test runs them in full float32 (a no-op without a GPU). Through the
    flag that sets cuDNN's convolutions and RNNs together: Inductor reads it, and it
    refuses to answer while the two differ."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous
