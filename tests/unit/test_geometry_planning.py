"""The planning helpers of opensora_core.geometry: trained lengths and sequence-parallel padding."""

from __future__ import annotations

import pytest

from opensora_core import geometry


@pytest.mark.parametrize("frames, trained", [(1, True), (51, True), (102, True), (204, True), (408, True),
                                             (64, False), (816, False), (17, False)])
def test_trained_lengths_are_image_2s_4s_8s_16s(frames, trained):
    assert geometry.is_trained_length(frames) is trained


def test_every_trained_length_is_an_official_key_or_an_image():
    assert set(geometry.TRAINED_NUM_FRAMES) - {1} <= set(geometry.NUM_FRAMES_MAP.values())
    assert all(geometry.is_trained_length(f) for _, f in geometry.UNTRAINED_LENGTHS)


@pytest.mark.parametrize("rows, cols, sp, tokens", [
    (45, 80, 1, 3600),  # 720p 9:16
    (45, 80, 2, 3600),  # S divides: split as is, no padding
    (45, 80, 16, 3600),
    (30, 53, 2, 1590),  # 480p
    (30, 53, 4, 1592),  # 1590 % 4 != 0: 2 padding tokens (upstream pads 2 rows: 106 tokens)
    (30, 53, 8, 1592),
    (15, 27, 2, 406),  # 240p: 405 is odd
    (15, 27, 4, 408),
    (23, 40, 8, 920),  # 360p
    (23, 40, 16, 928),  # 920 % 16 != 0: 8 padding tokens
])
def test_sp_spatial_tokens(rows, cols, sp, tokens):
    assert geometry.sp_spatial_tokens(rows, cols, sp) == tokens
    assert geometry.sp_spatial_tokens(rows, cols, sp) % sp == 0


@pytest.mark.parametrize("args", [(0, 80, 2), (45, 80, 0), (45, -1, 2), (45, 80, True)])
def test_sp_spatial_tokens_rejects_non_positive_sizes(args):
    from clusterkit.errors import InvalidChoice

    with pytest.raises(InvalidChoice):
        geometry.sp_spatial_tokens(*args)
