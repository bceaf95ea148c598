"""The training CSV, PyAV probing and its cache, decoding with frame_interval, images, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clusterkit.errors import UserError
from opensora_core.inference.video_io import write_video
from opensora_core.training.buckets import SampleKey
from opensora_core.training.data import VideoTextDataset, collate, crop_window, resize_crop
from opensora_core.training.samples import load_samples


def counting_video(path, frames: int, height: int = 32, width: int = 48, fps: int = 24):
    """Frame i is a flat grey of level 8*i, so a decoded frame says which one it was."""
    levels = (np.arange(frames) * 8).clip(0, 255).astype(np.uint8)
    pixels = np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()
    return write_video(path, pixels, fps=fps)


def frame_numbers(video: torch.Tensor) -> list[int]:
    """[3, T, H, W] in [-1, 1] -> the frame index each decoded frame came from."""
    grey = ((video.mean(dim=(0, 2, 3)) + 1) / 2 * 255).tolist()
    return [round(g / 8) for g in grey]


def write_csv(path, rows, columns=("path", "text")):
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def media(tmp_path):
    counting_video(tmp_path / "a.mp4", 30)
    counting_video(tmp_path / "b.mp4", 12, height=48, width=32, fps=30)
    write_video(tmp_path / "still.png", np.full((1, 20, 40, 3), 200, dtype=np.uint8))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 2000)
    return tmp_path


def test_csv_with_missing_columns_names_them(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", [{"path": "a.mp4"}], columns=("path", "caption"))
    with pytest.raises(UserError) as err:
        load_samples(csv_path)
    assert "missing column text" in err.value.message and "the header has path, caption" in err.value.message


def test_missing_csv_and_malformed_values_are_clear(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_samples(tmp_path / "nope.csv")
    bad = write_csv(tmp_path / "bad.csv", [{"path": "a.mp4", "text": "x", "num_frames": "many"}],
                    columns=("path", "text", "num_frames"))
    with pytest.raises(UserError) as err:
        load_samples(bad)
    assert "row 2: num_frames 'many' is not a number" in err.value.message


def test_probing_fills_metadata_skips_bad_files_and_caches(media):
    csv_path = write_csv(media / "d.csv", [
        {"path": "a.mp4", "text": "counting"}, {"path": "b.mp4", "text": "portrait"},
        {"path": "still.png", "text": "an image"}, {"path": "broken.mp4", "text": "junk"},
        {"path": "gone.mp4", "text": "missing"}])
    cache = media / "probe.json"
    samples, report = load_samples(csv_path, cache_path=cache)
    by_name = {s.path.rsplit("/", 1)[1]: s for s in samples}
    assert set(by_name) == {"a.mp4", "b.mp4", "still.png"}
    a, b, still = by_name["a.mp4"], by_name["b.mp4"], by_name["still.png"]
    assert (a.num_frames, a.height, a.width, a.fps, a.is_image) == (30, 32, 48, 24.0, False)
    assert (b.num_frames, b.height, b.width, b.fps) == (12, 48, 32, 30.0)
    assert (still.num_frames, still.height, still.width, still.fps, still.is_image) == (1, 20, 40, 120, True)
    assert report.rows == 5 and len(report.skipped) == 2
    reasons = {path.rsplit("/", 1)[1]: why for _, path, why in report.skipped}
    assert reasons["gone.mp4"] == "file does not exist" and reasons["broken.mp4"].startswith("unreadable")
    assert "skipped 2" in report.summary() and report.probed == 4
    assert len(json.loads(cache.read_text())["files"]) == 4
    _, again = load_samples(csv_path, cache_path=cache)
    assert again.probed == 0 and again.cached == 4
    counting_video(media / "a.mp4", 20)  # the file changed: probed again
    samples, third = load_samples(csv_path, cache_path=cache)
    assert third.probed == 1 and next(s for s in samples if s.path.endswith("a.mp4")).num_frames == 20


def test_given_metadata_is_used_without_probing(media):
    csv_path = write_csv(media / "d.csv", [{"path": "a.mp4", "text": "t", "num_frames": 30, "height": 32,
                                            "width": 48, "fps": 24}],
                         columns=("path", "text", "num_frames", "height", "width", "fps"))
    samples, report = load_samples(csv_path, cache_path=media / "c.json")
    assert report.probed == 0 and samples[0].num_frames == 30


def test_crop_window_spreads_frames_over_the_interval():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = crop_window(30, 5, 3, rng)
        assert len(idx) == 5 and idx[0] >= 0 and idx[-1] < 30
        assert idx[-1] - idx[0] == 14  # a window of 5 * 3 frames
    assert list(crop_window(5, 5, 1, rng)) == [0, 1, 2, 3, 4]


def test_decoding_takes_every_frame_interval_th_frame_deterministically(media):
    samples, _ = load_samples(write_csv(media / "d.csv", [{"path": "a.mp4", "text": "t"}]))
    dataset = VideoTextDataset(samples, frame_interval=2, seed=3)
    key = SampleKey(index=0, num_frames=5, height=32, width=48, epoch=0)
    item = dataset[key]
    assert item["valid"] and item["video"].shape == (3, 5, 32, 48)
    frames = frame_numbers(item["video"])
    assert np.diff(frames).tolist() in ([2, 2, 2, 2], [2, 2, 2, 3], [2, 2, 3, 2], [2, 3, 2, 2], [3, 2, 2, 2])
    assert item["fps"] == 12.0  # 24 fps // frame_interval 2
    assert torch.equal(dataset[key]["video"], item["video"])  # same (seed, epoch, row): same frames
    other_epochs = {tuple(frame_numbers(dataset[SampleKey(0, 5, 32, 48, e)]["video"])) for e in range(8)}
    assert len(other_epochs) > 1


def test_resize_crop_fills_then_centre_crops():
    video = torch.arange(2 * 3 * 10 * 20, dtype=torch.float32).view(2, 3, 10, 20)
    out = resize_crop(video, 10, 10)
    assert out.shape == (2, 3, 10, 10)
    assert torch.equal(out, video[..., 5:15])  # same height: only the centre crop
    assert resize_crop(video, 20, 20).shape == (2, 3, 20, 20)


def test_images_fill_a_one_frame_bucket(media):
    samples, _ = load_samples(write_csv(media / "d.csv", [{"path": "still.png", "text": "t"}]))
    item = VideoTextDataset(samples, frame_interval=1, seed=0)[SampleKey(0, 1, 40, 80, 0)]
    assert item["valid"] and item["video"].shape == (3, 1, 40, 80) and item["fps"] == 120
    assert abs(float(item["video"].mean()) - (200 / 255 * 2 - 1)) < 0.02


def test_bad_samples_become_zero_weight_slots_with_the_reason(media):
    rows = [{"path": "a.mp4", "text": "t"}, {"path": "b.mp4", "text": "t"}]
    samples, _ = load_samples(write_csv(media / "d.csv", rows))
    dataset = VideoTextDataset(samples, frame_interval=1, seed=0)
    short = dataset[SampleKey(1, 17, 32, 48, 0)]  # b.mp4 has 12 frames
    assert not short["valid"] and short["video"].abs().sum() == 0
    assert "12 frames, shorter than the bucket's 17 frames x frame_interval 1" in short["error"]
    # the CSV lied about the length: the decoder finds out
    from dataclasses import replace

    good = dataset[SampleKey(0, 17, 32, 48, 0)]
    dataset.samples[0] = replace(dataset.samples[0], num_frames=100)
    lied = dataset[SampleKey(0, 40, 32, 48, 0)]
    assert not lied["valid"] and "has 30 frames but the window needs frame" in lied["error"]
    batch = collate([good, short])
    assert batch["valid"].tolist() == [True, False] and batch["errors"] == [short["error"]]
    assert batch["video"].shape == (2, 3, 17, 32, 48) and batch["num_frames"] == 17
