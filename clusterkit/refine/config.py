"""The refine config (``env/refine.yaml`` or ``--refine-config FILE``) and building a refiner from it.

    refine:
      template:                 # parts of the template refiner's prompt (and the HTTP system prompt)
        lighting: "The lighting is warm late-afternoon sunlight"
        absence: null           # leave a part out
      command:                  # --refine command
        argv: ["python3", "my_refiner.py", "--style", "detailed"]
        timeout_s: 60
      http:                     # --refine http
        url: https://api.openai.com/v1/chat/completions
        model: gpt-4o
        api_key_env: OPENAI_API_KEY   # the NAME of the variable holding the key, never the key
        timeout_s: 60
        temperature: 0

Every section and key is optional; what is left out keeps its default (no command). The file is
parsed here only; errors name the file, the key and the valid keys, never a value that might be
a key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, NotFound, UserError
from clusterkit.refine.chat import HttpRefiner, check_url
from clusterkit.refine.command import CommandRefiner, check_argv
from clusterkit.refine.template import PromptTemplate, TemplateRefiner

METHODS = ("none", "template", "command", "http")
CONFIG_FILE = "refine.yaml"
DEFAULT_URL = "https://api.openai.com/v1/chat/completions"
DEFAULT_MODEL = "gpt-4o"  # upstream's --llm-refine model
DEFAULT_KEY_ENV = "OPENAI_API_KEY"  # upstream's variable
DEFAULT_TIMEOUT_S = 60.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEYS = ("api_key", "key", "token", "authorization", "password", "secret")


@dataclass(frozen=True)
class CommandSettings:
    """``--refine command``: the argv run once per prompt (prompt on stdin, refined prompt on stdout)."""

    argv: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    cwd: Path | None = None
    """Where the command runs: the config file's folder (relative paths in argv start there)."""


@dataclass(frozen=True)
class HttpSettings:
    """``--refine http``: an OpenAI-compatible chat-completions endpoint."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    api_key_env: str | None = DEFAULT_KEY_ENV
    """Name of the environment variable holding the API key (None: no Authorization header)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    temperature: float | None = 0.0


@dataclass(frozen=True)
class RefineConfig:
    """The template, the command and the endpoint, and where they came from."""

    template: PromptTemplate = field(default_factory=PromptTemplate)
    command: CommandSettings | None = None
    http: HttpSettings = field(default_factory=HttpSettings)
    source: str = "built-in defaults"


def find_refine_config(env_dir: Path, explicit: str | Path | None = None) -> RefineConfig:
    """``explicit`` (must exist), else ``env_dir/refine.yaml`` when present, else the defaults."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise NotFound(f"refine config {str(path)!r} does not exist")
        return load_refine_config(path)
    path = Path(env_dir) / CONFIG_FILE
    return load_refine_config(path) if path.is_file() else RefineConfig()


def load_refine_config(path: Path) -> RefineConfig:
    """Parse a refine config file (see the module docstring)."""
    import yaml

    path = Path(path).resolve()
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: YAML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read refine config {where}: {exc}") from None
    if not isinstance(raw, Mapping) or set(raw) != {"refine"} or not isinstance(raw["refine"], (Mapping, type(None))):
        raise UserError(f"{where}: expected one top-level 'refine:' mapping", hint="see docs/prompt-refinement.md")
    section = raw["refine"] or {}
    _check_keys(section, ("template", "command", "http"), where, "refine")
    template = PromptTemplate.from_mapping(section.get("template") or {}, where)
    command = _command(section["command"], where, path.parent) if section.get("command") is not None else None
    http = _http(section.get("http") or {}, where)
    return RefineConfig(template, command, http, where)


def build_refiner(method: str, config: RefineConfig, environ: Mapping[str, str], *,
                  camera_motion: str | None = None):
    """The refiner of ``--refine METHOD`` (None for ``none``); a ``UserError`` when its settings or its
    key's environment variable are missing. Nothing is run yet. ``camera_motion`` (the run's
    ``--camera-motion``) makes the template refiner leave its camera part out."""
    _check_method(method, config)
    if method == "none":
        return None
    if method == "template":
        return TemplateRefiner(config.template, camera_motion)
    if method == "command":
        c = config.command
        return CommandRefiner(c.argv, c.timeout_s, dict(environ), c.cwd)
    h = config.http
    key = None
    if h.api_key_env is not None:
        key = environ.get(h.api_key_env)
        if not key:
            raise UserError(f"--refine http reads the API key from ${h.api_key_env} (http.api_key_env in "
                            f"{config.source}), which is not set on this host",
                            hint=f"export {h.api_key_env}=... here, or set http.api_key_env: null for an "
                            "endpoint without a key")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key):  # the value itself is never shown
            raise UserError(f"${h.api_key_env} holds whitespace or control characters (a pasted newline?); "
                            "an API key is one word", hint=f"export {h.api_key_env} again without them")
    return HttpRefiner(h.url, h.model, config.template.system_prompt, h.timeout_s, h.temperature, key)


def refine_identity(method: str, config: RefineConfig) -> dict:
    """What decides the texts ``--refine METHOD`` makes, for a sweep's identity: ``{}`` for none, else
    ``{"refiner": METHOD, "refine_settings": <12 hex>}``, a digest of the settings that change the
    answers (template: its parts; command: argv and its folder; http: URL, model, temperature and
    system prompt). Never the key: it is not read here, so a sweep that reuses its refined prompts
    needs none. The settings are checked as ``build_refiner`` checks them."""
    _check_method(method, config)
    if method == "none":
        return {}
    if method == "template":
        settings = {"parts": [list(part) for part in config.template.parts]}
    elif method == "command":
        settings = {"argv": list(config.command.argv), "cwd": str(config.command.cwd)}
    else:
        h = config.http
        settings = {"url": h.url, "model": h.model, "temperature": h.temperature,
                    "system_prompt": config.template.system_prompt}
    # a digest, not the settings: argv and the URL's query string may hold tokens
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"refiner": method, "refine_settings": digest[:12]}


def _check_method(method: str, config: RefineConfig) -> None:
    if method not in METHODS:
        raise InvalidChoice("--refine", method, METHODS)
    if method == "command" and config.command is None:
        raise UserError(f"--refine command: no command configured in {config.source}",
                        hint="add refine: {command: {argv: [...]}} to env/refine.yaml or pass --refine-config FILE")


def _command(data, where: str, folder: Path) -> CommandSettings:
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: 'command' must be a mapping with argv (a list) and optionally timeout_s")
    _check_keys(data, ("argv", "timeout_s"), where, "command")
    return CommandSettings(check_argv(data.get("argv"), where),
                           _seconds(data.get("timeout_s", DEFAULT_TIMEOUT_S), where, "command.timeout_s"), folder)


def _http(data, where: str) -> HttpSettings:
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: 'http' must be a mapping (url, model, api_key_env, timeout_s, temperature)")
    secret = sorted(str(k) for k in data if str(k).lower() in _SECRET_KEYS)
    if secret:
        raise UserError(f"{where}: http.{secret[0]}: never write a key in the config file",
                        hint="export it in an environment variable and name that variable in http.api_key_env")
    _check_keys(data, ("url", "model", "api_key_env", "timeout_s", "temperature"), where, "http")
    model = data.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model.strip():
        raise UserError(f"{where}: http.model must be a model name, e.g. {DEFAULT_MODEL}")
    key_env = data.get("api_key_env", DEFAULT_KEY_ENV)
    if key_env is not None and (not isinstance(key_env, str) or not _ENV_NAME.match(key_env)):
        # the value is not shown: a user may have pasted the key itself here
        raise UserError(f"{where}: http.api_key_env must be the NAME of an environment variable (letters, digits, "
                        "_), not the key itself", hint=f"e.g. api_key_env: {DEFAULT_KEY_ENV}")
    temperature = data.get("temperature", 0.0)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise UserError(f"{where}: http.temperature {temperature!r} must be a number from 0 to 2 (or null)")
    return HttpSettings(check_url(data.get("url", DEFAULT_URL), f"{where}: http.url"), model, key_env,
                        _seconds(data.get("timeout_s", DEFAULT_TIMEOUT_S), where, "http.timeout_s"),
                        None if temperature is None else float(temperature))


MAX_TIMEOUT_S = 3600.0  # a refiner that needs longer is stuck


def _seconds(value, where: str, key: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_TIMEOUT_S):
        raise UserError(f"{where}: {key} {value!r} must be a number of seconds above 0 and at most "
                        f"{MAX_TIMEOUT_S:g}")
    return float(value)


def _check_keys(data: Mapping, valid: tuple[str, ...], where: str, section: str) -> None:
    unknown = sorted(str(k) for k in data if k not in valid)
    if unknown:
        raise UserError(f"{where}: unknown {section} keys {unknown}; valid keys: {', '.join(valid)}")
