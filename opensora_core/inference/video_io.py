"""Video files with PyAV: h264 mp4 in yuv420p (what upstream's torchvision ``write_video`` makes),
or a PNG for a single frame. Files are written under a temporary name in the same folder and
renamed, so a reader never sees half a video.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in about [-1, 1] -> [T, H, W, 3] uint8, as upstream's ``save_sample``:
    clamp to [-1, 1], map to [0, 255], round half up."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a [3, T, H, W] video, got {list(video.shape)}")
    pixels = (video.float().clamp(-1, 1) + 1) / 2 * 255 + 0.5
    return pixels.clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()


def frames_sha256(frames: np.ndarray) -> str:
    """Digest of the raw pixels (shape included), to compare videos without the codec in between."""
    digest = hashlib.sha256(str(frames.shape).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()


def write_video(path: str | Path, frames: np.ndarray, fps: int = 24) -> Path:
    """Write [T, H, W, 3] uint8 frames: ``.png`` when T is 1 and the path ends in .png, else h264 mp4."""
    import av

    path = Path(path)
    count, height, width, channels = frames.shape
    if frames.dtype != np.uint8 or channels != 3:
        raise ValueError(f"expected [T, H, W, 3] uint8 frames, got {frames.dtype} {list(frames.shape)}")
    image = path.suffix == ".png"
    if image and count != 1:
        raise ValueError(f"a .png holds one frame, got {count}")
    if not image and (height % 2 or width % 2):
        raise ValueError(f"yuv420p needs an even height and width, got {height}x{width}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with av.open(str(tmp), "w", format="image2" if image else "mp4") as container:
            stream = container.add_stream("png" if image else "libx264", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "rgb24" if image else "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video or image file to [T, H, W, 3] uint8."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames)
