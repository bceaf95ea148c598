"""``TrainConfig``: every setting of a training run, validated on construction (torch-free).

A run's config comes from the ``config:`` mapping of a ``jobs/train-*.yaml`` preset, overridden by
command-line flags (``clusterkit train --set lr=2e-5 ...``), and travels to the ranks as
``train_config.json`` in the run folder. Every rule a user can break raises a ``ConfigError``
naming the field, the value and the rule.

The bucket table follows Open-Sora's ``bucket_config`` (seed 002, facts §6):
``{resolution: {num_frames: (keep_prob, batch_size)}}`` where ``keep_prob`` is a probability or a
pair ``(p_resolution, p_frames)``, and ``(0.0, None)`` disables an entry. YAML writes the tuples as
lists: ``"240p": {51: [0.4, 20], 102: [[0.4, 0.33], 10], 408: [0.0, null]}``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..geometry import ASPECT_RATIOS

PLUGINS: tuple[str, ...] = ("zero2", "ddp", "colossalai-zero2")
TRAIN_DTYPES: tuple[str, ...] = ("bf16", "fp32")
MODELS: tuple[str, ...] = ("tiny", "opensora-v1.2")
#: Upstream's mask types (``MaskGenerator``; "intepolate" is spelled as upstream spells it).
MASK_TYPES: tuple[str, ...] = (
    "identity", "quarter_random", "quarter_head", "quarter_tail", "quarter_head_tail",
    "image_random", "image_head", "image_tail", "image_head_tail", "random", "intepolate",
)  # fmt: skip

KeepProb = float | tuple[float, float]


@dataclass(frozen=True)
class BucketEntry:
    """One (resolution, num_frames) entry of the bucket table."""

    keep_prob: KeepProb
    """Probability to keep a sample in this bucket; a pair is (p_resolution, p_frames)."""
    batch_size: int | None
    """Samples per GPU per step; None (with keep_prob 0.0) disables the entry."""

    @property
    def enabled(self) -> bool:
        return self.batch_size is not None

    def to_list(self) -> list:
        keep = list(self.keep_prob) if isinstance(self.keep_prob, tuple) else self.keep_prob
        return [keep, self.batch_size]


BucketTable = dict[str, dict[int, BucketEntry]]


def parse_bucket_config(raw: Any, what: str = "buckets") -> BucketTable:
    """Validate a ``bucket_config`` mapping (YAML/JSON lists for tuples) into a ``BucketTable``.

    The insertion order of resolutions is kept: it breaks ties between resolutions of equal pixel
    count, as upstream's stable sort does.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{what} must be a non-empty mapping {{resolution: {{num_frames: [keep_prob, batch_size]}}}}, "
                          f"got {raw!r}")
    table: BucketTable = {}
    for resolution, frames in raw.items():
        resolution = str(resolution)
        if resolution not in ASPECT_RATIOS:
            from clusterkit.errors import did_you_mean

            hint = did_you_mean(resolution, ASPECT_RATIOS)
            raise ConfigError(
                f"{what}: resolution {resolution!r} is not valid; valid resolutions: {', '.join(ASPECT_RATIOS)}"
                + (f". Did you mean {hint!r}?" if hint else "")
            )
        if not isinstance(frames, dict) or not frames:
            raise ConfigError(f"{what}[{resolution!r}] must be a non-empty mapping {{num_frames: [keep_prob, batch_size]}}, "
                              f"got {frames!r}")
        entries: dict[int, BucketEntry] = {}
        for key, value in frames.items():
            num_frames = _frame_key(key, f"{what}[{resolution!r}]")
            entries[num_frames] = _bucket_entry(value, f"{what}[{resolution!r}][{num_frames}]", num_frames)
        table[resolution] = entries
    if not any(e.enabled for entries in table.values() for e in entries.values()):
        raise ConfigError(f"{what}: every entry is disabled ((0.0, None)); nothing could be trained")
    return table


def bucket_table_to_dict(table: BucketTable) -> dict:
    """The JSON/YAML form (lists for tuples, string frame keys for JSON)."""
    return {res: {str(k): e.to_list() for k, e in entries.items()} for res, entries in table.items()}


def _frame_key(key: Any, where: str) -> int:
    if isinstance(key, bool):
        raise ConfigError(f"{where}: frame key {key!r} must be a positive integer (1 = images)")
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if not isinstance(key, int) or key < 1:
        raise ConfigError(f"{where}: frame key {key!r} must be a positive integer (1 = images)")
    return key


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: probability {value!r} must be a number in [0, 1]")
    return float(value)


def _bucket_entry(value: Any, where: str, num_frames: int) -> BucketEntry:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where} must be [keep_prob, batch_size] (e.g. [1.0, 8] or [0.0, null]), got {value!r}")
    keep, batch = value
    if isinstance(keep, (list, tuple)):
        if len(keep) != 2:
            raise ConfigError(f"{where}: keep_prob {keep!r} must be a number or [p_resolution, p_frames]")
        if num_frames == 1:
            raise ConfigError(f"{where}: images (frame key 1) take a single keep_prob, not {list(keep)!r} "
                              "(upstream compares it to a number)")
        keep = (_probability(keep[0], where), _probability(keep[1], where))
    else:
        keep = _probability(keep, where)
    if batch is None:
        if (keep[0] if isinstance(keep, tuple) else keep) != 0.0:
            raise ConfigError(f"{where}: batch_size null disables the entry and needs keep_prob 0.0, "
                              f"got keep_prob {value[0]!r}", hint="write [0.0, null] to disable it")
    elif isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}: batch_size {batch!r} must be a positive integer, or null with keep_prob 0.0")
    return BucketEntry(keep_prob=keep, batch_size=batch)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Field docstrings say what each setting does; upstream's v1.2 values are
    the defaults unless a field says otherwise."""

    name: str = "train"
    """A label for the run (the preset's name), shown in logs and the result."""
    model: str = "tiny"
    """Model shapes: ``opensora-v1.2`` (STDiT3-XL/2, T5-XXL, the v1.2 VAE) or ``tiny``."""
    ckpt_dir: str | None = None
    """Folder with dit/ t5/ vae2d/ vae3d/ (docs/inference.md); the VAE and T5 come from it. ``tiny``
    may leave it unset: random weights from the preset's seed."""
    init: str = "random"
    """Initial STDiT3 weights: ``random`` (seeded by ``seed``), ``pretrained`` (ckpt_dir/dit) or a
    path ``STDiT3.from_pretrained`` reads (upstream's ``--ckpt-path``)."""
    data: str | None = None
    """The CSV (columns path, text; num_frames, height, width, fps are probed when missing)."""
    frame_interval: int = 1
    """Take every n-th frame; a bucket of k frames then needs videos longer than k*n frames."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: decode in the training process)."""
    probe_cache: str | None = None
    """Where probed metadata is cached (default: ``<csv>.probe.json`` beside the CSV, else in the run)."""
    buckets: dict = field(default_factory=lambda: {"144p": {1: (1.0, 4), 51: (1.0, 1)}})
    """The bucket table (see the module docstring)."""
    mask_ratios: dict = field(default_factory=dict)
    """Probability of each mask type (upstream ``mask_ratios``); ``identity`` gets the rest."""
    plugin: str = "zero2"
    """``zero2`` (FSDP2, ZeRO-2-like: gradients and optimizer state sharded, parameters kept between
    forward and backward), ``ddp``, or ``colossalai-zero2`` (needs the colossalai extra)."""
    dtype: str = "bf16"
    """Compute precision: ``bf16`` autocast over fp32 master weights, or ``fp32``."""
    grad_checkpoint: bool = True
    """Recompute every block's activations in the backward pass."""
    freeze_y_embedder: bool = False
    """Do not train the caption projection (upstream's stages 1-3 freeze it)."""
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_eps: float = 1e-15
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    warmup_steps: int = 0
    """Linear warm-up: lr * (step + 1) / (warmup_steps + 1) for the first steps, then constant."""
    ema_decay: float = 0.99
    seed: int = 42
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: after ``epochs``)."""
    epochs: int = 1000
    ckpt_every: int = 200
    """Save a checkpoint every this many steps (and at the end, and on the preemption signal)."""
    keep_last: int | None = 3
    """Checkpoints kept (the newest ones; at least 2: the newest may be mid-write). None: all."""
    log_every: int = 10
    """Write loss, step time, samples/s and memory to the rank log every this many steps."""
    vae_micro_batch: int | None = 4
    """Frames per spatial VAE call while encoding."""
    transform_scale: float = 1.0
    """Scale of the resolution/length-aware timestep shift."""
    min_step_s: float = 0.0
    """Pad every step to at least this many seconds (0: off). A test knob: it makes a job reach its
    time limit at a predictable step."""
    bucket_table: BucketTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _choice("model", self.model, MODELS)
        _choice("plugin", self.plugin, PLUGINS)
        _choice("dtype", self.dtype, TRAIN_DTYPES)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name={self.name!r}: must be a non-empty string")
        if not isinstance(self.init, str) or not self.init:
            raise ConfigError(f"init={self.init!r}: must be random, pretrained or a path to STDiT3 weights")
        if self.init == "pretrained" and self.ckpt_dir is None:
            raise ConfigError("init=pretrained loads ckpt_dir/dit, but ckpt_dir is not set",
                              hint="set ckpt_dir, or init to a path to STDiT3 weights, or init=random")
        if self.model == "opensora-v1.2" and self.ckpt_dir is None:
            raise ConfigError("model=opensora-v1.2 needs ckpt_dir (its T5 and VAE weights)",
                              hint="--ckpt-dir DIR with dit/ t5/ vae2d/ vae3d/ (docs/inference.md)")
        for name in ("frame_interval", "epochs", "ckpt_every", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("num_workers", "warmup_steps"):
            _nonnegative_int(name, getattr(self, name))
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if self.vae_micro_batch is not None:
            _positive_int("vae_micro_batch", self.vae_micro_batch)
        if self.keep_last is not None:
            if isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 2:
                raise ConfigError(f"keep_last={self.keep_last!r}: must be an integer >= 2 (or null to keep all): "
                                  "the newest checkpoint may be mid-write when the job dies, so one more is needed")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r}: must be a non-negative integer")
        for name in ("lr", "adam_eps"):
            _number(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("weight_decay", "grad_clip", "min_step_s"):
            _number(name, getattr(self, name), low=0.0)
        _number("transform_scale", self.transform_scale, low=0.0, low_open=True)
        _number("ema_decay", self.ema_decay, low=0.0)
        if self.ema_decay >= 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay!r}: must be in [0, 1)")
        for name in ("grad_checkpoint", "freeze_y_embedder"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be true or false")
        object.__setattr__(self, "mask_ratios", check_mask_ratios(self.mask_ratios))
        table = parse_bucket_config(self.buckets)
        object.__setattr__(self, "bucket_table", table)
        object.__setattr__(self, "buckets", bucket_table_to_dict(table))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict, *, what: str = "train config") -> TrainConfig:
        """Build from a mapping; unknown keys are an error with a did-you-mean."""
        if not isinstance(data, dict):
            raise ConfigError(f"{what} must be a mapping of settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in data if k not in valid]
        if unknown:
            from clusterkit.errors import did_you_mean

            key = unknown[0]
            guess = did_you_mean(str(key), valid)
            raise ConfigError(f"{what}: unknown setting {key!r}" + (f" (did you mean {guess!r}?)" if guess else "")
                              + f"; valid settings: {', '.join(valid)}")
        return cls(**data)

    def with_overrides(self, overrides: dict) -> TrainConfig:
        """A copy with some settings replaced (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides}, what="override")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # ------------------------------------------------------------------ derived
    @property
    def max_batch_size(self) -> int:
        return max(e.batch_size for entries in self.bucket_table.values() for e in entries.values() if e.enabled)

    def largest_bucket(self) -> tuple[str, int]:
        """(resolution, num_frames) with the most pixels x frames among enabled entries (for the planner)."""
        candidates = [(ASPECT_RATIOS[res][0] * frames, res, frames)
                      for res, entries in self.bucket_table.items() for frames, e in entries.items() if e.enabled]
        _, res, frames = max(candidates)
        return res, frames


def check_mask_ratios(ratios: Any) -> dict[str, float]:
    """Upstream's ``MaskGenerator`` rules: known names, each in [0, 1], summing to at most 1
    (``identity`` takes the rest when absent, and the total must then be exactly 1)."""
    if ratios is None:
        return {}
    if not isinstance(ratios, dict):
        raise ConfigError(f"mask_ratios must be a mapping {{mask type: probability}}, got {ratios!r}")
    out: dict[str, float] = {}
    for name, value in ratios.items():
        if name not in MASK_TYPES:
            raise ConfigError(f"mask_ratios: unknown mask type {name!r}; valid types: {', '.join(MASK_TYPES)}")
        out[name] = _probability(value, f"mask_ratios[{name!r}]")
    total = sum(out.values())
    if "identity" in out:
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"mask_ratios sum to {total:g}; with 'identity' listed they must sum to 1")
    elif total > 1.0 + 1e-6:
        raise ConfigError(f"mask_ratios sum to {total:g} > 1")
    return out


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        from clusterkit.errors import did_you_mean

        guess = did_you_mean(str(value), choices)
        raise ConfigError(f"{name}={value!r} is not valid; valid choices: {', '.join(choices)}"
                          + (f". Did you mean {guess!r}?" if guess else ""))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")


def _nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r}: must be a non-negative integer")


def _number(name: str, value: Any, *, low: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if not ok:
        raise ConfigError(f"{name}={value!r}: must be a number {'>' if low_open else '>='} {low:g}")
