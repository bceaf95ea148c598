"""What each prompt of a run is conditioned on, and every rule about it (torch-free).

``normalize`` merges the per-prompt ``reference_path`` / ``mask_strategy`` lists with the prompts'
JSON suffixes (which win); ``check_rules`` checks everything that needs no file (mask strategy
syntax and ranges, loop segments, ``--loop`` settings); ``check_files`` opens every reference and
checks where each mask group lands with the real lengths. ``InferRequest`` runs the first two on
construction (submit host and node); the submit host and, before loading weights, the first rank
of each replica group of the job (the rank that reads the references) run ``check_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opensora_core.errors import ConditioningError
from opensora_core.inference import mask_strategy as ms
from opensora_core.inference.prompt_syntax import check_segments, split_json_suffix, split_segments
from opensora_core.inference.references import ReferenceInfo, probe, reference_kind, split_paths

DEFAULT_CONDITION_FRAME_LENGTH = 5  # upstream's sample.py, latent frames
DEFAULT_CONDITION_FRAME_EDIT = 0.0


@dataclass(frozen=True)
class PromptConditioning:
    """One prompt's references (paths), mask groups and loop segments."""

    paths: tuple[str, ...]
    entries: tuple[ms.MaskEntry, ...]
    segments: tuple[tuple[int, str], ...]
    mask_strategy: str = ""
    """The strategy as given (for messages)."""


def normalize(prompts: Sequence[str], reference_paths: Sequence[str], mask_strategies: Sequence[str]
              ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(prompt texts, reference paths, mask strategies), one of each per prompt, JSON suffixes applied
    (``()`` for a list that is empty for every prompt). Each given list must hold one entry per prompt."""
    count = len(prompts)
    lists = []
    for name, values in (("--reference-path", reference_paths), ("--mask-strategy", mask_strategies)):
        values = tuple(values or ())
        if values and len(values) != count:
            raise ConditioningError(f"{name} was given {len(values)} time(s) for {count} prompt(s): give it once "
                                    "per prompt, in order (\"\" for a prompt without), as upstream",
                                    hint='or put it in the prompt: text{"reference_path": ..., '
                                         '"mask_strategy": ...}')
        lists.append(list(values) if values else [""] * count)
    refs, masks = lists
    texts = []
    for i, prompt in enumerate(prompts):
        text, overrides = split_json_suffix(prompt, what=f"prompt {i}")
        texts.append(text)
        refs[i] = overrides.get("reference_path", refs[i])
        masks[i] = overrides.get("mask_strategy", masks[i])
    return tuple(texts), _or_empty(refs), _or_empty(masks)


def check_rules(prompts: Sequence[str], reference_paths: Sequence[str], mask_strategies: Sequence[str], *,
                loop: int, condition_frame_length: int, condition_frame_edit: float, align: int | None,
                latent_frames: int, num_frames: int) -> tuple[PromptConditioning, ...]:
    """Every rule that needs no file; returns each prompt's parsed conditioning."""
    _check_int("--loop", loop, 1)
    _check_int("--condition-frame-length", condition_frame_length, 1)
    if align is not None:
        _check_int("--align", align, 1)
    if isinstance(condition_frame_edit, bool) or not isinstance(condition_frame_edit, (int, float)) \
            or not 0.0 <= condition_frame_edit <= 1.0:
        raise ConditioningError(f"--condition-frame-edit {condition_frame_edit!r} must be a number in [0, 1]")
    if loop > 1:
        if num_frames == 1:
            raise ConditioningError(f"--loop {loop} needs a video: --frames is 1 (an image)")
        ms.condition_pixel_frames(condition_frame_length)  # a multiple of 5
        if condition_frame_length >= latent_frames:
            raise ConditioningError(
                f"--condition-frame-length {condition_frame_length} must be below the clip's {latent_frames} latent "
                f"frames (--frames {num_frames}), or each loop would only repeat the previous one",
                hint="use longer clips (e.g. --frames 4s) or a smaller --condition-frame-length")
    out = []
    for i, prompt in enumerate(prompts):
        refs = reference_paths[i] if reference_paths else ""
        strategy = mask_strategies[i] if mask_strategies else ""
        paths = split_paths(refs, what=f"reference_path {refs!r} of prompt {i}")
        for path in paths:
            reference_kind(path)
        what = f"mask_strategy {strategy!r} of prompt {i}"
        entries = ms.parse_mask_strategy(strategy, what=what)
        if paths and not entries:
            raise ConditioningError(f"prompt {i} has reference_path {refs!r} but no mask_strategy: the references "
                                    "would not be used", hint="e.g. --mask-strategy 0 (image-to-video: reference 0 "
                                    "at the first frame); see docs/inference-modes.md")
        ms.check_entries(entries, references=len(paths), loops=loop, what=what)
        segments = split_segments(prompt, what=f"prompt {i}")
        check_segments(segments, loop, what=f"prompt {i}")
        out.append(PromptConditioning(paths, entries, segments, strategy))
    return tuple(out)


def check_files(conditioning: Sequence[PromptConditioning], *, latent_frames: int, align: int | None
                ) -> dict[str, ReferenceInfo]:
    """Open every reference (each file once) and place every mask group with the real lengths;
    returns what was found, by path. ``ReferenceNotFound`` / ``ConditioningError`` otherwise."""
    found: dict[str, ReferenceInfo] = {}
    for i, prompt in enumerate(conditioning):
        for path in prompt.paths:
            if path not in found:
                found[path] = probe(path)
        for entry in prompt.entries:
            info = found[prompt.paths[entry.ref_index]]
            ms.place(entry, info.latent_frames, latent_frames, align,
                     what=f"mask_strategy {prompt.mask_strategy!r} of prompt {i} (reference {entry.ref_index}: "
                          f"{info.kind} {info.path!r}, {info.frames} frame(s))")
    return found


def _or_empty(values: list[str]) -> tuple[str, ...]:
    return tuple(values) if any(v.strip() for v in values) else ()


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConditioningError(f"{name} {value!r} must be an integer >= {low}")


__all__ = ["DEFAULT_CONDITION_FRAME_EDIT", "DEFAULT_CONDITION_FRAME_LENGTH", "PromptConditioning", "check_files",
           "check_rules", "normalize"]
