"""opensora_core.geometry against the official aspect tables (aspect_tables.json) and latent sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

from clusterkit.errors import InvalidChoice, UserError
from opensora_core import geometry


@pytest.fixture(scope="module")
def official(data_dir):
    return json.loads((data_dir / "aspect_tables.json").read_text())


def test_geometry_import_does_not_import_torch():
    code = "import sys, opensora_core.geometry; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_resolution_table_matches_the_official_module(official):
    assert list(geometry.ASPECT_RATIOS) == official["ASPECT_RATIOS_order"]
    for name, table in official["ASPECT_RATIOS"].items():
        num_pixels, ratios = geometry.ASPECT_RATIOS[name]
        assert num_pixels == table["num_pixels"], name
        assert list(ratios) == table["keys_order"], name
        assert {k: list(v) for k, v in ratios.items()} == table["ratios"], name
    assert set(geometry.RESOLUTIONS) | set(geometry.IMAGE_RESOLUTIONS) == set(official["ASPECT_RATIOS"])
    assert all(len(geometry.ASPECT_RATIOS[r][1]) == 17 for r in geometry.RESOLUTIONS)
    assert all(len(geometry.ASPECT_RATIOS[r][1]) == 40 for r in geometry.IMAGE_RESOLUTIONS)


def test_ratio_and_frame_maps_match_the_official_module(official):
    assert geometry.ASPECT_RATIO_MAP == official["ASPECT_RATIO_MAP"]
    assert list(geometry.ASPECT_RATIO_MAP) == official["ASPECT_RATIO_MAP_order"]
    assert geometry.NUM_FRAMES_MAP == official["NUM_FRAMES_MAP"]
    assert list(geometry.NUM_FRAMES_MAP) == official["NUM_FRAMES_MAP_order"]


def test_helpers_reproduce_the_official_helper_results(official):
    checks = official["checks"]
    for key, size in checks["get_image_size"].items():
        resolution, ratio = key.split("|")
        assert list(geometry.get_image_size(resolution, ratio)) == size, key
    for value, frames in checks["get_num_frames"].items():
        assert geometry.get_num_frames(value) == frames, value
    for name, pixels in checks["get_num_pixels"].items():
        assert geometry.get_num_pixels(name) == pixels, name
    for key, ratio in checks["get_closest_ratio_720p"].items():
        height, width = map(int, key.split("x"))
        assert geometry.get_closest_ratio(height, width, "720p") == ratio, key


def test_ratio_strings_are_height_to_width():
    assert geometry.get_image_size("720p", "9:16") == (720, 1280)  # landscape
    assert geometry.get_image_size("720p", "16:9") == (1280, 720)
    assert geometry.get_image_size("720p", "0.56") == (720, 1280)  # a key works too
    assert geometry.get_image_size("512", "1:1") == geometry.get_image_size("512", "1.00") == (512, 512)
    assert geometry.get_image_size("512", "2:1") == (704, 352)


@pytest.mark.parametrize(
    ("resolution", "ratio", "named"),
    [("999p", "9:16", "resolution"), ("720p", "7:5", "aspect ratio for 720p"), ("512", "9:16", "aspect ratio for 512")],
)
def test_unknown_resolution_or_ratio_lists_the_choices(resolution, ratio, named):
    with pytest.raises(InvalidChoice) as err:
        geometry.get_image_size(resolution, ratio)
    assert err.value.what == named
    if named == "resolution":
        assert err.value.choices == list(geometry.ASPECT_RATIOS)
    else:
        assert "1:1" in err.value.choices and "1.00" in err.value.choices
        assert ("9:16" in err.value.choices) == (resolution == "720p")  # image tables have no 0.56 key


@pytest.mark.parametrize("value", ["3s", "0", "-1", "abc", "", 0, -1, True, 2.5])
def test_bad_frame_counts_raise_a_typed_error_listing_valid_keys(value):
    with pytest.raises(InvalidChoice) as err:
        geometry.get_num_frames(value)
    assert isinstance(err.value, UserError)
    assert "2s" in err.value.message and "16x" in err.value.message and "a positive integer" in err.value.message


def test_named_and_integer_frame_counts():
    assert geometry.get_num_frames("4s") == 102
    assert geometry.get_num_frames("8x") == 408
    assert geometry.get_num_frames(64) == 64
    assert geometry.get_num_frames("17") == 17


def test_latent_frames_matches_the_pipeline_table(data_dir):
    table = load_file(str(data_dir / "vae_pipeline_tiny.safetensors"))["latent_size.n_T_H_W_at_720x1280"]
    assert len(table) == 14
    for n, t, h, w in table.tolist():
        assert geometry.latent_size(n, 720, 1280) == (t, h, w), n


@pytest.mark.parametrize(
    ("frames", "latent"),
    [(1, 1), (2, 1), (4, 1), (5, 2), (8, 2), (13, 4), (16, 4), (17, 5), (18, 6), (21, 6), (34, 10), (51, 15),
     (64, 19), (68, 20), (102, 30), (204, 60), (408, 120), (816, 240)],
)  # fmt: skip
def test_latent_frames_formula(frames, latent):
    assert geometry.latent_frames(frames) == latent
    assert geometry.latent_frames(frames) == 5 * (frames // 17) + -(-(frames % 17) // 4)


def test_latent_frames_without_chunking_is_ceil_div_4():
    assert [geometry.latent_frames(n, micro_frame_size=None) for n in (1, 2, 4, 5, 9, 16, 17)] == [1, 1, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad", [0, -3, 1.5, "17"])
def test_latent_frames_rejects_non_positive_integers(bad):
    with pytest.raises(InvalidChoice):
        geometry.latent_frames(bad)


@pytest.mark.parametrize(
    ("resolution", "latent_hw", "patches_hw", "tokens", "decoded_hw"),
    [
        ("240p", (30, 53), (15, 27), 405, (240, 424)),
        ("360p", (45, 80), (23, 40), 920, (360, 640)),
        ("480p", (60, 106), (30, 53), 1590, (480, 848)),
        ("720p", (90, 160), (45, 80), 3600, (720, 1280)),
    ],
)
def test_video_geometry_for_9_16(resolution, latent_hw, patches_hw, tokens, decoded_hw):
    height, width = geometry.get_image_size(resolution, "9:16")
    geo = geometry.video_geometry(102, height, width)
    assert geo.latent == (30, *latent_hw)
    assert geo.patches == (30, *patches_hw)
    assert geo.spatial_tokens == tokens
    assert geo.temporal_tokens == 30
    assert geo.total_tokens == 30 * tokens
    assert geo.decoded == (102, *decoded_hw)


def test_total_tokens_720p():
    h, w = geometry.get_image_size("720p", "9:16")
    assert geometry.video_geometry(geometry.get_num_frames("4s"), h, w).total_tokens == 108_000
    assert geometry.video_geometry(geometry.get_num_frames("16s"), h, w).total_tokens == 432_000
    assert geometry.video_geometry(1, h, w).total_tokens == 3600


def test_patch_grid_pads_odd_sizes_up():
    assert geometry.patch_grid(3, 7, 11) == (3, 4, 6)
    assert geometry.patch_grid(5, 8, 12) == (5, 4, 6)
