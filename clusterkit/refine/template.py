"""The template refiner: a short prompt -> a detailed one, deterministic, no network.

The refined prompt is the template's parts, in a fixed order, each rendered and made a sentence
(capitalised, a full stop added when it has none, empty parts left out):

    subject   the prompt itself                          "{prompt}"
    shot      the shot                                   "The video is a close-up shot ..."
    camera    the camera and the motion                  "The camera is steady ..."
    setting   background / surroundings                  "The background is slightly out of focus ..."
    lighting  light and atmosphere                       "The lighting is soft and natural ..."
    absence   what is not in the video                   "There are no additional objects or text visible in the video."

the structure of detailed hand-written prompts (as in Open-Sora's own refined examples). A part
the prompt already covers is left out, so the template never contradicts the user (``COVERED``):
``shot`` when the prompt names a shot or the camera ("close-up", "aerial view", "medium shot",
"camera"); ``camera`` when it mentions the camera or a camera move ("pans", "zoom", "tilt",
"dolly", "tracking", "orbit", "handheld") or ``--camera-motion`` is given; ``setting`` when it
describes a background; ``lighting`` when it mentions light or sets it by the time of day or a
light source ("night", "dark", "neon", "sunset", "dusk", "candlelit"...); ``absence`` when it
already says what is absent. Placeholders: ``{prompt}`` (the
prompt, whitespace collapsed, trailing full stops removed) and ``{subject}`` (the same with its
first letter lower-cased, to continue a sentence: "A close-up shot of {subject}"); ``{{``/``}}``
are literal braces. ``system_prompt`` is the instruction the HTTP refiner sends to the model.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from clusterkit.errors import UserError

PARTS = ("subject", "shot", "camera", "setting", "lighting", "absence")
PLACEHOLDERS = ("prompt", "subject")

DEFAULT_PARTS = {
    "subject": "{prompt}",
    "shot": "The video is a close-up shot that keeps the main subject in focus",
    "camera": "The camera is steady, and the motion is smooth and continuous",
    "setting": "The background is slightly out of focus, with minimal distractions, so the scene stays clear "
               "and easy to follow",
    "lighting": "The lighting is soft and natural, highlighting fine details and textures and creating a calm "
                "atmosphere",
    "absence": "There are no additional objects or text visible in the video",
}

#: A part is left out when the prompt already matches its pattern (case-insensitive, whole words).
COVERED = {
    "shot": re.compile(r"\b(shot|close-?ups?|aerial|camera|(?:top|side|front|bird's-eye) view)\b", re.I),
    "camera": re.compile(r"\b(cameras?|pan|pans|panning|panned|zoom(?:s|ing|ed)?|tilt(?:s|ing|ed)?|dolly|tracking|"
                         r"orbit(?:s|ing)?|handheld|crane shot|fly-?through)\b", re.I),
    "setting": re.compile(r"\b(background|backdrop)\b", re.I),
    # light, or what sets it: "soft and natural" would contradict a night, neon or sunset scene
    "lighting": re.compile(r"\b(lights?|lighting|lit|sunlight|moonlight|moonlit|starlit|candlelit|candlelight|"
                           r"firelight|lamplight|night|nights|nighttime|night-time|midnight|dark|darkness|neon|"
                           r"sunset|sunrise|dusk|dawn|twilight|evening|glow|glows|glowing|lightning|storm|stormy)\b",
                           re.I),
    "absence": re.compile(r"\b(no|without) (additional|other|text)\b", re.I),
}

DEFAULT_SYSTEM_PROMPT = """\
You rewrite short text-to-video prompts into one detailed paragraph for a video generation model.
Keep the user's subject and action; do not add new events, people or objects. Describe, in this order:
the subject and what it does, the shot and camera (for example a close-up or a medium shot), the setting
and background, the lighting and atmosphere, and end with one sentence on what is absent, such as
"There are no additional objects or text visible in the video." Write 4 to 7 plain sentences in English,
under 120 words, without lists, headings or quotation marks. Reply with the refined prompt only.

Example.
Prompt: A cup of water is slowly poured out in the space station, releasing the liquid into the surrounding area
Refined: A close-up shot of a cup of water being slowly poured out in a zero-gravity environment inside a space \
station. As the liquid leaves the cup, it forms floating droplets that hover and move gently in the surrounding \
area. The background shows a metallic interior with panels and equipment typical of a space station, slightly out \
of focus. The lighting is soft and diffused, highlighting the clarity and surface tension of the water droplets. \
The scene is calm and focused on the movement of the liquid in microgravity. There are no additional objects or \
text visible in the video."""


@dataclass(frozen=True)
class PromptTemplate:
    """The parts of a refined prompt (see the module docstring) and the HTTP refiner's system prompt."""

    parts: tuple[tuple[str, str], ...] = tuple(DEFAULT_PARTS.items())
    """(part name, text with placeholders), in ``PARTS`` order; a part with empty text is left out."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    where: str = "the built-in template"
    """Where the template came from, for error messages."""

    def __post_init__(self) -> None:
        names = [name for name, _ in self.parts]
        if names != [p for p in PARTS if p in names]:
            raise UserError(f"{self.where}: template parts {names} must be among {list(PARTS)}, in that order")
        for name, text in self.parts:
            check_placeholders(text, f"{self.where}: template part {name!r}")
        used = {field for _, text in self.parts for field in _fields(text)}
        if not used & set(PLACEHOLDERS):
            raise UserError(f"{self.where}: the template never uses {{prompt}} or {{subject}}, so every refined "
                            "prompt would be the same text", hint="put {prompt} in the subject part")
        if not isinstance(self.system_prompt, str) or not self.system_prompt.strip():
            raise UserError(f"{self.where}: template system_prompt must be non-empty text")

    @classmethod
    def from_mapping(cls, data: Mapping, where: str) -> PromptTemplate:
        """The template of a config file's ``template:`` section: any of the parts (text, or null to
        leave one out) and ``system_prompt``; parts not given keep their defaults."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: 'template' must be a mapping of parts, e.g. lighting: \"The lighting is ...\"")
        valid = (*PARTS, "system_prompt")
        unknown = sorted(str(k) for k in data if k not in valid)
        if unknown:
            raise UserError(f"{where}: unknown template keys {unknown}; valid keys: {', '.join(valid)}")
        parts = []
        for name in PARTS:
            text = data.get(name, DEFAULT_PARTS[name])
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise UserError(f"{where}: template part {name!r} must be text (or null to leave it out), "
                                f"got {type(text).__name__}")
            parts.append((name, text))
        system = data.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
        if not isinstance(system, str):
            raise UserError(f"{where}: template system_prompt must be text, got {type(system).__name__}")
        return cls(tuple(parts), system, where)

    def render(self, prompt: str, camera_motion: str | None = None) -> str:
        """The refined prompt of ``prompt``: every non-empty part the prompt does not cover filled in
        and made a sentence; ``camera_motion`` (``--camera-motion``) covers the camera part."""
        text = " ".join(prompt.split()).rstrip(". ")
        values = {"prompt": text, "subject": _lower_first(text)}
        covered = {name for name, pattern in COVERED.items() if pattern.search(text)}
        if camera_motion:
            covered.add("camera")
        # a part that carries the user's text is never left out, whatever it "covers"
        sentences = (_sentence(part.format(**values)) for name, part in self.parts
                     if name not in covered or _fields(part))
        return " ".join(s for s in sentences if s)


class TemplateRefiner:
    """Refines every prompt with a ``PromptTemplate``: deterministic, offline. ``camera_motion``
    (the run's ``--camera-motion``) leaves the camera part out, as a prompt that names one does."""

    name = "template"
    pure = True
    """Runs nothing and sends nothing: a dry run may apply it."""

    def __init__(self, template: PromptTemplate | None = None, camera_motion: str | None = None) -> None:
        self.template = template or PromptTemplate()
        self.camera_motion = camera_motion

    def describe(self) -> str:
        return f"template ({self.template.where})"

    def refine(self, prompt: str) -> str:
        return self.template.render(prompt, self.camera_motion)


def check_placeholders(text: str, where: str) -> None:
    """``UserError`` naming the placeholder and the valid ones for anything but ``{prompt}`` / ``{subject}``."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise UserError(f"{where}: {exc} in {text!r}", hint="write {{ and }} for literal braces") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            raise UserError(f"{where}: unknown placeholder {{{field}}}; valid placeholders: "
                            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS), hint="write {{ and }} for literal braces")
        if spec or conversion:
            raise UserError(f"{where}: placeholder {{{field}}} takes no format spec or conversion; "
                            f"write it as {{{field}}}")


def _fields(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def _lower_first(text: str) -> str:
    """"A cup of water" -> "a cup of water"; acronyms ("NASA ...") stay as they are."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[1:].lower() != first[1:]:
        return text
    return text[:1].lower() + text[1:]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text[-1] in ".!?\"'" else text + "."
