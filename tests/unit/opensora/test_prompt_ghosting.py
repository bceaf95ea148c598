"""Prompt ghosting (seed 000: "does one prompt influence the next?") is impossible by construction:
on the tiny model (CPU), the same prompt and seed give bit-identical decoded videos alone, after
other prompts in the same run, and inside batches of other sizes; nothing else carries state from
one prompt to the next (the text encoder, the global RNG). Refined prompts change what is encoded,
never the seed, and both texts are recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opensora_core.inference import run as entry
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import generate
from opensora_core.inference.request import InferRequest
from opensora_core.inference.video_io import read_video
from opensora_core.presets import TINY

CPU = torch.device("cpu")
TARGET = "a beautiful waterfall"
OTHERS = ["The sky is turning from red to purple.", "A group of black birds flying over the sky.",
          "A bird is standing on the tree."]  # the seed's own ghosting prompts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(TINY, save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY))


def make(prompts, **changes):
    settings = dict(prompts=tuple(prompts), frames="17", resolution="144p", model="tiny", steps=2, name="g")
    return InferRequest(**{**settings, **changes})


def target_video(models, folder, prompts, batch_size):
    """The decoded frames of TARGET's video in a run of ``prompts`` with ``batch_size``, and its entry."""
    entries = generate(make(prompts, batch_size=batch_size), models, folder, device=CPU)
    [found] = [e for e in entries if e["prompt"] == TARGET]
    return read_video(found["path"]), found


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """TARGET alone; last after three other prompts; in the middle of a batch of 3; in a batch of 2
    after a batch of 2 (different companions, different position, different batch size)."""
    root = tmp_path_factory.mktemp("ghosting")
    return {
        "alone": target_video(models, root / "alone", [TARGET], 1),
        "after others": target_video(models, root / "after", [*OTHERS, TARGET], 1),
        "in a batch of 3": target_video(models, root / "batch3", [OTHERS[0], TARGET, OTHERS[1]], 3),
        "second batch of 2": target_video(models, root / "batch2", [*OTHERS, TARGET], 2),
    }


@pytest.mark.parametrize("case", ["after others", "in a batch of 3", "second batch of 2"])
def test_same_prompt_and_seed_give_the_same_video_bit_for_bit(runs, case):
    alone_frames, alone = runs["alone"]
    frames, found = runs[case]
    assert found["seed"] == alone["seed"]
    assert found["pixels_sha256"] == alone["pixels_sha256"]  # the raw uint8 frames, before the codec
    assert frames.shape == (17, 144, 256, 3) and np.array_equal(frames, alone_frames)  # decoded mp4


def test_the_other_prompts_give_other_videos(models, tmp_path):
    entries = generate(make([OTHERS[0], TARGET], batch_size=2), models, tmp_path, device=CPU)
    assert entries[0]["seed"] != entries[1]["seed"]
    assert entries[0]["pixels_sha256"] != entries[1]["pixels_sha256"]


def test_the_global_rng_and_the_encoders_history_do_not_matter(models, tmp_path):
    """Each video's noise comes from its own generator, never from torch's global stream, and the
    text encoder keeps no state between prompts."""
    request = make([TARGET], frames="1")
    torch.manual_seed(0)
    first = generate(request, models, tmp_path / "a", device=CPU)
    torch.manual_seed(12345)
    torch.randn(1000)  # move the global stream on
    models.text_encoder.encode(OTHERS)  # and encode other prompts in between, in a batch
    second = generate(request, models, tmp_path / "b", device=CPU)
    assert first[0]["pixels_sha256"] == second[0]["pixels_sha256"]
    alone = models.text_encoder.encode([TARGET])
    batched = models.text_encoder.encode([OTHERS[0], TARGET])
    assert torch.equal(alone[1], batched[1][1:])
    torch.testing.assert_close(alone[0], batched[0][1:], rtol=0, atol=0)


def test_refined_prompts_change_the_encoding_not_the_seed_and_are_recorded(models, tmp_path):
    refined = f"{TARGET}. The lighting is soft and natural."
    plain = generate(make([TARGET], frames="1"), models, tmp_path / "plain", device=CPU)[0]
    request = make([TARGET], frames="1", refined_prompts=(refined,), refiner="template")
    [entry_] = generate(request, models, tmp_path / "refined", device=CPU)
    assert entry_["seed"] == plain["seed"]  # seeds come from the prompt as given: a fair comparison
    assert entry_["prompt"] == TARGET and entry_["refined_prompt"] == refined and entry_["refiner"] == "template"
    assert entry_["encoder_text"].startswith("a beautiful waterfall. the lighting is soft")
    assert entry_["pixels_sha256"] != plain["pixels_sha256"]
    assert plain["refined_prompt"] is None and plain["refiner"] is None


def test_the_job_reads_refined_prompts_from_prompts_json_and_indexes_both(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    request = make(["a cat", "a dog"], frames="1", output_dir=str(tmp_path / "out"), name="run1",
                   refined_prompts=("a cat, close-up.", "a dog, close-up."), refiner="command")
    (tmp_path / "request.json").write_text(json.dumps(request.settings()))
    (tmp_path / "prompts.json").write_text(json.dumps(request.prompts_json()))
    assert "refined_prompts" not in request.settings()
    assert entry.main(["--request", str(tmp_path / "request.json"), "--prompts", str(tmp_path / "prompts.json"),
                       "--result", str(tmp_path / "result.json")]) == 0
    index = json.loads((tmp_path / "out" / "run1_index.json").read_text())
    assert [(v["prompt"], v["refined_prompt"], v["refiner"]) for v in index["videos"]] == [
        ("a cat", "a cat, close-up.", "command"), ("a dog", "a dog, close-up.", "command")]
    assert index["refiner"] == "command"
