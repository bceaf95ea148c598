"""Open-Sora v1.2 networks: the STDiT3 transformer and the video VAE (diffusers is imported lazily)."""

from .stdit3 import STDiT3, STDiT3Config
from .vae import SDXL_VAE_CONFIG, VideoVAE, VideoVAEConfig
from .vae_temporal import TemporalVAE, TemporalVAEConfig

__all__ = [
    "SDXL_VAE_CONFIG",
    "STDiT3",
    "STDiT3Config",
    "TemporalVAE",
    "TemporalVAEConfig",
    "VideoVAE",
    "VideoVAEConfig",
]
