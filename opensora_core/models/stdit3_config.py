"""``STDiT3Config``: the official config.json fields of STDiT3, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# Keys transformers writes into config.json that describe the file, not the model.
_HF_METADATA_KEYS = frozenset({"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path"})


@dataclass(frozen=True)
class STDiT3Config:
    """STDiT3 hyper-parameters. Defaults are STDiT3-XL/2 (hpcai-tech/OpenSora-STDiT-v3)."""

    input_size: tuple = (None, None, None)
    """Unused by STDiT3 (sizes are dynamic); kept because config.json has it."""
    input_sq_size: int = 512
    """Reference side length for the position-embedding scale: sqrt(height*width)/input_sq_size."""
    in_channels: int = 4
    """Latent channels (the VAE's)."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(T, H, W) patch on the latent grid."""
    hidden_size: int = 1152
    depth: int = 28
    """Number of spatial blocks; there are as many temporal blocks."""
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    """Training only: probability of replacing a caption by the learned null caption."""
    pred_sigma: bool = True
    """Doubles the output channels; only the first ``in_channels`` (the velocity) are used."""
    drop_path: float = 0.0
    """Training only: stochastic-depth rate, linearly increasing over the blocks up to this value."""
    caption_channels: int = 4096
    """Text-encoder width (T5-XXL)."""
    model_max_length: int = 300
    """Caption tokens; the size of the stored null caption ``y_embedding``."""
    qk_norm: bool = True
    """Per-head RMS norm on queries and keys of self-attention."""
    enable_flash_attn: bool = False
    """Use the flash-attn package for self-attention where importable and supported."""
    enable_layernorm_kernel: bool = False
    """Accepted for config compatibility; torch's own layer_norm kernel is always used (no apex)."""
    enable_sequence_parallelism: bool = False
    """Must be False: sequence parallelism is chosen per run (``opensora_core.parallel``), not stored in the model."""
    only_train_temporal: bool = False
    """Training only: freeze everything except the temporal blocks."""
    freeze_y_embedder: bool = False
    """Training only: freeze the caption projection."""
    skip_y_embedder: bool = False
    """``y`` is already projected and packed ([1, sum(L), hidden]); ``mask`` then holds the lengths."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        for field in dataclasses.fields(self):
            if field.type == "bool" and not isinstance(getattr(self, field.name), bool):
                raise ConfigError(f"STDiT3Config.{field.name}={getattr(self, field.name)!r}: must be true or false")
        for name in ("input_sq_size", "in_channels", "hidden_size", "depth", "num_heads", "caption_channels",
                     "model_max_length"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"STDiT3Config.{name}={value!r}: must be a positive integer")
        if len(self.patch_size) != 3 or not all(isinstance(p, int) and p >= 1 for p in self.patch_size):
            raise ConfigError(f"STDiT3Config.patch_size={self.patch_size!r}: must be three positive integers (T, H, W)")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"STDiT3Config.hidden_size={self.hidden_size}: must be divisible by num_heads={self.num_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"STDiT3Config.num_heads={self.num_heads}: head_dim {self.hidden_size // self.num_heads} "
                "must be even for the rotary embedding"
            )
        if self.hidden_size % 4:
            raise ConfigError(f"STDiT3Config.hidden_size={self.hidden_size}: must be divisible by 4 (2D sin-cos)")
        if not _is_number(self.mlp_ratio) or self.mlp_ratio <= 0:
            raise ConfigError(f"STDiT3Config.mlp_ratio={self.mlp_ratio!r}: must be a number > 0")
        for name in ("class_dropout_prob", "drop_path"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"STDiT3Config.{name}={value!r}: must be a number in [0, 1)")
        if self.enable_sequence_parallelism:
            raise ConfigError(
                "STDiT3Config.enable_sequence_parallelism=True: not supported; sequence parallelism is a "
                "property of the run, not of the model (ParallelLayout in opensora_core.parallel, --sp of "
                "clusterkit submit infer)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> STDiT3Config:
        """Build from config.json contents; file metadata keys are skipped, unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in {**data, **overrides}.items() if k not in _HF_METADATA_KEYS}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"STDiT3Config: unknown keys {unknown}; valid keys: {sorted(fields)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """config.json contents in the official layout (loadable by the reference code too)."""
        data = {"architectures": ["STDiT3"], "model_type": "STDiT3"}
        data.update({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()})
        data["torch_dtype"] = "float32"
        return data


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
