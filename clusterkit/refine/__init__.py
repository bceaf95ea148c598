"""Prompt refinement: a short prompt -> the detailed one the text encoder gets (torch-free).

It runs once, on the submit host, before anything is launched (compute nodes may have no network),
with one of three refiners, chosen by ``clusterkit submit infer --refine``:

- ``template`` (``template.py``): fills a structured template; deterministic, offline;
- ``command`` (``command.py``): a program the user configures (argv, prompt on stdin, result on stdout);
- ``http`` (``chat.py``): an OpenAI-compatible chat-completions endpoint, the key read from an
  environment variable whose name the config gives.

Settings come from ``config.py`` (``env/refine.yaml`` or ``--refine-config``). The original prompt
still decides each video's seed and file name; the run records both texts (docs/prompt-refinement.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clusterkit.errors import RefineError
from clusterkit.refine.config import (METHODS, RefineConfig, build_refiner, find_refine_config, load_refine_config,
                                     refine_identity)


class Refiner(Protocol):
    name: str
    pure: bool
    """True when refining runs nothing and sends nothing (the template): a dry run applies only such a refiner."""

    def describe(self) -> str:
        """What refines, for the record (no key, no command arguments)."""

    def refine(self, prompt: str) -> str:
        """The refined prompt (one line) or a ``RefineError``."""


@dataclass(frozen=True)
class Refinement:
    """The refined prompts of a run, one per prompt, and what made them; on a dry run with a refiner
    that is not pure, ``prompts`` is None: it was not called."""

    refiner: str
    via: str
    prompts: tuple[str, ...] | None
    seconds: float

    @property
    def dry_run(self) -> bool:
        """True when the refiner was not called (a dry run)."""
        return self.prompts is None

    def to_dict(self, originals: Sequence[str]) -> dict:
        refined = self.prompts if self.prompts is not None else (None,) * len(originals)
        return {"refiner": self.refiner, "via": self.via, "seconds": round(self.seconds, 3), "dry_run": self.dry_run,
                "prompts": [{"prompt": p, "refined_prompt": r} for p, r in zip(originals, refined)]}


def refine_prompts(prompts: Sequence[str], refiner: Refiner, *, dry_run: bool = False) -> Refinement:
    """Refine every prompt (a prompt given twice is refined once); a failure names the prompt's index.
    A loop-segment prompt (``|0|a red car|2|a blue car``) is refined segment by segment and keeps
    its ``|k|`` markers, so each loop still gets its own text. With ``dry_run`` a refiner that is not
    ``pure`` (a command, an endpoint) is not called: the ``Refinement`` has no prompts."""
    if dry_run and not refiner.pure:
        return Refinement(refiner.name, refiner.describe(), None, 0.0)
    began = time.perf_counter()
    done: dict[str, str] = {}
    for index, prompt in enumerate(prompts):
        if prompt in done:
            continue
        try:
            done[prompt] = _refine_one(prompt, refiner)
        except RefineError as exc:
            raise RefineError(f"prompt {index}: {exc.message}", hint=exc.hint) from None
    return Refinement(refiner.name, refiner.describe(), tuple(done[p] for p in prompts), time.perf_counter() - began)


def _refine_one(prompt: str, refiner: Refiner) -> str:
    from opensora_core.inference.prompt_syntax import split_segments

    segments = split_segments(prompt)
    if len(segments) == 1 and not prompt.startswith("|0|"):
        return _one_line(refiner.refine(prompt))
    return "".join(f"|{start}|{_one_line(refiner.refine(text)).replace('|', ' ')}" for start, text in segments)


def _one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed: a refined prompt is one line, like a prompts-file line."""
    return " ".join(text.split())


__all__ = ["METHODS", "RefineConfig", "Refinement", "Refiner", "build_refiner", "find_refine_config",
           "load_refine_config", "refine_identity", "refine_prompts"]
