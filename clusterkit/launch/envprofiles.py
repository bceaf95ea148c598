"""NCCL / torch.distributed environment profiles (``env/nccl.yaml``) and their resolution.

Resolution is pure: ``resolve_env`` takes the layers and returns the env plus, for every
variable, which layer set it (recorded with the run so nobody has to guess later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Renamed in torch 2.2 (pytorch PR #114077); the old names only warn, so refuse them here.
DEPRECATED_NAMES = {
    "NCCL_ASYNC_ERROR_HANDLING": "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "NCCL_BLOCKING_WAIT": "TORCH_NCCL_BLOCKING_WAIT",
    "NCCL_DESYNC_DEBUG": "TORCH_NCCL_DESYNC_DEBUG",
    "NCCL_ENABLE_TIMING": "TORCH_NCCL_ENABLE_TIMING",
    "NCCL_DUMP_ON_TIMEOUT": "TORCH_NCCL_DUMP_ON_TIMEOUT",
    "NCCL_TRACE_BUFFER_SIZE": "TORCH_NCCL_TRACE_BUFFER_SIZE",
}

RUN_DIR_PLACEHOLDER = "{run_dir}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    env: dict[str, str]


@dataclass(frozen=True)
class ResolvedEnv:
    """The variables a node's torchrun gets on top of the job's own environment."""

    env: dict[str, str]
    source: dict[str, str]  # variable -> "profile:default" | "node:worker-8" | "profile:debug (--nccl-profile)" | "--env"
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"env": dict(self.env), "source": dict(self.source), "warnings": list(self.warnings)}


def check_env_key(key: str, where: str) -> None:
    if not ENV_KEY.match(key):
        raise UserError(f"{where}: {key!r} is not a valid environment variable name (letters, digits, _)")
    if key in DEPRECATED_NAMES:
        raise UserError(
            f"{where}: {key} is a deprecated name (renamed in torch 2.2); use {DEPRECATED_NAMES[key]}",
            hint=f"replace {key} with {DEPRECATED_NAMES[key]}",
        )


def load_profiles(path: Path) -> dict[str, Profile]:
    """Read ``env/nccl.yaml``; ``extends`` is resolved here so profiles are flat afterwards."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"NCCL profile file not found: {path}", hint="it lives in env/nccl.yaml next to nodes.yaml")
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML syntax error: {exc}")
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict):
        raise UserError(f"{path}: expected a mapping with a 'profiles:' mapping")
    specs = raw["profiles"]
    flat: dict[str, Profile] = {}

    def build(name: str, chain: tuple[str, ...]) -> Profile:
        if name in flat:
            return flat[name]
        if name not in specs:
            raise InvalidChoice(f"{path}: profile", name, sorted(specs))
        if name in chain:
            raise UserError(f"{path}: profiles extend each other in a loop: {' -> '.join(chain + (name,))}")
        spec = specs[name] or {}
        unknown = set(spec) - {"description", "extends", "env"}
        if unknown:
            raise UserError(f"{path}: profile {name!r} has unknown keys {sorted(unknown)}; valid: description, extends, env")
        env: dict[str, str] = {}
        if spec.get("extends"):
            env.update(build(spec["extends"], chain + (name,)).env)
        for key, value in (spec.get("env") or {}).items():
            check_env_key(str(key), f"{path}: profile {name!r}")
            if isinstance(value, (dict, list)) or value is None:
                raise UserError(f"{path}: profile {name!r}: {key} must be a string, got {value!r}")
            env[str(key)] = str(value)
        flat[name] = Profile(name=name, description=str(spec.get("description", "")), env=env)
        return flat[name]

    for name in specs:
        build(name, ())
    return flat


def parse_env_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` from ``--env``; the value is kept verbatim (never shell-parsed)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--env {item!r}: expected KEY=VALUE")
        check_env_key(key, "--env")
        env[key] = value
    return env


def resolve_env(
    profiles: dict[str, Profile],
    *,
    base_profile: str,
    node_name: str,
    node_env: dict[str, str],
    cli_profile: str | None = None,
    cli_env: dict[str, str] | None = None,
    run_dir: str,
) -> ResolvedEnv:
    """Layer the env for one node. Later layers win:

    base profile (the command's default) < node overrides from nodes.yaml
    < the profile the user named with --nccl-profile < --env KEY=VALUE.
    """
    for name in filter(None, (base_profile, cli_profile)):
        if name not in profiles:
            raise InvalidChoice("NCCL profile", name, sorted(profiles))
    layers: list[tuple[str, dict[str, str]]] = [(f"profile:{base_profile}", profiles[base_profile].env)]
    for key in node_env:
        check_env_key(key, f"nodes.yaml node {node_name!r} nccl_env")
    layers.append((f"node:{node_name}", node_env))
    if cli_profile:
        layers.append((f"profile:{cli_profile} (--nccl-profile)", profiles[cli_profile].env))
    layers.append(("--env", cli_env or {}))

    env: dict[str, str] = {}
    source: dict[str, str] = {}
    warnings: list[str] = []
    for origin, values in layers:
        for key, value in values.items():
            if (
                origin.startswith("profile:") and origin.endswith("(--nccl-profile)")
                and source.get(key, "").startswith("node:") and env[key] != value
            ):
                warnings.append(
                    f"--nccl-profile {cli_profile} sets {key}={value}, overriding {node_name}'s "
                    f"{key}={env[key]} from nodes.yaml"
                )
            env[key] = value.replace(RUN_DIR_PLACEHOLDER, run_dir)
            source[key] = origin
    return ResolvedEnv(env=env, source=source, warnings=tuple(warnings))
