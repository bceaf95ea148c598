"""Job presets (``jobs/*.yaml``): what a job runs and its launch defaults, parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError

_KEYS = {"kind", "entry", "args", "nccl_profile", "time_limit_min", "port_range", "rdzv_timeout_s", "cpus_per_task",
         "requeue", "signal_delay_s", "config"}


@dataclass(frozen=True)
class JobPreset:
    name: str
    kind: str
    entry: str
    args: tuple[str, ...] = ()
    nccl_profile: str = "default"
    time_limit_min: int = 60
    port_range: tuple[int, int] = (20000, 29000)
    rdzv_timeout_s: int = 300
    cpus_per_task: int | None = None
    requeue: int = 0
    """Times Slurm requeues the job when it reaches its time limit (it checkpoints on SIGUSR2 first);
    0: the job does not checkpoint-and-requeue."""
    signal_delay_s: int = 120
    """Seconds before the time limit Slurm sends SIGUSR2."""
    config: dict | None = None
    """The workload's own settings (e.g. a training config), validated by the workload."""


def load_preset(jobs_dir: Path, name: str) -> JobPreset:
    """Read ``jobs/<name>.yaml``; unknown keys and wrong types are errors naming the file."""
    path = jobs_dir / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in jobs_dir.glob("*.yaml")) if jobs_dir.exists() else []
        raise InvalidChoice(f"job preset (in {jobs_dir})", name, available or ["<none found>"])
    return load_preset_file(path)


def load_preset_file(path: Path) -> JobPreset:
    """Read one preset file (its name is the file's stem)."""
    import yaml

    path = Path(path)
    name = path.stem
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML syntax error: {exc}")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of preset keys")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; valid keys: {', '.join(sorted(_KEYS))}")
    for key in ("kind", "entry"):
        if not isinstance(raw.get(key), str):
            raise UserError(f"{path}: '{key}' must be a string, got {raw.get(key)!r}")
    args = raw.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise UserError(f"{path}: 'args' must be a list of strings, got {args!r}")
    for key in ("time_limit_min", "rdzv_timeout_s", "cpus_per_task", "signal_delay_s"):
        if key in raw and raw[key] is not None and (not isinstance(raw[key], int) or raw[key] < 1):
            raise UserError(f"{path}: '{key}' must be a positive integer, got {raw[key]!r}")
    requeue = raw.get("requeue", 0)
    if isinstance(requeue, bool) or not isinstance(requeue, int) or requeue < 0:
        raise UserError(f"{path}: 'requeue' must be a non-negative integer, got {requeue!r}")
    config = raw.get("config")
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{path}: 'config' must be a mapping of settings, got {config!r}")
    port_range = raw.get("port_range", [20000, 29000])
    if not (isinstance(port_range, list) and len(port_range) == 2 and all(isinstance(p, int) for p in port_range)):
        raise UserError(f"{path}: 'port_range' must be [low, high], got {port_range!r}")
    return JobPreset(
        name=name, kind=raw["kind"], entry=raw["entry"], args=tuple(str(a) for a in args),
        nccl_profile=str(raw.get("nccl_profile", "default")), time_limit_min=raw.get("time_limit_min", 60),
        port_range=(port_range[0], port_range[1]), rdzv_timeout_s=raw.get("rdzv_timeout_s", 300),
        cpus_per_task=raw.get("cpus_per_task"), requeue=requeue, signal_delay_s=raw.get("signal_delay_s", 120),
        config=config,
    )
