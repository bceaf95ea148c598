"""Building the three networks of a preset from a checkpoint folder (see ``opensora_core.presets``).

Everything is checked before weights are allocated: the folder layout (file names), the T5 width
against the transformer's caption width (config.json only), then each component strictly by
tensor names and shapes (``CheckpointMismatch`` names the first bad key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from opensora_core.checkpoint import save_hf_folder
from opensora_core.errors import CheckpointFormatError, CheckpointMismatch
from opensora_core.models.stdit3 import STDiT3, STDiT3Config
from opensora_core.models.text_encoder import T5TextEncoder, save_tiny_t5
from opensora_core.models.vae import TemporalVAEConfig, VideoVAE, VideoVAEConfig
from opensora_core.presets import ModelPreset, checkpoint_paths, spatial_vae_config_path


@dataclass
class Models:
    """The loaded networks of one run."""

    stdit3: STDiT3
    vae: VideoVAE
    text_encoder: T5TextEncoder | None
    """None on ranks that receive their caption embeddings from their group's first rank."""


def load_models(
    preset: ModelPreset,
    ckpt_dir: str | Path | None,
    *,
    ckpt_paths: Mapping[str, str | Path] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    t5_dtype: torch.dtype = torch.float32,
    t5_device: str | torch.device = "cpu",
    vae_micro_batch: int | None = 4,
    flash_attn: bool = False,
    text_encoder: bool = True,
) -> Models:
    """Load ``preset``'s shapes from ``ckpt_dir``, each component from its own folder where
    ``ckpt_paths`` (dit, t5, vae2d, vae3d -> folder) gives one; transformer and VAE in ``dtype``
    on ``device``, the text encoder in ``t5_dtype`` on ``t5_device`` (not at all with
    ``text_encoder=False``); all in eval mode."""
    paths = checkpoint_paths(ckpt_dir, **(ckpt_paths or {}))
    stdit3_config = STDiT3Config(**{**preset.stdit3_config, "enable_flash_attn": flash_attn})
    stdit3 = STDiT3.from_pretrained(paths.dit, stdit3_config, dtype=dtype, device=device)
    _check_t5_width(paths.t5, stdit3_config.caption_channels, preset.name)
    vae_config = VideoVAEConfig(
        spatial=read_spatial_vae_config(paths.vae2d),
        temporal=TemporalVAEConfig(**preset.temporal_vae_config),
        micro_batch_size=vae_micro_batch,
    )
    vae = VideoVAE.from_pretrained(paths.vae3d, vae_config, dtype=dtype, device=device)
    encoder = None
    if text_encoder:
        encoder = T5TextEncoder.from_pretrained(
            paths.t5, dtype=t5_dtype, device=t5_device, max_length=stdit3_config.model_max_length
        )
    return Models(stdit3=stdit3, vae=vae, text_encoder=encoder)


def read_spatial_vae_config(vae2d: Path) -> dict:
    """``AutoencoderKL`` arguments from the vae2d component's diffusers config.json."""
    path = spatial_vae_config_path(vae2d)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object")
    return {key: value for key, value in data.items() if not key.startswith("_")}  # "_class_name", ...


def save_random_checkpoint(folder: str | Path, preset: ModelPreset) -> Path:
    """Write ``preset`` with random weights (seeded by ``preset.weights_seed``) in the checkpoint
    layout ``load_models`` reads. Same files on every machine with the same torch; the global RNG
    is left untouched."""
    if preset.weights_seed is None or preset.spatial_vae_config is None:
        raise ValueError(f"preset {preset.name} has no random-weights recipe")
    folder = Path(folder)
    spatial = dict(preset.spatial_vae_config)
    temporal = TemporalVAEConfig(**preset.temporal_vae_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.weights_seed)
        STDiT3(STDiT3Config(**preset.stdit3_config)).save_pretrained(folder / "dit")
        vae = VideoVAE(VideoVAEConfig(spatial=spatial, temporal=temporal))
    (folder / "vae2d" / "vae").mkdir(parents=True, exist_ok=True)
    (folder / "vae2d" / "vae" / "config.json").write_text(
        json.dumps({"_class_name": "AutoencoderKL", **spatial}, indent=2) + "\n"
    )
    vae3d_config = {
        "architectures": ["VideoAutoencoderPipeline"], "model_type": "VideoAutoencoderPipeline",
        "micro_frame_size": 17, "scale": list(vae.config.scale), "shift": list(vae.config.shift),
        "vae_2d": {"type": "VideoAutoencoderKL", "from_pretrained": "../vae2d", "subfolder": "vae",
                   "micro_batch_size": 4, "local_files_only": True},
        "vae_temporal": {"type": "VAE_Temporal", "from_pretrained": None, **preset.temporal_vae_config},
    }
    save_hf_folder(folder / "vae3d", vae3d_config, vae.state_dict())
    save_tiny_t5(folder / "t5", d_model=preset.caption_channels, seed=preset.weights_seed)
    return folder


def _check_t5_width(t5: Path, caption_channels: int, model: str) -> None:
    """The encoder's width must be the transformer's caption width; checked from config.json
    before anything is loaded (T5-XXL alone is ~19 GB)."""
    path = t5 / "config.json"
    try:
        d_model = json.loads(path.read_text()).get("d_model")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointFormatError(f"cannot parse {path}: {exc}") from exc
    if d_model != caption_channels:
        raise CheckpointMismatch(
            f"{path}: d_model={d_model!r} but the {model} transformer takes captions of width {caption_channels}",
            hint="t5/ (or --ckpt-path-t5) must hold the text encoder the transformer was trained with "
                 "(DeepFloyd/t5-v1_1-xxl: 4096)",
        )
