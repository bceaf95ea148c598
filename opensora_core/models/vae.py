"""The Open-Sora v1.2 video VAE (upstream ``VideoAutoencoderPipeline``, "OpenSora-VAE-v1.2").

Two stages, weight-compatible with the released ``model.safetensors``:
- ``spatial_vae``: the SDXL-layout diffusers ``AutoencoderKL`` applied to every frame (8x in space,
  latents scaled by 0.18215), in micro-batches of ``micro_batch_size`` frames;
- ``temporal_vae``: the causal 3D-conv VAE (4x in time) applied to independent chunks of 17 frames
  on encode and 5 latent frames on decode.
Latents are normalised per channel: z = (z_raw - shift) / scale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelInputError
from .vae_temporal import TemporalVAE, TemporalVAEConfig

__all__ = ["SDXL_VAE_CONFIG", "SpatialVAE", "TemporalVAE", "TemporalVAEConfig", "VideoVAE", "VideoVAEConfig"]

#: Where upstream takes the spatial VAE's architecture from (its weights live in the VAE file).
PIXART_SDXL_VAE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"

#: ``AutoencoderKL`` arguments of that repository's ``vae/config.json`` (the SDXL VAE layout).
SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

_HF_METADATA_KEYS = frozenset(
    {"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path", "from_pretrained"}
)


@dataclass(frozen=True)
class VideoVAEConfig:
    """Defaults are the released OpenSora-VAE-v1.2."""

    spatial: dict[str, Any] = field(default_factory=lambda: dict(SDXL_VAE_CONFIG))
    """diffusers ``AutoencoderKL`` constructor arguments."""
    temporal: TemporalVAEConfig = field(default_factory=TemporalVAEConfig)
    micro_batch_size: int | None = 4
    """Frames per spatial encode/decode call (None: all at once). Lower it to save memory."""
    micro_frame_size: int | None = 17
    """Pixel frames per independent temporal chunk (None: the whole clip at once)."""
    scale: tuple[float, ...] = (3.85, 2.32, 2.33, 3.06)
    shift: tuple[float, ...] = (-0.10, 0.34, 0.27, 0.98)
    scaling_factor: float = 0.18215
    """Spatial latent scale (the SD1.x constant upstream uses, not SDXL's 0.13025)."""
    freeze_vae_2d: bool = False
    """Training only: freeze the spatial VAE."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "shift", tuple(self.shift))
        for name in ("micro_batch_size", "micro_frame_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"VideoVAEConfig.{name}={value!r}: must be a positive integer or None")
        channels = self.temporal.embed_dim
        if len(self.scale) != channels or len(self.shift) != channels:
            raise ConfigError(
                f"VideoVAEConfig.scale/shift have {len(self.scale)}/{len(self.shift)} values; need {channels} "
                "(one per latent channel)"
            )
        if self.spatial.get("latent_channels", 4) != self.temporal.in_out_channels:
            raise ConfigError(
                f"VideoVAEConfig: spatial latent_channels={self.spatial.get('latent_channels', 4)} must equal "
                f"temporal in_out_channels={self.temporal.in_out_channels}"
            )

    @classmethod
    def from_hf_config(cls, data: dict[str, Any], folder: Path | None = None) -> VideoVAEConfig:
        """Parse upstream's config.json (model_type "VideoAutoencoderPipeline").

        ``vae_2d.from_pretrained`` names where the spatial architecture comes from: the PixArt
        repository id (the SDXL layout, built in) or a local diffusers folder (its config.json is
        read, relative paths first as given, then relative to ``folder``; weights are not read).
        """
        values = {k: v for k, v in data.items() if k not in _HF_METADATA_KEYS}
        if values.pop("cal_loss", False):
            raise ConfigError("VideoVAE config: cal_loss=true (VAE training outputs) is not supported")
        vae_2d = dict(values.pop("vae_2d", {}))
        vae_temporal = dict(values.pop("vae_temporal", {}))
        kwargs = {k: values.pop(k) for k in ("micro_frame_size", "scale", "shift", "freeze_vae_2d") if k in values}
        if values:
            raise ConfigError(f"VideoVAE config: unknown keys {sorted(values)}")
        return cls(
            spatial=_spatial_config(vae_2d, folder),
            temporal=_temporal_config(vae_temporal),
            micro_batch_size=vae_2d.get("micro_batch_size", 4),
            scaling_factor=vae_2d.get("scaling_factor", 0.18215),
            **kwargs,
        )


class SpatialVAE(nn.Module):
    """Per-frame diffusers ``AutoencoderKL`` (held as ``module``, as in the checkpoint names)."""

    def __init__(self, config: dict[str, Any], micro_batch_size: int | None, scaling_factor: float) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.module = AutoencoderKL(**config)
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = scaling_factor
        self.downsample = 2 ** (len(config.get("block_out_channels", (64,))) - 1)

    def encode(self, x: torch.Tensor, sample_posterior: bool = True, generator=None) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> [B, 4, T, H/8, W/8] (scaled)."""

        def encode_frames(frames):
            dist = self.module.encode(frames).latent_dist
            return (dist.sample(generator) if sample_posterior else dist.mode()) * self.scaling_factor

        return self._per_frame(x, encode_frames)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, 4, T, h, w] (scaled) -> [B, 3, T, 8h, 8w]."""
        return self._per_frame(z, self.decode_frames)

    def decode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """One micro-batch of frames [n, 4, h, w] (scaled) -> [n, 3, 8h, 8w]."""
        return self.module.decode(frames / self.scaling_factor).sample

    @staticmethod
    def flatten_frames(x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, h, w] -> [B*T, C, h, w], video by video, frame by frame."""
        batch, channels, frames = x.shape[:3]
        return x.transpose(1, 2).reshape(batch * frames, channels, *x.shape[3:])

    def micro_batches(self, count: int) -> list[slice]:
        """The micro-batches (slices of the flattened frames) one call each: ``micro_batch_size`` frames."""
        size = self.micro_batch_size or count
        return [slice(i, min(i + size, count)) for i in range(0, count, size)]

    def _per_frame(self, x: torch.Tensor, fn) -> torch.Tensor:
        batch, frames = x.shape[0], x.shape[2]
        flat = self.flatten_frames(x)
        out = torch.cat([fn(flat[rows]) for rows in self.micro_batches(flat.shape[0])])
        return out.view(batch, frames, *out.shape[1:]).transpose(1, 2)


class VideoVAE(nn.Module):
    """Video <-> normalised latent; parameter names match the released OpenSora-VAE-v1.2."""

    def __init__(self, config: VideoVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VideoVAEConfig()
        self.spatial_vae = SpatialVAE(config.spatial, config.micro_batch_size, config.scaling_factor)
        self.temporal_vae = TemporalVAE(config.temporal)
        self.register_buffer("scale", torch.tensor(config.scale).view(1, -1, 1, 1, 1))
        self.register_buffer("shift", torch.tensor(config.shift).view(1, -1, 1, 1, 1))
        if config.freeze_vae_2d:
            self.spatial_vae.requires_grad_(False)

    @property
    def micro_batch_size(self) -> int | None:
        """Frames per spatial VAE call; settable (e.g. lower it when decoding 720p on a small GPU)."""
        return self.spatial_vae.micro_batch_size

    @micro_batch_size.setter
    def micro_batch_size(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"micro_batch_size={value!r}: must be a positive integer or None")
        self.spatial_vae.micro_batch_size = value

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for ``num_frames`` pixel frames: 5*floor(n/17) + ceil((n mod 17)/4) by default."""
        micro = self.config.micro_frame_size
        if micro is None:
            return self.temporal_vae.latent_frames(num_frames)
        full, rest = divmod(num_frames, micro)
        return full * self.temporal_vae.latent_frames(micro) + (self.temporal_vae.latent_frames(rest) if rest else 0)

    def get_latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of the latent of a num_frames x height x width video."""
        factor = self.spatial_vae.downsample
        return self.latent_frames(num_frames), height // factor, width // factor

    def encode(self, x: torch.Tensor, *, sample_posterior: bool = True, generator=None) -> torch.Tensor:
        """[B, 3, T, H, W] pixels in [-1, 1] -> normalised latent [B, 4, T', H/8, W/8].

        Both stages sample their posterior, as upstream; ``sample_posterior=False`` takes the means.
        """
        if x.ndim != 5:
            raise ModelInputError(f"x must be [B, 3, T, H, W], got {list(x.shape)}")
        x_z = self.spatial_vae.encode(x, sample_posterior, generator)
        step = self.config.micro_frame_size or x_z.shape[2]
        chunks = []
        for start in range(0, x_z.shape[2], step):
            posterior = self.temporal_vae.encode(x_z[:, :, start : start + step])
            chunks.append(posterior.sample(generator) if sample_posterior else posterior.mean)
        z = torch.cat(chunks, dim=2)
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Normalised latent [B, 4, T', h, w] -> [B, 3, num_frames, 8h, 8w] pixels (about [-1, 1])."""
        if z.ndim != 5 or z.shape[2] != self.latent_frames(num_frames):
            raise ModelInputError(
                f"num_frames={num_frames} needs a latent of {self.latent_frames(num_frames)} frames, "
                f"got shape {list(z.shape)}"
            )
        return self.spatial_vae.decode(torch.cat(self.decode_temporal(z, num_frames), dim=2))

    def temporal_chunks(self, num_frames: int) -> list[tuple[int, int, int]]:
        """(first latent frame, latent frames, pixel frames) of every chunk the temporal VAE decodes
        on its own: 5 latent frames -> 17 pixel frames by default, the last chunk shorter."""
        micro = self.config.micro_frame_size or num_frames
        step = self.temporal_vae.latent_frames(micro)
        latent = self.latent_frames(num_frames)
        chunks, remaining = [], num_frames
        for start in range(0, latent, step):
            chunks.append((start, min(step, latent - start), min(micro, remaining)))
            remaining -= micro
        return chunks

    def decode_temporal(self, z: torch.Tensor, num_frames: int, chunks: list[int] | None = None) -> list[torch.Tensor]:
        """The temporal stage of ``decode``: normalised latent -> per-frame spatial latents, one tensor
        [B, 4, frames, h, w] per temporal chunk (only the chunks indexed by ``chunks`` when given)."""
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        plan = self.temporal_chunks(num_frames)
        wanted = range(len(plan)) if chunks is None else chunks
        return [self.temporal_vae.decode(z[:, :, start : start + n], pixels)
                for start, n, pixels in (plan[i] for i in wanted)]

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: VideoVAEConfig | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        micro_batch_size: int | None = None,
    ) -> VideoVAE:
        """Load strictly from an HF folder (config.json + model.safetensors, as hpcai-tech/OpenSora-VAE-v1.2)
        or a weights file; the config is ``config``, else the folder's config.json, else the release's.
        Needs no network: the spatial architecture is built in (or read from a local folder)."""
        from ..checkpoint import load_pretrained, read_config_json

        if config is None:
            config_json = read_config_json(path)
            config = VideoVAEConfig() if config_json is None else VideoVAEConfig.from_hf_config(config_json, Path(path))
        if micro_batch_size is not None:
            config = dataclasses.replace(config, micro_batch_size=micro_batch_size)
        widths = config.spatial.get("block_out_channels")
        what = f"VideoVAE(spatial widths {widths}, temporal filters {config.temporal.filters})"
        return load_pretrained(lambda: cls(config), path, what=what, dtype=dtype, device=device)


def _spatial_config(vae_2d: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    kind = vae_2d.get("type", "VideoAutoencoderKL")
    if kind != "VideoAutoencoderKL":
        raise ConfigError(f"VideoVAE config: vae_2d.type={kind!r} is not supported (only VideoAutoencoderKL)")
    source = vae_2d.get("from_pretrained") or PIXART_SDXL_VAE
    candidates = [Path(source)] + ([folder / source] if folder is not None else [])
    for base in candidates:
        config_path = base / (vae_2d.get("subfolder") or "") / "config.json"
        if config_path.is_file():
            data = json.loads(config_path.read_text())
            return {k: v for k, v in data.items() if not k.startswith("_")}
    if source == PIXART_SDXL_VAE:
        return dict(SDXL_VAE_CONFIG)
    raise ConfigError(
        f"VideoVAE config: vae_2d.from_pretrained={source!r} is neither {PIXART_SDXL_VAE!r} nor a local "
        "diffusers folder with a config.json"
    )


def _temporal_config(vae_temporal: dict[str, Any]) -> TemporalVAEConfig:
    kwargs = {k: v for k, v in vae_temporal.items() if k not in ("type", "from_pretrained")}
    kind = vae_temporal.get("type", "VAE_Temporal_SD")
    if kind == "VAE_Temporal_SD" and not kwargs:
        return TemporalVAEConfig()
    if kind == "VAE_Temporal":
        try:
            return TemporalVAEConfig(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"VideoVAE config: bad vae_temporal arguments: {exc}") from exc
    raise ConfigError(
        f"VideoVAE config: vae_temporal {vae_temporal!r} is not supported "
        "(VAE_Temporal_SD without arguments, or VAE_Temporal with its arguments)"
    )
