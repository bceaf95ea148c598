"""Prompts: reading a prompts file, rejecting empty prompts, and the text the encoder sees (torch-free).

A prompts file holds one prompt per line (UTF-8); lines holding only whitespace are skipped.
Prompts are never put in shell text: the CLI writes them to ``prompts.json`` in the run folder.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

from clusterkit.errors import NotFound, UserError

#: Upstream's inference config appends " aesthetic score: 6.5." to every prompt (the training
#: captions carried the score, so the model expects it).
DEFAULT_AES = 6.5

_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_TAG = re.compile(r"<[^>]{1,200}>")
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "`": "'", "–": "-", "—": "-", "−": "-"})
_SPACES = re.compile(r"\s+")


def read_prompts_file(path: str | Path) -> list[str]:
    """The prompts of a file, one per line, blank lines skipped; errors name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"prompts file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"prompts file {str(path)!r} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read prompts file {str(path)!r}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {str(path)!r} holds no prompt", hint="write one prompt per line")
    return prompts


def check_prompts(prompts: Sequence[str]) -> tuple[str, ...]:
    """The prompts as a tuple; an empty list, a non-string or an empty/blank prompt is a ``UserError``."""
    if isinstance(prompts, str) or not prompts:
        raise UserError("no prompt given", hint="pass --prompt TEXT (repeatable) or --prompts-file FILE")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise UserError(f"prompt {index} is {type(prompt).__name__}, not text")
        if not prompt.strip():
            raise UserError(f"prompt {index} is empty", hint="every prompt needs some text")
    return tuple(prompts)


def clean_prompt(text: str) -> str:
    """A subset of upstream's caption cleaning (DeepFloyd ``clean_caption``): unescape HTML, drop tags
    and URLs, normalise quotes and dashes, lower-case, collapse whitespace."""
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = _URL.sub(" ", text)
    text = text.translate(_QUOTES).lower()
    return _SPACES.sub(" ", text).strip()


def encoder_text(prompt: str, aes: float | None = DEFAULT_AES, flow: float | None = None,
                 camera_motion: str | None = None) -> str:
    """The text the text encoder gets for ``prompt``: the scores appended as upstream's
    ``append_score_to_prompts`` (" aesthetic score: {aes:.1f}.", " motion score: {flow:.1f}.",
    " camera motion: {camera_motion}.", each unless the prompt already has it), then cleaned."""
    scores = (("aesthetic score:", aes, lambda v: f"{v:.1f}"), ("motion score:", flow, lambda v: f"{v:.1f}"),
              ("camera motion:", camera_motion, str))
    for label, value, render in scores:
        if value is not None and label not in prompt.lower():
            prompt = f"{prompt.rstrip()} {label} {render(value)}."
    return clean_prompt(prompt)
