"""Bucket assignment exactly as seed 002 ("Bucket Configs") documents it, and its determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from opensora_core.errors import ConfigError
from opensora_core.training.buckets import Bucket
from opensora_core.training.config import parse_bucket_config

# The seed's walk-through: a 2K video with more than 16 frames.
SEED_EXAMPLE = {"480p": {16: (1.0, 8)}, "720p": {16: (0.5, 4)}, "1080p": {16: (0.2, 2)}, "4k": {16: (0.1, 1)}}
TWO_K = (1440, 2560)  # the 2k table's 16:9 size


def bucket(config: dict) -> Bucket:
    return Bucket(parse_bucket_config(config))


def frequencies(b: Bucket, frames: int, height: int, width: int, n: int = 4000, frame_interval: int = 1) -> dict:
    """Where n different samples (ids 0..n-1, seed 42, epoch 0) land, as fractions."""
    counts = Counter()
    for sample_id in range(n):
        chosen = b.assign(frames, height, width, frame_interval, 42 + sample_id * b.num_bucket)
        counts[chosen[:2] if chosen else None] += 1
    return {k: v / n for k, v in counts.items()}


def test_a_2k_video_of_more_than_16_frames_lands_in_1080p_720p_or_480p_with_the_seeds_probabilities():
    b = bucket(SEED_EXAMPLE)
    # 4K is skipped (a 2K video has fewer than 80% of its pixels); 1080p keeps 20%, 720p half of the
    # rest, 480p (the smallest, keep 1.0) all that is left
    exact = b.probabilities(17, *TWO_K)
    assert exact == pytest.approx({("1080p", 16): 0.2, ("720p", 16): 0.4, ("480p", 16): 0.4, None: 0.0})
    seen = frequencies(b, 17, *TWO_K)
    assert set(seen) == {("1080p", 16), ("720p", 16), ("480p", 16)}
    for key, p in exact.items():
        if key is not None:
            assert seen[key] == pytest.approx(p, abs=0.03)


def test_exactly_16_frames_is_not_more_than_16_so_no_bucket():
    b = bucket(SEED_EXAMPLE)
    assert b.probabilities(16, *TWO_K) == {None: 1.0}
    assert all(b.assign(16, *TWO_K, 1, 42 + i * b.num_bucket) is None for i in range(50))


def test_frame_interval_multiplies_the_frames_a_bucket_needs():
    b = bucket({"480p": {16: (1.0, 8)}})
    assert b.assign(33, 480, 854, 2, 0) is not None  # 33 > 16 * 2
    assert b.assign(32, 480, 854, 2, 0) is None


def test_zero_none_disables_and_pushes_longer_480p_videos_to_240p():
    """The seed: "480p": {16: (1.0, 4), 32: (0.0, None)} sends 480p videos with more than 32 frames to 240p."""
    b = bucket({"240p": {16: (1.0, 16), 32: (1.0, 8), 64: (1.0, 4), 128: (1.0, 2)},
                "480p": {16: (1.0, 4), 32: (0.0, None)}, "720p": {16: (0.5, 2)}})
    assert b.probabilities(33, 480, 854) == {("240p", 32): 1.0, None: 0.0}
    assert b.probabilities(20, 480, 854) == {("480p", 16): 1.0, None: 0.0}
    assert b.probabilities(200, 480, 854) == {("240p", 128): 1.0, None: 0.0}
    chosen = b.assign(33, 480, 854, 1, 7)
    assert chosen[:2] == ("240p", 32) and b.thw(chosen) == (32, 240, 426)


def test_without_the_disabled_entry_480p_keeps_them_all():
    b = bucket({"240p": {16: (1.0, 16), 32: (1.0, 8)}, "480p": {16: (1.0, 4)}, "720p": {16: (0.5, 2)}})
    assert b.probabilities(33, 480, 854) == {("480p", 16): 1.0, None: 0.0}


def test_images_go_to_frame_key_1_and_videos_never_do():
    b = bucket({"256": {1: (1.0, 256)}, "512": {1: (0.8, 80)}, "480p": {1: (0.5, 52)}, "1024": {1: (0.5, 20)},
                "1080p": {1: (0.2, 8)}})
    # a 1080p image: 1080p 20%, then 1024 (50% of the rest), 480p, 512 (80%), 256 (all the rest)
    p = b.probabilities(1, 1080, 1920)
    assert p[("1080p", 1)] == pytest.approx(0.2)
    assert p[("1024", 1)] == pytest.approx(0.4)
    assert p[("480p", 1)] == pytest.approx(0.2)
    assert p[("512", 1)] == pytest.approx(0.16)
    assert p[("256", 1)] == pytest.approx(0.04)
    assert b.probabilities(51, 1080, 1920) == {None: 1.0}  # videos need a frame key > 1
    only_videos = bucket({"240p": {16: (1.0, 16)}})
    assert only_videos.probabilities(1, 240, 426) == {None: 1.0}  # images need frame key 1


def test_resolution_walk_skips_sizes_below_80_percent():
    b = bucket({"240p": {16: (1.0, 8)}, "480p": {16: (1.0, 4)}})
    # 480p's reference is 409920 pixels; 0.8 of it is 327936: 400x800 = 320000 is below, so 240p
    assert b.probabilities(20, 400, 800) == {("240p", 16): 1.0, None: 0.0}
    assert b.probabilities(20, 410, 800) == {("480p", 16): 1.0, None: 0.0}
    assert b.probabilities(20, 100, 100) == {None: 1.0}  # smaller than every bucket


def test_tuple_keep_prob_skips_frame_keys_with_probability_one_minus_p_frames():
    # stage1's 144p row: 408 frames kept 10% of the time, then 204 (10%), 102 (33%), else 51
    b = bucket({"144p": {51: (1.0, 51), 102: ((1.0, 0.33), 27), 204: ((1.0, 0.1), 13), 408: ((1.0, 0.1), 6)}})
    p = b.probabilities(500, 144, 256)
    assert p[("144p", 408)] == pytest.approx(0.1)
    assert p[("144p", 204)] == pytest.approx(0.9 * 0.1)
    assert p[("144p", 102)] == pytest.approx(0.9 * 0.9 * 0.33)
    assert p[("144p", 51)] == pytest.approx(0.9 * 0.9 * 0.67)
    seen = frequencies(b, 500, 144, 256)
    for key in (("144p", 408), ("144p", 204), ("144p", 102), ("144p", 51)):
        assert seen[key] == pytest.approx(p[key], abs=0.03)


def test_assignment_depends_only_on_seed_epoch_and_sample():
    b = bucket(SEED_EXAMPLE)
    seed = 42 + 3 + 17 * b.num_bucket  # seed + epoch + id * num_bucket, as the sampler passes it
    assert len({b.assign(20, *TWO_K, 1, seed) for _ in range(5)}) == 1
    assert bucket(SEED_EXAMPLE).assign(20, *TWO_K, 1, seed) == b.assign(20, *TWO_K, 1, seed)
    outcomes = {b.assign(20, *TWO_K, 1, 42 + epoch + 17 * b.num_bucket) for epoch in range(40)}
    assert len(outcomes) > 1  # another epoch, another draw


def test_bucket_ids_and_count_follow_upstream():
    b = bucket({"240p": {16: (1.0, 16), 32: (1.0, 8)}, "480p": {16: (1.0, 4)}})
    assert list(b.probs) == ["480p", "240p"]  # largest resolution first
    assert list(b.probs["240p"]) == [32, 16]  # largest frame key first
    assert b.ids == {("480p", 16): 0, ("240p", 32): 1, ("240p", 16): 2}
    assert len(b) == 3 * 17  # entries x aspect ratios of the resolution


def test_aspect_key_is_the_closest_ratio_of_the_chosen_resolution():
    b = bucket({"240p": {16: (1.0, 16)}})
    assert b.assign(20, 300, 300, 1, 0) == ("240p", 16, "1.00")
    assert b.thw(("240p", 16, "1.00")) == (16, 320, 320)
    assert b.assign(20, 1080, 1920, 1, 0) == ("240p", 16, "0.56")  # H:W 9:16 (landscape)


@pytest.mark.parametrize("config, message", [
    ({"4K": {16: (0.1, 1)}}, "resolution '4K' is not valid; valid resolutions: 144p"),
    ({"240p": {16: (0.5, None)}}, "batch_size null disables the entry and needs keep_prob 0.0"),
    ({"240p": {16: (1.5, 4)}}, "probability 1.5 must be a number in [0, 1]"),
    ({"240p": {0: (1.0, 4)}}, "frame key 0 must be a positive integer"),
    ({"240p": {16: (1.0,)}}, "must be [keep_prob, batch_size]"),
    ({"240p": {1: ((1.0, 0.5), 4)}}, "images (frame key 1) take a single keep_prob"),
    ({"240p": {16: (0.0, None)}}, "every entry is disabled"),
    ({}, "must be a non-empty mapping"),
])
def test_bad_bucket_tables_are_refused_with_the_rule(config, message):
    with pytest.raises(ConfigError) as err:
        parse_bucket_config(config)
    assert message in err.value.message


def test_unknown_resolution_suggests_the_right_spelling():
    with pytest.raises(ConfigError) as err:
        parse_bucket_config({"4K": {16: (0.1, 1)}})
    assert "Did you mean '4k'?" in err.value.message


def test_yaml_lists_and_string_frame_keys_are_the_same_table():
    from_yaml = parse_bucket_config({"240p": {"16": [1.0, 16], "32": [[0.5, 0.3], 8], "64": [0.0, None]}})
    from_python = parse_bucket_config({"240p": {16: (1.0, 16), 32: ((0.5, 0.3), 8), 64: (0.0, None)}})
    assert from_yaml == from_python
