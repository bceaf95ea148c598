"""``InferRequest``: everything one text-to-video run is asked to do, validated on construction
(torch-free), so bad input fails on the submit host before anything is launched, and again on
the node before any weight is loaded.

Also the two rules every output follows:
- **seeds**: video k of prompt p gets its own generator seeded from (seed, prompt text, k)
  (``video_seed``), never from its position or from what ran before, so a prompt gives the
  same video alone, after other prompts, or in another batch;
- **names**: ``<name>_<prompt index:04d>[-<k>].mp4`` (``.png`` for one frame), where name is
  the run id (``output_name``) and the index counts from ``start_index``.

Conditioning (reference images/videos, mask strategies, loops; docs/inference-modes.md) is
checked here too: prompts lose their JSON suffix (its ``reference_path`` / ``mask_strategy``
override the lists), and every rule that needs no file is applied (``conditioning_spec``);
``check_references`` opens the files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError
from opensora_core import geometry
from opensora_core.dtypes import check_dtype_name
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME, ParallelLayout
from opensora_core.presets import COMPONENT_OPTIONS, COMPONENTS, checkpoint_overrides, get_preset

from . import conditioning_spec
from .mask_strategy import DEFAULT_ALIGN, looped_frames
from .prompt_syntax import split_segments
from .prompts import DEFAULT_AES, check_prompts, encoder_text

DEFAULT_STEPS = 30  # upstream's v1.2 inference config
DEFAULT_CFG_SCALE = 7.0
DEFAULT_FPS = 24
DEFAULT_SEED = 42
T5_DEVICES = ("gpu", "cpu")
#: The v1.2 timestep shift is zero for 2..16 pixel frames (every step would be t=0).
_DEGENERATE_FRAMES = range(2, geometry.VAE_MICRO_FRAMES)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class InferRequest:
    """One run: prompts, video size and length, model, sampler and precision settings."""

    prompts: tuple[str, ...]
    frames: str
    """As upstream's --num-frames: 2s 4s 8s 16s 32s, 1x 2x 4x 8x 16x, or a pixel frame count (1 = image)."""
    resolution: str
    aspect_ratio: str = "9:16"
    """H:W as upstream ("9:16" is landscape) or a table key ("0.56")."""
    model: str = "tiny"
    ckpt_dir: str | None = None
    """Checkpoint folder (dit/ t5/ vae2d/ vae3d/); required for opensora-v1.2 unless ``ckpt_paths`` names all
    four components; tiny: random weights without either."""
    ckpt_paths: dict = field(default_factory=dict)
    """Component name (dit, t5, vae2d, vae3d) -> its own folder (``--ckpt-path-<name>``), replacing
    ``ckpt_dir/<name>``; the submit host sends them absolute and checked."""
    seed: int = DEFAULT_SEED
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG_SCALE
    fps: int = DEFAULT_FPS
    """Frame rate of the written video and of the model's fps conditioning (images use 120)."""
    num_samples: int = 1
    """Videos per prompt (sample k = 0, 1, ...)."""
    batch_size: int = 1
    """Videos per pass (upstream's ``--batch-size``). Each video still goes through the transformer and
    the VAE alone (batch invariance: results never depend on it, no prompt ghosting), so it buys no
    throughput; replicas do."""
    dtype: str | None = None
    """Precision of the transformer and the VAE (None: the preset's, fp32 for tiny, bf16 for v1.2)."""
    t5_dtype: str = "fp32"
    t5_device: str = "gpu"
    """Where the text encoder runs when the rank has a GPU ("cpu": never on the GPU)."""
    t5_offload: bool = True
    """Move the text encoder to host memory once every prompt is encoded (False: it stays resident
    beside the transformer, as upstream keeps it; the planner's ``--t5 gpu-fp32/gpu-bf16``)."""
    vae_micro_batch: int | None = 4
    """Frames per spatial-VAE decode call (None: all at once)."""
    flash_attn: bool = True
    """Use flash-attn for spatial self-attention where installed and supported."""
    aes: float | None = DEFAULT_AES
    """Aesthetic score appended to each prompt, as upstream (None: nothing appended)."""
    name: str = "sample"
    """File-name prefix of the outputs (the CLI uses the run id; a sweep its sweep id)."""
    output_dir: str | None = None
    notes: tuple[str, ...] = field(default=())
    """Where the settings came from (plan, defaults), for the record."""
    sp: int = 1
    """Sequence-parallel degree of every replica group (must divide the model's attention heads)."""
    cfg_parallel: bool = False
    """Split the CFG pair over two ranks."""
    sp_scheme: str = DEFAULT_SP_SCHEME
    """Spatial attention under SP: "dsp" (frame-sharded) or "ulysses" (head-sharded)."""
    items: tuple[tuple[int, int], ...] | None = None
    """(prompt index, sample) of the videos this job makes; None: every video of every prompt.
    A sweep gives each node's job its share of the prompts this way (file names keep the index)."""
    node: str | None = None
    """The inventory node the job runs on, for the index."""
    sweep: str | None = None
    """Sweep id: every finished video also gets a completion record in ``<output>/records/``."""
    run_id: str | None = None
    """The run this request belongs to (index file name and records); None: ``name``."""
    refined_prompts: tuple[str, ...] | None = None
    """Each prompt as refined on the submit host (``clusterkit.refine``): what the text encoder gets.
    None: not refined. Seeds and file names still come from ``prompts``."""
    refiner: str | None = None
    """What refined them (template, command, http); set exactly when ``refined_prompts`` is."""
    reference_paths: tuple[str, ...] = ()
    """Per prompt: ";"-separated reference images/videos ("" for none); () for none at all."""
    mask_strategies: tuple[str, ...] = ()
    """Per prompt: upstream's mask strategy ("" for none; docs/inference-modes.md); () for none at all."""
    loop: int = 1
    """Clips per video: each later clip continues the previous one (long videos)."""
    condition_frame_length: int = conditioning_spec.DEFAULT_CONDITION_FRAME_LENGTH
    """Latent frames of the previous clip a later loop is conditioned on (a multiple of 5)."""
    condition_frame_edit: float = conditioning_spec.DEFAULT_CONDITION_FRAME_EDIT
    """Edit ratio of those frames (0: kept as they are)."""
    align: int | None = DEFAULT_ALIGN
    """Mask-strategy starts snap to multiples of this many latent frames (None: no snapping)."""
    flow: float | None = None
    """Motion score appended to each prompt (" motion score: {flow:.1f}."), as upstream."""
    camera_motion: str | None = None
    """Camera motion appended to each prompt (" camera motion: {camera_motion}."), as upstream."""
    start_index: int = 0
    """Index in the whole list of the first prompt (``--start-index``: the prompts are a slice of a longer
    list); file names and the index's ``prompt_index`` count from it (``VideoItem.file_index``)."""

    def __post_init__(self) -> None:
        prompts, refs, masks = conditioning_spec.normalize(check_prompts(self.prompts), self.reference_paths or (),
                                                           self.mask_strategies or ())
        object.__setattr__(self, "prompts", check_prompts(prompts))
        object.__setattr__(self, "reference_paths", refs)
        object.__setattr__(self, "mask_strategies", masks)
        object.__setattr__(self, "notes", tuple(self.notes))
        parse_geometry(self.frames, self.resolution, self.aspect_ratio)
        preset = get_preset(self.model)
        object.__setattr__(self, "ckpt_paths", checkpoint_overrides(self.ckpt_paths))
        missing = [COMPONENT_OPTIONS[name] for name in COMPONENTS if name not in self.ckpt_paths]
        hint = ("see docs/inference.md for the checkpoint layout (one folder, or one per component); "
                "--model tiny runs without weights")
        if not self.ckpt_dir and not self.ckpt_paths and preset.weights_seed is None:
            raise UserError(f"--model {self.model} needs --ckpt-dir DIR or {', '.join(missing)} (its official "
                            "weights)", hint=hint)
        if not self.ckpt_dir and self.ckpt_paths and missing:  # every component must come from somewhere
            raise UserError(f"--model {self.model}: no folder for {', '.join(missing)}; give them, or --ckpt-dir DIR "
                            "to supply the rest", hint=hint)
        for name, low in (("steps", 1), ("fps", 1), ("num_samples", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"--{name.replace('_', '-')} {value!r} must be an integer >= {low}")
        if self.seed >= 2**63:
            raise UserError(f"--seed {self.seed} must be below 2**63")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)):
            raise UserError(f"--cfg-scale {self.cfg_scale!r} must be a number")
        if self.dtype is not None:
            check_dtype_name(self.dtype, "--dtype")
        check_dtype_name(self.t5_dtype, "T5 dtype")
        if self.t5_device not in T5_DEVICES:
            raise InvalidChoice("T5 device", self.t5_device, T5_DEVICES)
        if not isinstance(self.t5_offload, bool):
            raise InvalidChoice("t5_offload", self.t5_offload, (True, False))
        if not _SAFE_NAME.match(self.name):
            raise UserError(f"output name {self.name!r} must match {_SAFE_NAME.pattern}")
        mb = self.vae_micro_batch
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise UserError(f"VAE micro-batch {mb!r} must be a positive integer")
        if not isinstance(self.cfg_parallel, bool):
            raise UserError(f"--cfg-parallel {self.cfg_parallel!r} must be true or false")
        ParallelLayout(sp=self.sp, cfg=2 if self.cfg_parallel else 1, sp_scheme=self.sp_scheme,
                       num_heads=self.num_heads)  # LayoutError naming the rule
        for name in ("run_id", "sweep"):
            value = getattr(self, name)
            if value is not None and not _SAFE_NAME.match(value):
                raise UserError(f"{name} {value!r} must match {_SAFE_NAME.pattern}")
        if self.items is not None:
            object.__setattr__(self, "items", _check_items(self.items, len(self.prompts), self.num_samples))
        if self.refined_prompts is not None:
            object.__setattr__(self, "refined_prompts", _check_refined(self.refined_prompts, self.prompts))
        if (self.refiner is None) != (self.refined_prompts is None):
            raise UserError(f"refiner {self.refiner!r}: refined prompts and the name of their refiner come together")
        if self.refiner is not None and (not isinstance(self.refiner, str) or not _SAFE_NAME.match(self.refiner)):
            raise UserError(f"refiner {self.refiner!r} must match {_SAFE_NAME.pattern}")
        if isinstance(self.start_index, bool) or not isinstance(self.start_index, int) or self.start_index < 0:
            raise UserError(f"--start-index {self.start_index!r} must be an integer >= 0")
        for name in ("aes", "flow"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value != value or abs(value) == float("inf")):
                raise UserError(f"--{name} {value!r} must be a finite number (or unset: no score text)")
        if self.camera_motion is not None and (not isinstance(self.camera_motion, str)
                                               or not self.camera_motion.strip() or "\n" in self.camera_motion):
            raise UserError(f"--camera-motion {self.camera_motion!r} must be one line of text (e.g. 'pan left')")
        self.conditioning  # noqa: B018 - applies every conditioning rule that needs no file

    @property
    def conditioning(self) -> tuple[conditioning_spec.PromptConditioning, ...]:
        """Each prompt's references, mask groups and loop segments (checked; files not opened)."""
        geo = self.geometry
        encoder_prompts = tuple(self.encoder_prompt(i) for i in range(len(self.prompts)))  # their loop segments
        return conditioning_spec.check_rules(
            encoder_prompts, self.reference_paths, self.mask_strategies, loop=self.loop,
            condition_frame_length=self.condition_frame_length, condition_frame_edit=self.condition_frame_edit,
            align=self.align, latent_frames=geo.latent[0], num_frames=geo.num_frames)

    @property
    def conditioned(self) -> bool:
        """True when any video uses references or loops (not plain text-to-video)."""
        return bool(self.reference_paths) or self.loop > 1

    @property
    def output_frames(self) -> int:
        """Frames of each written video: ``num_frames``, or with loops loop*(num_frames - P) + P."""
        return looped_frames(self.num_frames, self.loop, self.condition_frame_length)

    def check_references(self) -> dict:
        """Open every reference file (a video's packets counted and its first frame decoded, never the
        whole video) and place every mask group with the real lengths (what the submit host and each
        replica group's first rank, before loading weights, run); returns ``ReferenceInfo`` by path."""
        return conditioning_spec.check_files(self.conditioning, latent_frames=self.geometry.latent[0],
                                             align=self.align)

    def with_absolute_references(self) -> InferRequest:
        """This request with every reference checked (``check_references``) and its path made
        absolute, so the job finds it whatever its working folder (what ``clusterkit submit`` sends)."""
        if not self.reference_paths:
            return self
        found = self.check_references()
        absolute = tuple(";".join(found[path].path for path in prompt.paths) for prompt in self.conditioning)
        return replace(self, reference_paths=absolute)

    def encoder_segments(self, index: int) -> tuple[tuple[int, str], ...]:
        """(first loop, encoder text) of each loop segment of prompt ``index`` (one segment without the
        ``|0|...`` syntax): the refined prompt when refined, each segment with the scores appended and
        cleaned, as upstream (``encoder_text``)."""
        return tuple((start, encoder_text(text, self.aes, self.flow, self.camera_motion))
                     for start, text in split_segments(self.encoder_prompt(index)))

    def conditioning_record(self, prompt_index: int) -> dict | None:
        """The conditioning of a prompt's videos, for the index (None for plain text-to-video)."""
        if not self.conditioned:
            return None
        refs = self.reference_paths[prompt_index] if self.reference_paths else ""
        return {"reference_path": [p.strip() for p in refs.split(";") if p.strip()],
                "mask_strategy": self.mask_strategies[prompt_index] if self.mask_strategies else "",
                "loop": self.loop, "condition_frame_length": self.condition_frame_length,
                "condition_frame_edit": self.condition_frame_edit, "align": self.align}

    @property
    def num_frames(self) -> int:
        return self.geometry.num_frames

    @property
    def geometry(self) -> geometry.VideoGeometry:
        """Pixel, latent and token sizes of the videos."""
        return parse_geometry(self.frames, self.resolution, self.aspect_ratio)

    @property
    def model_dtype(self) -> str:
        return self.dtype or get_preset(self.model).default_dtype

    @property
    def random_weights(self) -> bool:
        return get_preset(self.model).random_weights(self.ckpt_dir, self.ckpt_paths)

    @property
    def num_heads(self) -> int:
        """Attention heads of the preset's transformer (what SP splits)."""
        return get_preset(self.model).stdit3_config.get("num_heads", 16)

    def layout(self, world_size: int) -> ParallelLayout:
        """The layout of a job of ``world_size`` ranks: replicas of (cfg x sp) groups; ``LayoutError``
        naming the rule when ``world_size`` does not split into whole groups."""
        return ParallelLayout.for_world(world_size, sp=self.sp, cfg_parallel=self.cfg_parallel,
                                        sp_scheme=self.sp_scheme, num_heads=self.num_heads)

    def videos(self) -> list[VideoItem]:
        """The videos of the run in order: prompt by prompt, sample by sample (only ``items`` when set)."""
        ext = ".png" if self.num_frames == 1 else ".mp4"
        wanted = None if self.items is None else set(self.items)
        return [
            VideoItem(index, sample, prompt, video_seed(self.seed, prompt, sample),
                      output_name(self.name, self.start_index + index, sample, self.num_samples, ext),
                      self.start_index + index, None if self.refined_prompts is None else self.refined_prompts[index])
            for index, prompt in enumerate(self.prompts)
            for sample in range(self.num_samples)
            if wanted is None or (index, sample) in wanted
        ]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompts"] = list(self.prompts)
        data["notes"] = list(self.notes)
        data["items"] = None if self.items is None else [list(item) for item in self.items]
        data["reference_paths"], data["mask_strategies"] = list(self.reference_paths), list(self.mask_strategies)
        data["ckpt_paths"] = dict(self.ckpt_paths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> InferRequest:
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        if unknown:
            raise UserError(f"inference request: unknown keys {unknown}")
        items = data.get("items")
        return cls(**{**data, "prompts": tuple(data.get("prompts", ())), "notes": tuple(data.get("notes", ())),
                      "items": None if items is None else tuple(tuple(item) for item in items),
                      "reference_paths": tuple(data.get("reference_paths", ())),
                      "mask_strategies": tuple(data.get("mask_strategies", ())),
                      "ckpt_paths": data.get("ckpt_paths") or {}})

    def encoder_prompt(self, index: int) -> str:
        """The text prompt ``index`` is encoded from: its refined form when the prompts were refined."""
        return self.prompts[index] if self.refined_prompts is None else self.refined_prompts[index]

    def settings(self) -> dict:
        """Everything but the prompts (what ``request.json`` holds; prompts go to ``prompts.json``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("prompts", "refined_prompts")}

    def prompts_json(self) -> list:
        """What ``prompts.json`` holds: the prompts, or with refinement one ``{"prompt", "refined_prompt"}``
        object per prompt (the original and what the encoder gets)."""
        if self.refined_prompts is None:
            return list(self.prompts)
        return [{"prompt": p, "refined_prompt": r} for p, r in zip(self.prompts, self.refined_prompts)]

    @classmethod
    def load(cls, settings_path: str | Path, prompts_path: str | Path) -> InferRequest:
        """Read the two files the CLI writes into the run folder."""
        settings = json.loads(Path(settings_path).read_text(encoding="utf-8"))
        prompts = json.loads(Path(prompts_path).read_text(encoding="utf-8"))
        if not isinstance(prompts, list):
            raise UserError(f"{prompts_path} must hold a JSON list of prompts")
        if prompts and all(isinstance(p, dict) for p in prompts):  # refined: {"prompt", "refined_prompt"}
            if any(set(p) != {"prompt", "refined_prompt"} for p in prompts):
                raise UserError(f"{prompts_path}: every entry must have exactly 'prompt' and 'refined_prompt'")
            return cls.from_dict({**settings, "prompts": [p["prompt"] for p in prompts],
                                  "refined_prompts": [p["refined_prompt"] for p in prompts]})
        return cls.from_dict({**settings, "prompts": prompts})


@dataclass(frozen=True)
class VideoItem:
    """One video to make."""

    prompt_index: int
    """Position in this request's ``prompts`` (the slice)."""
    sample: int
    prompt: str
    seed: int
    filename: str
    file_index: int
    """The prompt's index in the whole list (``start_index`` + ``prompt_index``): what the file name
    and the index entry's ``prompt_index`` say."""
    refined_prompt: str | None = None
    """What the encoder gets instead of ``prompt`` when the prompts were refined."""


def _check_items(items, prompts: int, samples: int) -> tuple[tuple[int, int], ...]:
    out = []
    for item in items:
        if (not isinstance(item, (tuple, list)) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise UserError(f"video item {item!r} must be a (prompt index, sample) pair of integers")
        index, sample = item
        if not (0 <= index < prompts and 0 <= sample < samples):
            raise UserError(f"video item {tuple(item)}: prompt index must be in [0, {prompts}) and sample in "
                            f"[0, {samples})")
        out.append((index, sample))
    if len(set(out)) != len(out):
        raise UserError("a video item is listed twice")
    return tuple(out)


def _check_refined(refined, prompts: tuple[str, ...]) -> tuple[str, ...]:
    """One non-empty refined prompt per prompt, with the same loop segments (``|0|..|2|..``) as its original."""
    if isinstance(refined, str) or not isinstance(refined, (tuple, list)) or len(refined) != len(prompts):
        raise UserError(f"refined prompts must be a list with one entry per prompt ({len(prompts)})")
    for index, (prompt, text) in enumerate(zip(prompts, refined)):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"refined prompt {index} is empty", hint="the refiner must answer some text")
        starts = [start for start, _ in split_segments(prompt)]
        if [start for start, _ in split_segments(text, what=f"refined prompt {index}")] != starts:
            raise UserError(f"refined prompt {index} {text[:80]!r} must keep the loop segments of its original "
                            f"(starting at loops {starts})", hint="refine each |k| segment's text, keeping the markers")
    return tuple(refined)


def parse_geometry(frames: str, resolution: str, aspect_ratio: str) -> geometry.VideoGeometry:
    """Sizes for --frames, --res and --aspect-ratio; errors name the flag and the valid values."""
    try:
        num_frames = geometry.get_num_frames(frames)
    except InvalidChoice as exc:
        raise InvalidChoice("--frames", frames, exc.choices) from None
    if num_frames in _DEGENERATE_FRAMES:
        raise UserError(
            f"--frames {frames}: Open-Sora 1.2's timestep shift is zero for 2 to 16 frames, so nothing "
            "would be denoised",
            hint="use 1 (an image) or at least 17 frames, e.g. 2s (51 frames)",
        )
    try:
        height, width = geometry.get_image_size(resolution, aspect_ratio)
    except InvalidChoice as exc:
        what = "--res" if exc.what == "resolution" else f"--aspect-ratio (at {resolution})"
        raise InvalidChoice(what, exc.value, exc.choices) from None
    return geometry.video_geometry(num_frames, height, width)


def video_seed(seed: int, prompt: str, sample: int) -> int:
    """The generator seed of sample ``sample`` of ``prompt`` in a run seeded ``seed`` (63 bits):
    the first 8 bytes of sha256("<seed>\\0<sample>\\0<prompt>")."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def output_name(name: str, prompt_index: int, sample: int, num_samples: int, ext: str) -> str:
    """``<name>_<prompt index:04d>.mp4``, with ``-<sample>`` before the extension when a prompt has
    several samples (as upstream's ``sample_0000-1.mp4``)."""
    suffix = f"-{sample}" if num_samples > 1 else ""
    return f"{name}_{prompt_index:04d}{suffix}{ext}"


__all__ = ["InferRequest", "VideoItem", "output_name", "parse_geometry", "video_seed"]
