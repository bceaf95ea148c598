"""Reference images and videos (``reference_path``): checking, reading and resizing them.

Torch-free at import (the submit host checks references without torch). A prompt's
``reference_path`` holds ";"-separated local paths; each is an image (PNG, JPEG, ... read with
PIL: one frame) or a video (mp4, ... with PyAV), chosen by the file extension as upstream does.
URLs are refused: nodes have no network, so nothing is downloaded. A video is never decoded whole
to be checked (``probe``: its packets counted, its first frame decoded), and only the frames the
mask groups use are decoded to be encoded (``load_pixels(frames=...)``): a minute of 1080p would be
tens of GB as float32.

Frames are resized to cover the target size and centre-cropped ("resize_crop", as upstream:
bicubic with PIL for images, bilinear for videos), then mapped to [-1, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from opensora_core.errors import ConditioningError, ReferenceNotFound
from opensora_core.geometry import latent_frames

#: Upstream's extensions (opensora/datasets/read_video.py and utils.py).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class ReferenceInfo:
    """A readable reference: its kind and length (pixel frames, and latent frames once encoded)."""

    path: str
    kind: str  # "image" | "video"
    frames: int

    @property
    def latent_frames(self) -> int:
        """Latent frames the VAE makes of the whole reference (what mask-group indices count in)."""
        return latent_frames(self.frames)


def split_paths(value: str, *, what: str | None = None) -> tuple[str, ...]:
    """The ";"-separated paths of one prompt's ``reference_path`` ("" gives none); URLs and empty
    entries are ``ConditioningError``s, starting with ``what`` (default ``reference_path '<value>'``)."""
    what = what or f"reference_path {value!r}"
    if not isinstance(value, str):
        raise ConditioningError(f"{what} must be a string of ';'-separated paths")
    if not value.strip():
        return ()
    paths = tuple(p.strip() for p in value.split(";"))
    for path in paths:
        if not path:
            raise ConditioningError(f"{what}: an entry between ';' is empty")
        if _URL.match(path):
            raise ConditioningError(
                f"{what}: {path!r} is a URL: clusterkit does not download references (the nodes have no network)",
                hint="download it first (e.g. curl -L -o ref.mp4 URL) and pass the local path")
    return paths


def reference_kind(path: str) -> str:
    """"image" or "video" from the extension; any other extension is a ``ConditioningError``."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    raise ConditioningError(f"reference {path!r}: extension {ext or '(none)'!r} is neither a video "
                            f"({' '.join(VIDEO_EXTENSIONS)}) nor an image ({' '.join(IMAGE_EXTENSIONS)})")


def resolve_path(path: str) -> str:
    """The absolute path of an existing reference file (``~`` expanded); ``ReferenceNotFound`` otherwise."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        why = "is a folder" if resolved.is_dir() else "does not exist"
        raise ReferenceNotFound(f"reference {path!r} {why}" + (f" ({resolved})" if str(resolved) != path else ""),
                                hint="reference_path takes ';'-separated image or video files")
    return str(resolved)


def probe(path: str) -> ReferenceInfo:
    """Check that ``path`` exists and reads, and count its frames (images: 1, decoded). A video is
    not decoded whole: its frames are counted from the container's packets (read, not decoded) and
    only its first frame is decoded, to prove the codec reads it."""
    kind = reference_kind(path)
    resolved = resolve_path(path)
    if kind == "image":
        _read_image(resolved)
        return ReferenceInfo(resolved, kind, 1)
    import av

    try:
        with av.open(resolved) as container:
            if not container.streams.video:
                raise ConditioningError(f"reference {path!r} has no video stream")
            frames, decoded = 0, False
            for packet in container.demux(container.streams.video[0]):
                if not decoded:  # the last, empty packet flushes a decoder that holds frames back
                    decoded = bool(packet.decode())
                if packet.size:
                    frames += 1
    except av.error.FFmpegError as exc:
        raise ConditioningError(f"reference {path!r} cannot be read as a video: {exc}") from None
    if frames == 0 or not decoded:
        raise ConditioningError(f"reference {path!r} holds no decodable video frame")
    return ReferenceInfo(resolved, kind, frames)


def load_pixels(path: str, height: int, width: int, frames: tuple[int, int] | None = None):
    """The reference as a float tensor [3, T, height, width] in [-1, 1], resized to cover and
    centre-cropped like upstream's "resize_crop" (images: PIL bicubic; videos: bilinear).
    ``frames`` (start, stop): only those pixel frames of a video (None: all of them)."""
    import numpy as np
    import torch

    if reference_kind(path) == "image":
        image = resize_crop_image(_read_image(resolve_path(path)), height, width)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())[None]  # [1, H, W, 3]
        return pixels.permute(3, 0, 1, 2).float() / 127.5 - 1
    start, stop = frames if frames is not None else (0, None)
    pixels = torch.from_numpy(_read_frames(resolve_path(path), start, stop)).permute(0, 3, 1, 2).float() / 255
    return (resize_crop_video(pixels, height, width) * 2 - 1).permute(1, 0, 2, 3).contiguous()  # [3, T, H, W]


def cover_size(height: int, width: int, target_h: int, target_w: int, *, video: bool = False) -> tuple[int, ...]:
    """(scaled height, scaled width, crop top, crop left) of upstream's ``resize_crop_to_fill``; its
    video version truncates the crop offset where the image version rounds it."""
    rh, rw = target_h / height, target_w / width
    offset = (lambda n: int(n / 2.0)) if video else (lambda n: int(round(n / 2.0)))
    if rh > rw:
        scaled_w = round(width * rh)
        return target_h, scaled_w, 0, offset(scaled_w - target_w)
    scaled_h = round(height * rw)
    return scaled_h, target_w, offset(scaled_h - target_h), 0


def resize_crop_image(image, height: int, width: int):
    """A PIL image resized (bicubic) to cover ``height`` x ``width`` and centre-cropped to it."""
    from PIL import Image

    scaled_h, scaled_w, top, left = cover_size(image.height, image.width, height, width)
    image = image.resize((scaled_w, scaled_h), Image.BICUBIC)
    return image.crop((left, top, left + width, top + height))


def resize_crop_video(frames, height: int, width: int):
    """[T, 3, H, W] floats resized (bilinear) to cover ``height`` x ``width`` and centre-cropped to it."""
    import torch.nn.functional as F

    scaled_h, scaled_w, top, left = cover_size(frames.shape[2], frames.shape[3], height, width, video=True)
    frames = F.interpolate(frames, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False)
    return frames[:, :, top : top + height, left : left + width]


def _read_frames(path: str, start: int, stop: int | None):
    """uint8 frames [T, H, W, 3] ``start`` .. ``stop`` - 1 of a video; decoding stops after ``stop``
    and the frames before ``start`` are decoded but never converted."""
    import av
    import numpy as np

    out = []
    with av.open(path) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if stop is not None and number >= stop:
                break
            if number >= start:
                out.append(frame.to_ndarray(format="rgb24"))
    if not out:
        raise ConditioningError(f"reference {path!r} has no frame in {start}..{'end' if stop is None else stop - 1}")
    return np.stack(out)


def _read_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConditioningError(f"reference {path!r} cannot be read as an image: {exc}") from None


__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ReferenceInfo", "load_pixels", "probe", "reference_kind",
           "resize_crop_image", "resize_crop_video", "resolve_path", "split_paths"]
