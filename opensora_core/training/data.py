"""Decoding and batching the training samples (upstream ``VariableVideoTextDataset``).

For a ``SampleKey`` (row, bucket size, epoch) the dataset decodes the file with PyAV, picks
``num_frames`` frames spread over a random window of ``num_frames * frame_interval`` frames
(``temporal_random_crop``), resizes to fill the bucket's (H, W) and centre-crops
(``resize_crop``), and maps pixels to [-1, 1]. The window's start comes from a generator seeded by
(seed, epoch, row), so a sample is the same tensor however the run is split into attempts.

A file that fails to decode, or has fewer frames than the window needs, does not crash the step:
its slot in the batch is zeros with ``valid`` False and the reason in ``errors``; the trainer
leaves it out of the loss and counts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import IMG_FPS
from .buckets import SampleKey
from .samples import Sample


class SampleError(Exception):
    """A sample that cannot be used this time (message names the file and why)."""


def crop_window(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices: ``num_frames`` spread evenly over a random window of num_frames*interval frames."""
    size = num_frames * frame_interval
    rand_end = max(0, total - size - 1)
    begin = int(rng.integers(0, rand_end + 1))
    end = min(begin + size, total)
    return np.linspace(begin, end - 1, num_frames, dtype=int)


def decode_frames(path: str, indices: np.ndarray) -> np.ndarray:
    """Decode frames ``indices`` (sorted) of a video: [len(indices), H, W, 3] uint8. Stops decoding
    after the last one; raises ``SampleError`` when the file ends first or cannot be decoded."""
    import av

    wanted = int(indices[-1])
    picked: dict[int, np.ndarray] = {}
    needed = set(int(i) for i in indices)
    count = 0
    try:
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                count = index + 1
                if index in needed:
                    picked[index] = frame.to_ndarray(format="rgb24")
                if index >= wanted:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SampleError(f"{path}: cannot decode: {type(exc).__name__}: {exc}") from None
    if wanted not in picked:
        raise SampleError(f"{path}: has {count} frames but the window needs frame {wanted + 1} "
                          f"(the CSV or probe said more frames than the file holds)")
    return np.stack([picked[int(i)] for i in indices])


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, C, h, w] float -> [T, C, height, width]: scale to fill (bilinear), then centre-crop."""
    h, w = video.shape[-2:]
    ratio_h, ratio_w = height / h, width / w
    if ratio_h > ratio_w:
        size = (height, round(w * ratio_h))
    else:
        size = (round(h * ratio_w), width)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top = int(round(size[0] - height) / 2.0)
    left = int(round(size[1] - width) / 2.0)
    return video[..., top:top + height, left:left + width]


class VideoTextDataset(torch.utils.data.Dataset):
    """Indexed by ``SampleKey``; returns one sample as a dict (see the module docstring)."""

    def __init__(self, samples: Sequence[Sample], *, frame_interval: int, seed: int) -> None:
        self.samples = list(samples)
        self.frame_interval = frame_interval
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, key: SampleKey) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] for ``key``; raises ``SampleError``."""
        sample = self.samples[key.index]
        if sample.is_image:
            if key.num_frames != 1:
                raise SampleError(f"{sample.path}: an image cannot fill a {key.num_frames}-frame bucket")
            frames = decode_frames(sample.path, np.array([0]))
        else:
            needed = key.num_frames * self.frame_interval
            if sample.num_frames < needed:
                raise SampleError(f"{sample.path}: {sample.num_frames} frames, shorter than the bucket's "
                                  f"{key.num_frames} frames x frame_interval {self.frame_interval}")
            rng = np.random.default_rng([self.seed, key.epoch, key.index])
            frames = decode_frames(sample.path, crop_window(sample.num_frames, key.num_frames,
                                                           self.frame_interval, rng))
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)  # T C H W in [0, 1]
        video = resize_crop(video, key.height, key.width)
        return video.sub_(0.5).div_(0.5).permute(1, 0, 2, 3).contiguous()  # C T H W in [-1, 1]

    def __getitem__(self, key: SampleKey) -> dict:
        sample = self.samples[key.index]
        fps = IMG_FPS if sample.is_image else sample.fps // self.frame_interval
        item = {"text": sample.text, "fps": float(fps), "path": sample.path, "index": key.index,
                "num_frames": key.num_frames, "height": key.height, "width": key.width}
        try:
            item.update(video=self.load(key), valid=True, error=None)
        except SampleError as exc:
            shape = (3, key.num_frames, key.height, key.width)
            item.update(video=torch.zeros(shape), valid=False, error=str(exc))
        return item


def collate(items: list[dict]) -> dict:
    """Stack one micro-batch (every item has the bucket's shape)."""
    first = items[0]
    return {
        "video": torch.stack([i["video"] for i in items]),
        "text": [i["text"] for i in items],
        "fps": torch.tensor([i["fps"] for i in items], dtype=torch.float32),
        "valid": torch.tensor([i["valid"] for i in items], dtype=torch.bool),
        "errors": [i["error"] for i in items if i["error"]],
        "indices": [i["index"] for i in items],
        "num_frames": first["num_frames"],
        "height": first["height"],
        "width": first["width"],
    }


def build_loader(dataset: VideoTextDataset, batches, *, num_workers: int, seed: int):
    """A DataLoader over the sampler's micro-batches. Its own generator keeps worker seeding from
    touching the global RNG (which the model's caption dropout uses), so a resumed run draws the
    same numbers as an uninterrupted one."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed),
        persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
