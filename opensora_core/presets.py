"""Model presets and the checkpoint folder layout (torch-free: the CLI checks both before launching).

A preset fixes the *shapes* of the four components; the weights come from a checkpoint folder
(``--ckpt-dir``) holding one sub-folder per component, as the official downloads are laid out
(the Enflame guide's separate dit / t5 / vae2d / vae3d paths)::

    CKPT_DIR/
      dit/     hpcai-tech/OpenSora-STDiT-v3           config.json, model.safetensors
      t5/      DeepFloyd/t5-v1_1-xxl                  config.json, weights (+ index), tokenizer files
      vae2d/   PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers
                                                      vae/config.json (the spatial VAE's architecture)
      vae3d/   hpcai-tech/OpenSora-VAE-v1.2           config.json, model.safetensors

``vae3d/model.safetensors`` holds the weights of both VAE stages (upstream loads the PixArt VAE
and then overwrites it with that file), so only the architecture is read from ``vae2d``.

``tiny`` is the same architecture with a few layers and channels. Without ``--ckpt-dir`` it is
randomly initialised from a fixed seed (written to a temporary folder in this layout and loaded
back through the same code); with one, it loads tiny-shaped weights from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice

from .errors import CheckpointNotFound

COMPONENTS: dict[str, str] = {
    "dit": "hpcai-tech/OpenSora-STDiT-v3",
    "t5": "DeepFloyd/t5-v1_1-xxl",
    "vae2d": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
    "vae3d": "hpcai-tech/OpenSora-VAE-v1.2",
}

LAYOUT = """\
CKPT_DIR/
  dit/    config.json + model.safetensors          (hpcai-tech/OpenSora-STDiT-v3)
  t5/     config.json + weights + tokenizer files  (DeepFloyd/t5-v1_1-xxl)
  vae2d/  vae/config.json (or config.json)         (PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers)
  vae3d/  model.safetensors (+ config.json)        (hpcai-tech/OpenSora-VAE-v1.2)"""

_DIT_WEIGHTS = ("model.safetensors", "*.index.json", "*.safetensors", "*.pt", "*.pth", "*.bin", "model/")
#: The weight files transformers reads from a T5 folder, in its order of preference.
T5_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
_T5_TOKENIZER = ("tokenizer.json", "spiece.model")
_VAE3D_WEIGHTS = ("model.safetensors", "*.safetensors", "*.pt", "*.pth", "*.bin")


@dataclass(frozen=True)
class ModelPreset:
    """The shapes of one model family; ``*_config`` are constructor keyword arguments."""

    name: str
    summary: str
    stdit3_config: dict = field(default_factory=dict)
    """``STDiT3Config`` arguments (empty: STDiT3-XL/2)."""
    temporal_vae_config: dict = field(default_factory=dict)
    """``TemporalVAEConfig`` arguments (empty: the released VAE_Temporal_SD)."""
    spatial_vae_config: dict | None = None
    """``AutoencoderKL`` arguments the tiny weights are built with (the real ones come from vae2d)."""
    weights_seed: int | None = None
    """Seed of the random weights when no checkpoint folder is given (None: a folder is required)."""
    default_dtype: str = "bf16"

    @property
    def caption_channels(self) -> int:
        return self.stdit3_config.get("caption_channels", 4096)

    def random_weights(self, ckpt_dir: str | Path | None) -> bool:
        """True when a run with this preset and ``ckpt_dir`` uses random weights."""
        return ckpt_dir is None and self.weights_seed is not None


OPENSORA_V12 = ModelPreset(
    name="opensora-v1.2",
    summary="Open-Sora 1.2 (STDiT3-XL/2, T5-XXL, OpenSora-VAE-v1.2): official weights from --ckpt-dir",
)

TINY = ModelPreset(
    name="tiny",
    summary="the same architecture with 2+2 blocks and a few channels, random weights: for testing the pipeline",
    stdit3_config=dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=300),
    temporal_vae_config=dict(filters=8, num_res_blocks=1, num_groups=4),
    spatial_vae_config=dict(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
        norm_num_groups=4, act_fn="silu", latent_channels=4, sample_size=64,
    ),
    weights_seed=0,
    default_dtype="fp32",
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (TINY, OPENSORA_V12)}
MODEL_CHOICES: tuple[str, ...] = tuple(PRESETS)


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise InvalidChoice("--model", name, MODEL_CHOICES)
    return PRESETS[name]


@dataclass(frozen=True)
class CheckpointPaths:
    """The four component folders of a checkpoint folder (each checked to exist)."""

    dit: Path
    t5: Path
    vae2d: Path
    vae3d: Path


def checkpoint_paths(ckpt_dir: str | Path) -> CheckpointPaths:
    """Check the layout of ``ckpt_dir`` from file names only (no weights are read) and return its
    component folders. Every missing component or file is named in one ``CheckpointNotFound``
    whose hint shows the expected layout; corrupt files and wrong shapes are found when loading."""
    root = Path(ckpt_dir).expanduser()
    if not root.is_dir():
        raise CheckpointNotFound(f"checkpoint folder {str(root)!r} does not exist", hint=_layout_hint())
    problems = []
    for name, need in (("dit", _DIT_WEIGHTS), ("t5", T5_WEIGHT_FILES), ("vae3d", _VAE3D_WEIGHTS)):
        folder = root / name
        if not folder.is_dir():
            problems.append(f"{name}/ is missing ({COMPONENTS[name]})")
        elif not _has_any(folder, need):
            problems.append(f"{name}/ has no weights (expected one of {', '.join(need)})")
    t5 = root / "t5"
    if t5.is_dir():
        if not (t5 / "config.json").is_file():
            problems.append("t5/config.json is missing")
        if not _has_any(t5, _T5_TOKENIZER):
            problems.append(f"t5/ has no tokenizer (expected {' or '.join(_T5_TOKENIZER)})")
    vae2d = root / "vae2d"
    if not vae2d.is_dir():
        problems.append(f"vae2d/ is missing ({COMPONENTS['vae2d']})")
    elif spatial_vae_config_path(vae2d) is None:
        problems.append("vae2d/ has neither vae/config.json nor config.json")
    if problems:
        raise CheckpointNotFound(f"checkpoint folder {str(root)!r}: " + "; ".join(problems), hint=_layout_hint())
    return CheckpointPaths(dit=root / "dit", t5=t5, vae2d=vae2d, vae3d=root / "vae3d")


def spatial_vae_config_path(vae2d: Path) -> Path | None:
    """The diffusers config.json of the spatial VAE: the PixArt repository's ``vae/`` sub-folder,
    or the VAE folder itself."""
    for candidate in (vae2d / "vae" / "config.json", vae2d / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def _has_any(folder: Path, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.endswith("/"):
            if (folder / pattern[:-1]).is_dir():
                return True
        elif any(p.is_file() for p in folder.glob(pattern)):
            return True
    return False


def _layout_hint() -> str:
    return f"expected layout:\n{LAYOUT}\nsee docs/inference.md for the download commands"
