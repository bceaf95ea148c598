"""TrainConfig validation, the jobs/train-*.yaml presets, and frame masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clusterkit.jobs import load_preset
from opensora_core.errors import ConfigError
from opensora_core.training.config import TrainConfig
from opensora_core.training.masks import MaskGenerator

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("changes, message", [
    ({"keep_last": 1}, "keep_last=1: must be an integer >= 2"),
    ({"plugin": "zero3"}, "plugin='zero3' is not valid; valid choices: zero2, ddp, colossalai-zero2"),
    ({"dtype": "fp16"}, "dtype='fp16' is not valid"),
    ({"lr": 0}, "lr=0: must be a number > 0"),
    ({"ema_decay": 1.0}, "ema_decay=1.0: must be in [0, 1)"),
    ({"max_steps": 0}, "max_steps=0: must be a positive integer"),
    ({"frame_interval": 0}, "frame_interval=0: must be a positive integer"),
    ({"init": "pretrained"}, "init=pretrained loads ckpt_dir/dit, but ckpt_dir is not set"),
    ({"model": "opensora-v1.2"}, "model=opensora-v1.2 needs ckpt_dir"),
    ({"mask_ratios": {"image_head": 0.7, "random": 0.5}}, "mask_ratios sum to 1.2 > 1"),
    ({"mask_ratios": {"head": 0.1}}, "unknown mask type 'head'"),
    ({"buckets": {"4K": {16: [0.1, 1]}}}, "resolution '4K' is not valid"),
])
def test_rules_name_the_field_value_and_rule(changes, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(changes)
    assert message in err.value.message


def test_unknown_setting_suggests_the_right_one():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"max_step": 3})
    assert "unknown setting 'max_step' (did you mean 'max_steps'?)" in err.value.message


def test_round_trip_and_overrides_validate_again():
    config = TrainConfig.from_dict({"buckets": {"144p": {1: [1.0, 2], 17: [[1.0, 0.5], 2]}}, "max_steps": 5})
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config and again.bucket_table == config.bucket_table
    assert config.with_overrides({"lr": 2e-5}).lr == 2e-5
    with pytest.raises(ConfigError):
        config.with_overrides({"keep_last": 0})
    assert config.largest_bucket() == ("144p", 17) and config.max_batch_size == 2


@pytest.mark.parametrize("name", ["train-tiny", "train-stage1", "train-stage2", "train-stage3"])
def test_presets_are_valid_training_configs(name):
    job = load_preset(ROOT / "jobs", name)
    assert job.kind == "train" and job.entry == "opensora_core.training.run" and job.requeue > 0
    settings = dict(job.config)
    if settings["model"] == "opensora-v1.2":
        settings["ckpt_dir"] = "/ckpt"  # the presets leave it to --ckpt-dir
    config = TrainConfig.from_dict(settings)
    assert config.adam_eps == 1e-15 and config.ema_decay == 0.99 and config.grad_clip == 1.0


def test_stage_presets_mirror_upstream():
    stage1 = load_preset(ROOT / "jobs", "train-stage1").config
    assert stage1["buckets"]["144p"][102] == [[1.0, 0.33], 27] and stage1["warmup_steps"] == 1000
    assert sum(stage1["mask_ratios"].values()) == pytest.approx(0.20)
    stage2 = load_preset(ROOT / "jobs", "train-stage2").config
    assert stage2["warmup_steps"] == 0 and stage2["buckets"]["720p"][51] == [0.03, 1]
    stage3 = load_preset(ROOT / "jobs", "train-stage3").config
    assert stage3["buckets"]["480p"][408] == [0.0, None] and stage3["mask_ratios"]["image_head"] == 0.22
    assert sum(stage3["mask_ratios"].values()) == pytest.approx(0.25)


def test_masks_follow_their_type():
    g = torch.Generator().manual_seed(0)
    assert MaskGenerator({"image_head": 1.0}).get_mask(8, g).tolist() == [False] + [True] * 7
    assert MaskGenerator({"image_tail": 1.0}).get_mask(8, g).tolist() == [True] * 7 + [False]
    assert MaskGenerator({"image_head_tail": 1.0}).get_mask(8, g).tolist() == [False] + [True] * 6 + [False]
    interp = MaskGenerator({"intepolate": 1.0}).get_mask(8, g).tolist()
    assert interp in ([False, True] * 4, [True, False] * 4)
    for _ in range(50):
        quarter = MaskGenerator({"quarter_head": 1.0}).get_mask(8, g)
        hidden = (~quarter).sum().item()
        assert 1 <= hidden <= 2 and not quarter[:hidden].any()
        assert MaskGenerator({"random": 1.0}).get_mask(5, g).any()  # never every frame
    assert MaskGenerator({"image_head": 1.0}).get_mask(1, g).tolist() == [True]  # images stay whole
    assert MaskGenerator({}).enabled is False and MaskGenerator({"random": 0.1}).enabled


def test_masks_come_from_the_generator():
    masks = MaskGenerator({"random": 0.5, "quarter_random": 0.3})
    a = masks.get_masks(16, 10, torch.Generator().manual_seed(3))
    b = masks.get_masks(16, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (16, 10)
    mix = MaskGenerator({"image_head": 0.5})
    heads = mix.get_masks(400, 6, torch.Generator().manual_seed(1))
    assert 0.4 < (~heads[:, 0]).float().mean().item() < 0.6  # half the samples keep frame 0 clean
