"""The per-sample metadata STDiT3 and the sampler are conditioned on (upstream's "STDiT2" info)."""

from __future__ import annotations

import torch

from .geometry import IMG_FPS


def video_conditions(
    batch_size: int,
    height: int,
    width: int,
    num_frames: int,
    fps: float = 24,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """``height``, ``width`` (pixels), ``num_frames``, ``fps`` and ``ar`` (H/W) as [batch_size] tensors.

    Images (num_frames == 1) are conditioned on fps 120, as upstream. ``dtype`` is the model dtype;
    upstream builds these in it, which slightly changes the timestep shift in bf16 (kept on purpose).
    """
    fps = fps if num_frames > 1 else IMG_FPS
    values = {"height": height, "width": width, "num_frames": num_frames, "fps": fps, "ar": height / width}
    return {name: torch.full((batch_size,), float(v), dtype=dtype, device=device) for name, v in values.items()}
