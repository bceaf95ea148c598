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

Or each component in a folder of its own, as upstream's demo takes them (``--ckpt-path-dit``,
``--ckpt-path-t5``, ``--ckpt-path-vae2d``, ``--ckpt-path-vae3d``: each a download of its repository);
one given beside ``--ckpt-dir`` replaces that component, and all four need no ``--ckpt-dir``.

``vae3d/model.safetensors`` holds the weights of both VAE stages (upstream loads the PixArt VAE
and then overwrites it with that file), so only the architecture is read from ``vae2d``.

``tiny`` is the same architecture with a few layers and channels. Without ``--ckpt-dir`` it is
randomly initialised from a fixed seed (written to a temporary folder in this layout and loaded
back through the same code); with one, it loads tiny-shaped weights from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError

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
  vae3d/  model.safetensors (+ config.json)        (hpcai-tech/OpenSora-VAE-v1.2)
or one folder per component (each a download of its repository; any given one replaces CKPT_DIR/<name>/):
  --ckpt-path-dit DIR --ckpt-path-t5 DIR --ckpt-path-vae2d DIR --ckpt-path-vae3d DIR"""

#: The command-line option naming each component's own folder (upstream's demo spellings).
COMPONENT_OPTIONS: dict[str, str] = {name: f"--ckpt-path-{name}" for name in COMPONENTS}
#: What a component's config.json says it is ("model_type", or diffusers' "_class_name"): a folder
#: given for the wrong component is named on the submit host, not by a shape mismatch on the node.
_DECLARED = {"STDiT3": "dit", "t5": "t5", "AutoencoderKL": "vae2d", "VideoAutoencoderPipeline": "vae3d"}

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

    def random_weights(self, ckpt_dir: str | Path | None, ckpt_paths: dict | None = None) -> bool:
        """True when a run with this preset, ``ckpt_dir`` and the component folders ``ckpt_paths``
        uses random weights (none of them given)."""
        return ckpt_dir is None and not ckpt_paths and self.weights_seed is not None


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
    """The four component folders of a checkpoint (each checked to exist)."""

    dit: Path
    t5: Path
    vae2d: Path
    vae3d: Path


def checkpoint_paths(
    ckpt_dir: str | Path | None = None,
    *,
    dit: str | Path | None = None,
    t5: str | Path | None = None,
    vae2d: str | Path | None = None,
    vae3d: str | Path | None = None,
) -> CheckpointPaths:
    """Check a checkpoint from file names (and what each config.json says it is; no weights are
    read) and return its component folders: each the folder given for it (``--ckpt-path-<name>``)
    or else ``ckpt_dir/<name>``. Every component must resolve; every missing component or file is
    named, with the option or sub-folder it came from, in one ``CheckpointNotFound`` whose hint
    shows the expected layout; corrupt files and wrong shapes are found when loading."""
    given = {name: path for name, path in (("dit", dit), ("t5", t5), ("vae2d", vae2d), ("vae3d", vae3d))
             if path is not None}
    root = None if ckpt_dir is None else Path(ckpt_dir).expanduser()
    if root is None:
        missing = [name for name in COMPONENTS if name not in given]
        if missing:
            options = ", ".join(f"{COMPONENT_OPTIONS[name]} DIR" for name in missing)
            raise CheckpointNotFound(
                f"no folder for the {', '.join(missing)} component{'s' if len(missing) > 1 else ''}: give "
                f"{options}, or --ckpt-dir DIR to supply {'them' if len(missing) > 1 else 'it'} as DIR/<name>/",
                hint=_layout_hint())
    elif not root.is_dir():
        raise CheckpointNotFound(f"checkpoint folder {str(root)!r} does not exist", hint=_layout_hint())
    folders = {name: Path(given[name]).expanduser() if name in given else root / name for name in COMPONENTS}
    problems = [problem for name in COMPONENTS
                for problem in _component_problems(name, folders[name], name in given)]
    if problems:
        from_root = any(not p.startswith("--") for p in problems)
        where = f"checkpoint folder {str(root)!r}: " if from_root else ""
        raise CheckpointNotFound(where + "; ".join(problems), hint=_layout_hint())
    return CheckpointPaths(**folders)


def checkpoint_overrides(ckpt_paths: dict | None) -> dict[str, str]:
    """``ckpt_paths`` (component name -> folder) checked for names and types, in component order:
    the keyword arguments of ``checkpoint_paths``."""
    if ckpt_paths is None:
        return {}
    if not isinstance(ckpt_paths, dict):
        raise UserError(f"ckpt_paths {ckpt_paths!r} must map components ({', '.join(COMPONENTS)}) to folders")
    for name in ckpt_paths:
        if name not in COMPONENTS:
            raise InvalidChoice("ckpt_paths component", name, tuple(COMPONENTS))
    out = {}
    for name in COMPONENTS:
        if name in ckpt_paths:
            value = ckpt_paths[name]
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{COMPONENT_OPTIONS[name]} {value!r} must be a folder path")
            out[name] = value
    return out


def describe_checkpoint(ckpt_dir: str | Path | None, ckpt_paths: dict | None) -> str:
    """Where the weights come from, for logs and the index: the folder, or each component's folder
    when some are given on their own."""
    if not ckpt_paths:
        return str(ckpt_dir)
    return ", ".join(f"{name} {ckpt_paths.get(name) or Path(ckpt_dir) / name}" for name in COMPONENTS)


def _component_problems(name: str, folder: Path, given: bool) -> list[str]:
    """What is wrong with ``folder`` as component ``name``: named by its option (``given``) or as
    the sub-folder of the checkpoint folder."""
    label = f"{COMPONENT_OPTIONS[name]} {str(folder)!r}" if given else f"{name}/"
    repo = f" (a download of {COMPONENTS[name]})" if given else ""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        return [f"{label} {what} ({COMPONENTS[name]})" if given else f"{name}/ is missing ({COMPONENTS[name]})"]
    declared = _declared_component(folder, name)
    if declared is not None and declared != name:
        return [f"{label} holds the {declared} component ({COMPONENTS[declared]}), not {name}{repo}"]
    problems = []
    need = {"dit": _DIT_WEIGHTS, "t5": T5_WEIGHT_FILES, "vae3d": _VAE3D_WEIGHTS}.get(name)
    if need is not None and not _has_any(folder, need):
        problems.append(f"{label} has no weights (expected one of {', '.join(need)}){repo}")
    if name == "t5":
        if not (folder / "config.json").is_file():
            problems.append(f"{label} has no config.json{repo}" if given else "t5/config.json is missing")
        if not _has_any(folder, _T5_TOKENIZER):
            problems.append(f"{label} has no tokenizer (expected {' or '.join(_T5_TOKENIZER)}){repo}")
    if name == "vae2d" and spatial_vae_config_path(folder) is None:
        problems.append(f"{label} has neither vae/config.json nor config.json{repo}")
    return problems


def _declared_component(folder: Path, name: str) -> str | None:
    """The component ``folder``'s config.json declares itself to be (None: no config or no known type;
    an unreadable one is reported when loading)."""
    path = spatial_vae_config_path(folder) if name == "vae2d" else folder / "config.json"
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("model_type", data.get("_class_name"))
    return _DECLARED.get(kind) if isinstance(kind, str) else None


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
