"""The fused GSM and GST learn what they are for (examples/learn_motion_direction.py, on
a small budget): the direction of a moving pattern, which no frame alone carries. A TSN
without temporal modules stays at chance; with GSM, or with GST in place of its 3x3
convolutions, it learns, and reversed clips flip its prediction."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

import gateshift

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "learn_motion_direction.py"
FRAMES, SIZE = 8, 24


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("learn_motion_direction", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clips_move_in_their_direction_and_frames_alone_do_not_tell(example, gen):
    x, labels = example.moving_pattern_clips(64, FRAMES, SIZE, gen)
    video = x.view(64, FRAMES, SIZE, SIZE)
    for clip, label in enumerate(labels.tolist()):
        dy, dx = example.DIRECTIONS[label]
        for t in range(FRAMES - 1):
            assert torch.equal(video[clip, t + 1], torch.roll(video[clip, t], (2 * dy, 2 * dx), dims=(0, 1)))
    # Played backwards, a clip is a clip of the opposite direction.
    backwards = example.reverse_frames(x, FRAMES).view(64, FRAMES, SIZE, SIZE)
    dy, dx = example.DIRECTIONS[example.OPPOSITE[labels[0]]]
    assert torch.equal(backwards[0, 1], torch.roll(backwards[0, 0], (2 * dy, 2 * dx), dims=(0, 1)))


def test_gsm_learns_the_direction_of_motion_and_tsn_cannot(example, gen):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=gen)))
    held_out = example.moving_pattern_clips(256, FRAMES, SIZE, gen)
    chance = 1 / len(example.DIRECTIONS)
    results = {}
    for temporal in (None, "gsm"):
        model = example.make_model(temporal, FRAMES)
        example.train(model, 120, gen, held_out, FRAMES, SIZE)
        results[temporal] = example.accuracy(model, *held_out), example.flip_rate(model, held_out[0], FRAMES)
    (tsn_accuracy, _), (gsm_accuracy, gsm_flips) = results[None], results["gsm"]
    print(f"held-out accuracy: TSN {tsn_accuracy:.1%}, TSN + GSM {gsm_accuracy:.1%}; GSM flips {gsm_flips:.1%}")
    # Every frame has the same distribution whatever the direction (a texture shifted
    # uniformly at random, with wrap-around, so no edges), so an average of frame scores is
    # at chance whatever it learned: on 256 clips its accuracy passes 0.40 with probability
    # < 1e-7 (5.5 standard deviations).
    assert tsn_accuracy < chance + 0.15
    assert gsm_accuracy > 0.8
    assert gsm_flips > 0.8


def test_gst_learns_the_direction_of_motion(example, gen):
    # The TSN's failure is the test above; here the same network with GST convolutions.
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=gen)))
    held_out = example.moving_pattern_clips(256, FRAMES, SIZE, gen)
    model = example.make_model("gst", FRAMES)
    assert sum(isinstance(m, gateshift.GST) for m in model.modules()) == 2
    example.train(model, 120, gen, held_out, FRAMES, SIZE)
    accuracy, flips = example.accuracy(model, *held_out), example.flip_rate(model, held_out[0], FRAMES)
    print(f"held-out accuracy: TSN with GST {accuracy:.1%}; flips {flips:.1%}")
    assert accuracy > 0.8
    assert flips > 0.8
