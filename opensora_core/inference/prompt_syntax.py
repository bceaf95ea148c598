"""Upstream's prompt syntax for conditioning and long videos (torch-free).

- **JSON suffix**: ``text{"reference_path": "a.png", "mask_strategy": "0"}``. The prompt is split at
  its first "{"; the rest must be one JSON object holding only ``reference_path`` and/or
  ``mask_strategy`` (strings), which override the command-line values for that prompt. A prompt
  has at most one "{" (upstream asserts the same). The text before it, trailing spaces removed,
  is the prompt: what is encoded, recorded and seeded.
- **Loop segments**: ``|0|text a|2|text b`` (the prompt must start with ``|0|``): segment k is
  the text of every loop from its index up to the next segment's index.
"""

from __future__ import annotations

import json
import re

from opensora_core.errors import ConditioningError

JSON_KEYS = ("reference_path", "mask_strategy")
#: What looks like a loop-segment prompt: it must then start with exactly ``|0|``.
_SEGMENT_MARKER = re.compile(r"^\s*\|\s*\d+\s*\|")


def split_json_suffix(prompt: str, *, what: str = "prompt") -> tuple[str, dict[str, str]]:
    """(text, overrides) of ``prompt``; overrides holds the JSON suffix's keys (empty without one)."""
    if "{" not in prompt:
        return prompt, {}
    if prompt.count("{") > 1:
        raise ConditioningError(f"{what} {prompt!r} has {prompt.count('{')} '{{': at most one JSON block "
                                f"(with only {' and '.join(JSON_KEYS)}) may follow the text")
    text, block = prompt.split("{", 1)
    try:
        data = json.loads("{" + block)
    except ValueError as exc:
        raise ConditioningError(f"{what} {prompt!r}: the part from '{{' is not valid JSON ({exc})",
                                hint='e.g. a cat.{"reference_path": "cat.png", "mask_strategy": "0"}') from None
    unknown = sorted(set(data) - set(JSON_KEYS))
    if unknown:
        raise ConditioningError(f"{what} {prompt!r}: JSON key(s) {unknown} not allowed; valid keys: "
                                f"{', '.join(JSON_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConditioningError(f"{what} {prompt!r}: {key} must be a string, got {json.dumps(value)}")
    text = text.rstrip()
    if not text.strip():
        raise ConditioningError(f"{what} {prompt!r} has no text before its JSON block")
    return text, data


def split_segments(text: str, *, what: str = "prompt") -> tuple[tuple[int, str], ...]:
    """((first loop, text), ...) of a ``|0|a|2|b`` prompt, else ((0, text),). A prompt that starts
    with an ``|index|`` marker other than ``|0|`` (``|1|a``, `` |0|a``) is a ``ConditioningError``:
    its segments would otherwise be encoded as plain text, pipes and all."""
    if not text.startswith("|0|"):
        if _SEGMENT_MARKER.match(text):
            raise ConditioningError(f"{what} {text!r} starts with a loop-segment marker but not with '|0|': a "
                                    "multi-segment prompt must start with exactly '|0|' (the text of loop 0, "
                                    "no space before it)", hint="e.g. |0|a red car.|2|a blue car.")
        return ((0, text),)
    parts = text.split("|")[1:]
    if len(parts) % 2:
        raise ConditioningError(f"{what} {text!r}: loop segments must alternate |index|text (found "
                                f"{len(parts)} '|'-separated parts)", hint="e.g. |0|a red car.|2|a blue car.")
    segments = []
    for index, segment in zip(parts[0::2], parts[1::2]):
        if not index.strip().isdigit():
            raise ConditioningError(f"{what} {text!r}: segment index {index!r} is not a non-negative integer")
        start = int(index)
        if segments and start <= segments[-1][0]:
            raise ConditioningError(f"{what} {text!r}: segment indices must increase ({segments[-1][0]} then {start})")
        if not segment.strip():
            raise ConditioningError(f"{what} {text!r}: segment |{start}| has no text")
        segments.append((start, segment.strip()))
    return tuple(segments)


def check_segments(segments: tuple[tuple[int, str], ...], loops: int, *, what: str) -> None:
    """Every segment must start at a loop that runs (0 .. loops-1)."""
    for start, _ in segments:
        if start >= loops:
            raise ConditioningError(f"{what}: segment |{start}| starts after the last loop (--loop {loops}: "
                                    f"loops 0..{loops - 1}); it would never be used",
                                    hint=f"raise --loop above {start} or drop the segment")


def segment_index(segments: tuple[tuple[int, str], ...], loop_i: int) -> int:
    """The position in ``segments`` of the segment loop ``loop_i`` uses (the last one starting at or before it)."""
    return max(k for k, (start, _) in enumerate(segments) if start <= loop_i)


def merge_segments(texts: list[str], segments: tuple[tuple[int, str], ...]) -> str:
    """Upstream's ``merge_prompt``: ``texts`` (one per segment) back in the ``|i|text`` form."""
    if len(segments) == 1 and segments[0][0] == 0 and texts:
        return texts[0]
    return "".join(f"|{start}|{text}" for (start, _), text in zip(segments, texts))


__all__ = ["JSON_KEYS", "check_segments", "merge_segments", "segment_index", "split_json_suffix", "split_segments"]
