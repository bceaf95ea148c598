"""Video geometry for Open-Sora v1.2: pixel sizes, frame counts, latent sizes and token counts.

Torch-free on purpose: the CLI planner imports this module to size jobs without loading torch.

Conventions (as in the official code):
- aspect-ratio strings are H:W, so "9:16" is the *landscape* key 0.56 (720p -> 720x1280);
- the VAE compresses space by 8 (floor) and time by 4 within independent 17-frame chunks;
- STDiT3 patches latents by (1, 2, 2), padding odd latent heights/widths up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clusterkit.errors import InvalidChoice

from .aspect_tables import ASPECT_RATIO_MAP, ASPECT_RATIOS, NUM_FRAMES_MAP

__all__ = [
    "ASPECT_RATIO_MAP",
    "ASPECT_RATIOS",
    "IMAGE_RESOLUTIONS",
    "IMG_FPS",
    "NUM_FRAMES_MAP",
    "PATCH_SIZE",
    "RESOLUTIONS",
    "TRAINED_NUM_FRAMES",
    "UNTRAINED_LENGTHS",
    "VAE_MICRO_FRAMES",
    "VAE_SPATIAL_FACTOR",
    "VAE_TEMPORAL_FACTOR",
    "VideoGeometry",
    "aspect_ratio_choices",
    "get_closest_ratio",
    "get_image_size",
    "get_num_frames",
    "get_num_pixels",
    "is_trained_length",
    "latent_frames",
    "latent_size",
    "patch_grid",
    "sp_spatial_tokens",
    "video_geometry",
]

#: Video resolution names, smallest first (17 aspect keys each).
RESOLUTIONS: tuple[str, ...] = ("144p", "240p", "360p", "480p", "720p", "1080p", "2k", "4k")
#: PixArt-style image tables (40 aspect keys each); also valid ``resolution`` values.
IMAGE_RESOLUTIONS: tuple[str, ...] = ("256", "512", "1024", "2048", "2880")

VAE_SPATIAL_FACTOR = 8
VAE_TEMPORAL_FACTOR = 4
#: The VAE encodes pixel frames in independent chunks of this many frames (5 latent frames each).
VAE_MICRO_FRAMES = 17
#: STDiT3 patch size (T, H, W) on the latent grid.
PATCH_SIZE: tuple[int, int, int] = (1, 2, 2)
#: The fps the model is conditioned on for single images.
IMG_FPS = 120
#: Pixel frame counts v1.2 was trained on: image, 2s, 4s, 8s, 16s (docs/report_03.md). Other counts
#: run (the official code accepts any integer) but were never seen in training.
TRAINED_NUM_FRAMES: tuple[int, ...] = (1, 51, 102, 204, 408)
#: (resolution, frames) pairs the report marks as never trained although both parts were:
#: 480p 16s and 720p 8s/16s ("🆗" in report_03's support matrix).
UNTRAINED_LENGTHS: frozenset[tuple[str, int]] = frozenset({("480p", 408), ("720p", 204), ("720p", 408)})


def get_num_pixels(resolution: str) -> int:
    """The reference pixel count of a resolution table (e.g. 921600 for "720p")."""
    return _table(resolution)[0]


def aspect_ratio_choices(resolution: str) -> list[str]:
    """Every aspect-ratio value ``get_image_size`` accepts for ``resolution``: H:W strings, then keys."""
    keys = _table(resolution)[1]
    named = [name for name, key in ASPECT_RATIO_MAP.items() if key in keys]
    return named + list(keys)


def get_image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) in pixels for a resolution name and an H:W string ("9:16") or key ("0.56")."""
    keys = _table(resolution)[1]
    key = ASPECT_RATIO_MAP.get(aspect_ratio, aspect_ratio)
    if key not in keys:
        raise InvalidChoice(f"aspect ratio for {resolution}", aspect_ratio, aspect_ratio_choices(resolution))
    return keys[key]


def get_closest_ratio(height: int, width: int, resolution: str = "720p") -> str:
    """The key of ``resolution``'s table whose H/W ratio is nearest to height/width (first wins ties)."""
    ratio = height / width
    return min(_table(resolution)[1], key=lambda key: abs(float(key) - ratio))


def get_num_frames(value: str | int) -> int:
    """Pixel frame count for a named length ("2s", "4x", ...) or a positive integer (as int or str)."""
    if isinstance(value, str) and value in NUM_FRAMES_MAP:
        return NUM_FRAMES_MAP[value]
    count = None
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value)
    if count is None or count < 1:
        raise InvalidChoice("num_frames", value, [*NUM_FRAMES_MAP, "a positive integer"])
    return count


def latent_frames(num_frames: int, micro_frame_size: int | None = VAE_MICRO_FRAMES) -> int:
    """Latent frames the v1.2 VAE makes from ``num_frames`` pixel frames.

    Each chunk of ``micro_frame_size`` frames is encoded alone and front-padded to a multiple of 4,
    so T = 5*floor(n/17) + ceil((n mod 17)/4); without chunking T = ceil(n/4).
    """
    _check_positive("num_frames", num_frames)
    factor = VAE_TEMPORAL_FACTOR
    if micro_frame_size is None:
        return -(-num_frames // factor)
    _check_positive("micro_frame_size", micro_frame_size)
    full, rest = divmod(num_frames, micro_frame_size)
    return full * -(-micro_frame_size // factor) + -(-rest // factor)


def latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, H, W) of the VAE latent for a video of ``num_frames`` x ``height`` x ``width`` pixels."""
    _check_positive("height", height)
    _check_positive("width", width)
    return latent_frames(num_frames), height // VAE_SPATIAL_FACTOR, width // VAE_SPATIAL_FACTOR


def is_trained_length(num_frames: int) -> bool:
    """True when ``num_frames`` is a length v1.2 was trained on (see ``TRAINED_NUM_FRAMES``)."""
    return num_frames in TRAINED_NUM_FRAMES


def sp_spatial_tokens(patch_rows: int, patch_cols: int, sp: int) -> int:
    """Spatial tokens per frame that sequence parallelism of degree ``sp`` processes, padding included.

    SP splits each frame's S = H_p * W_p tokens across ``sp`` ranks. When S divides evenly it is
    split as is. Otherwise each frame gets the fewest padding tokens that make it divide, S
    rounded up to a multiple of ``sp`` (opensora_core.parallel.sequence: the padding is masked,
    so results equal the single-GPU ones). Upstream's final v1.2 code pads whole patch rows
    instead (commits ee1c79a/e369db2: up to sp - 1 rows, unmasked); the padded tokens cost
    compute and memory either way, far less here (480p at sp 4: 2 tokens, not 106).
    """
    for name, value in (("patch_rows", patch_rows), ("patch_cols", patch_cols), ("sp", sp)):
        _check_positive(name, value)
    tokens = patch_rows * patch_cols
    return -(-tokens // sp) * sp


def patch_grid(latent_t: int, latent_h: int, latent_w: int, patch_size=PATCH_SIZE) -> tuple[int, int, int]:
    """(T_p, H_p, W_p): STDiT3's patch grid; odd latent sizes are padded up, as PatchEmbed3D does."""
    return tuple(math.ceil(n / p) for n, p in zip((latent_t, latent_h, latent_w), patch_size))


@dataclass(frozen=True)
class VideoGeometry:
    """Every size the pipeline derives from one (num_frames, height, width) request."""

    num_frames: int
    height: int
    width: int
    latent: tuple[int, int, int]  # (T, H, W) after the VAE
    patches: tuple[int, int, int]  # (T_p, H_p, W_p) after patch embedding
    decoded: tuple[int, int, int]  # (T, H, W) the VAE decodes back (H, W rounded down to 8)

    @property
    def spatial_tokens(self) -> int:
        """S: tokens per frame, the sequence length of spatial attention."""
        return self.patches[1] * self.patches[2]

    @property
    def temporal_tokens(self) -> int:
        """T: tokens per spatial location, the sequence length of temporal attention."""
        return self.patches[0]

    @property
    def total_tokens(self) -> int:
        return self.spatial_tokens * self.temporal_tokens


def video_geometry(num_frames: int, height: int, width: int) -> VideoGeometry:
    """Sizes for a video of ``num_frames`` frames of ``height`` x ``width`` pixels."""
    latent = latent_size(num_frames, height, width)
    decoded = (num_frames, latent[1] * VAE_SPATIAL_FACTOR, latent[2] * VAE_SPATIAL_FACTOR)
    return VideoGeometry(num_frames, height, width, latent, patch_grid(*latent), decoded)


def _table(resolution: str) -> tuple[int, dict[str, tuple[int, int]]]:
    if resolution not in ASPECT_RATIOS:
        raise InvalidChoice("resolution", resolution, ASPECT_RATIOS)
    return ASPECT_RATIOS[resolution]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidChoice(name, value, ["a positive integer"])
