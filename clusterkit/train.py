"""``clusterkit train``: check a training run, pick its nodes, write its config into the run folder,
launch it through the launch layer and, when asked, wait for it and report the checkpoints.

Torch-free (the job imports torch): a preset ``jobs/train-*.yaml`` holds the launch defaults and
the ``config:`` mapping (a ``TrainConfig``), command-line flags override it, and the result is
validated here, so a bad bucket table or a CSV without a ``text`` column fails before anything is
written or submitted.

Resume: ``--resume`` alone continues the newest training run of this project from its newest
complete checkpoint (``--resume RUN|PATH`` names one). The new run takes the old run's config and
nodes unless told otherwise, writes its own checkpoints, and starts ``metrics.jsonl`` with the old
run's lines up to the checkpoint. The data-parallel size is pinned: a different one is refused
unless ``--allow-dp-change``, which restarts the sampler at the start of the checkpoint's epoch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import InvalidChoice, JobFailed, UserError
from clusterkit.jobs import JobPreset, load_preset_file
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project
from opensora_core.presets import checkpoint_paths
from opensora_core.training import checkpoint_files as ckfiles
from opensora_core.training.config import TrainConfig
from opensora_core.training.samples import REQUIRED_COLUMNS

CONFIG_FILE = "train_config.json"
PROGRESS_FILE = runs.PROGRESS_FILE
PRESET_PREFIX = "train-"
#: Settings that hold paths: relative values are resolved where they were written (flags: the
#: current directory; presets: the project folder).
PATH_SETTINGS = ("data", "ckpt_dir", "probe_cache")

ProgressFn = Callable[[dict], None]


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed run starts from and the run that wrote it."""

    checkpoint: ckfiles.CheckpointInfo
    run_dir: Path | None
    skipped: tuple[str, ...]


def submit_train(
    project: Project,
    *,
    config: str | None = None,
    resume: str | None = None,
    overrides: dict | None = None,
    node: str | None = None,
    nodes: str | None = None,
    gpus: int | None = None,
    executor: str = "auto",
    nccl_profile: str | None = None,
    env: dict[str, str] | None = None,
    time_limit_min: int | None = None,
    allow_dp_change: bool = False,
    wait: bool = False,
    dry_run: bool = False,
    force: bool = False,
    timeout_s: float | None = None,
    fault: str | None = None,
    cwd: Path | None = None,
    on_progress: ProgressFn | None = None,
    on_submitted: Callable[[dict], None] | None = None,
) -> dict:
    """Validate, plan, launch; with ``wait`` also the final step and checkpoints. ``resume`` is
    None (a fresh run), "latest" (the newest training run) or a run id / folder / checkpoint path."""
    cwd = Path(cwd or Path.cwd())
    if node and nodes:
        raise UserError("give either --node or --nodes, not both")
    point = find_resume_point(project, resume, cwd) if resume else None
    source_spec = LaunchSpec.read(RunPaths(point.run_dir).spec) if point and point.run_dir else None
    job, train_config = _config(project, config, point, overrides or {}, cwd)
    _check_data(train_config)
    if train_config.ckpt_dir:
        checkpoint_paths(train_config.ckpt_dir)  # the layout, from file names: a missing component fails here
    names, gpus_per_node, plan, notes = choose_nodes(project, train_config, node=node or nodes, gpus=gpus,
                                                     source=source_spec, force=force)
    world = len(names) * gpus_per_node
    if point is not None:
        notes = [*notes, f"resuming from {point.checkpoint.path} (step {point.checkpoint.step})", *point.skipped]
        saved = point.checkpoint.world_size
        if saved != world and not allow_dp_change:
            raise UserError(
                f"{point.checkpoint.path} was written by {saved} ranks but this run would have {world} "
                f"({len(names)} node(s) x {gpus_per_node}); the data position and the per-rank RNG streams are "
                "tied to the data-parallel size",
                hint=f"resume on {saved} ranks (e.g. --gpus {saved // len(names)} when it divides), or pass "
                     "--allow-dp-change to restart the sampler at the start of the checkpoint's epoch")
    run_id = new_run_id(job.kind)
    paths = RunPaths(project.registry.run_dir(run_id))
    args = [*job.args, "--config", str(paths.root / CONFIG_FILE), "--result", str(paths.result)]
    if point is not None:
        args += ["--resume-from", str(point.checkpoint.path)]
    if allow_dp_change:
        args.append("--allow-dp-change")
    if fault:
        args += ["--fault", fault]
    spec = LaunchSpec(
        run_id=run_id, kind=job.kind, nodes=node_slots(project.inventory, names), gpus_per_node=gpus_per_node,
        entry=job.entry, args=tuple(args), executor=pick_executor(executor), base_profile=job.nccl_profile,
        nccl_profile=nccl_profile, env=dict(env or {}), time_limit_min=time_limit_min or job.time_limit_min,
        port_range=job.port_range, rdzv_timeout_s=job.rdzv_timeout_s, cpus_per_task=job.cpus_per_task,
        requeue=job.requeue, signal_delay_s=job.signal_delay_s,
    )
    files = {CONFIG_FILE: json.dumps(train_config.to_dict(), indent=2, ensure_ascii=False) + "\n"}
    submitted = runs.launch(project, spec, dry_run=dry_run, files=files)
    result = {
        **submitted, "preset": job.name, "nodes": list(names), "gpus_per_node": gpus_per_node, "world_size": world,
        "config": train_config.to_dict(), "plan": plan, "notes": notes,
        "warnings": _warnings(train_config),
        "resume": ({**point.checkpoint.to_dict(), "run_dir": str(point.run_dir) if point.run_dir else None}
                   if point else None),
        "expected_checkpoints": str(paths.root / ckfiles.CHECKPOINTS),
    }
    if dry_run or not wait:
        return result
    if on_submitted is not None:
        on_submitted(result)
    return {**result, **wait_for_train(project, run_id, timeout_s=timeout_s, on_progress=on_progress)}


# ---------------------------------------------------------------------------- config


def _config(project: Project, config: str | None, point: ResumePoint | None, overrides: dict,
            cwd: Path) -> tuple[JobPreset, TrainConfig]:
    """The job preset and the validated training config (preset or resumed run, then overrides)."""
    overrides = _resolve_paths(overrides, cwd)
    if config is None and point is None:
        raise UserError("which training? give --config jobs/train-*.yaml (or a preset name), or --resume",
                        hint=f"presets: {', '.join(list_presets(project)) or '(none in ' + str(project.jobs_dir) + ')'}")
    if config is not None:
        job = load_train_preset(project, config, cwd)
        base = _resolve_paths(dict(job.config or {}), project.root)
        base.setdefault("name", job.name)
    else:
        job, base = _resumed_job(point)
    try:
        train_config = TrainConfig.from_dict({**base, **overrides}, what=f"training config ({job.name})")
    except UserError as exc:
        raise UserError(exc.message, hint=exc.hint or "settings come from the preset's config: and --set KEY=VALUE") \
            from None
    return job, train_config


def _resumed_job(point: ResumePoint) -> tuple[JobPreset, dict]:
    """Launch settings and training config of the run a checkpoint came from."""
    if point.run_dir is None or not (point.run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{point.checkpoint.path} is not inside a clusterkit run folder, so its training config is "
                        "unknown", hint="pass --config jobs/train-*.yaml as well")
    base = json.loads((point.run_dir / CONFIG_FILE).read_text())
    spec = LaunchSpec.read(RunPaths(point.run_dir).spec)
    job_args = _job_args(spec.args)
    job = JobPreset(name=base.get("name", "train"), kind=spec.kind, entry=spec.entry, args=job_args,
                    nccl_profile=spec.base_profile, time_limit_min=spec.time_limit_min, port_range=spec.port_range,
                    rdzv_timeout_s=spec.rdzv_timeout_s, cpus_per_task=spec.cpus_per_task, requeue=spec.requeue,
                    signal_delay_s=spec.signal_delay_s)
    return job, base


def _job_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """A train spec's arguments without the ones submit_train adds per run."""
    out, skip = [], 0
    per_run = {"--config": 1, "--result": 1, "--resume-from": 1, "--fault": 1, "--allow-dp-change": 0}
    for arg in args:
        if skip:
            skip -= 1
            continue
        if arg in per_run:
            skip = per_run[arg]
            continue
        out.append(arg)
    return tuple(out)


def load_train_preset(project: Project, config: str, cwd: Path) -> JobPreset:
    """``--config``: a path to a preset file, or a preset name in ``jobs/`` (``train-tiny`` or ``tiny``)."""
    candidates = [cwd / config, project.root / config, project.jobs_dir / f"{config}.yaml",
                  project.jobs_dir / f"{PRESET_PREFIX}{config}.yaml"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise InvalidChoice("--config", config, list_presets(project) or ["a jobs/train-*.yaml file"])
    job = load_preset_file(path)
    if job.kind != "train" or job.config is None:
        raise UserError(f"{path} is not a training preset (it needs kind: train and a config: mapping)",
                        hint=f"presets: {', '.join(list_presets(project))}")
    return job


def list_presets(project: Project) -> list[str]:
    return sorted(p.stem for p in project.jobs_dir.glob(f"{PRESET_PREFIX}*.yaml")) if project.jobs_dir.exists() else []


def parse_set(assignments: list[str]) -> dict:
    """``--set KEY=VALUE`` (VALUE in YAML: ``lr=2e-5``, ``plugin=ddp``, ``mask_ratios={image_head: 0.2}``)."""
    import yaml

    out = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return out


def _resolve_paths(settings: dict, base: Path) -> dict:
    """Settings with relative paths made absolute against ``base`` (``init`` only when it is a path)."""
    out = dict(settings)
    for key, value in settings.items():
        is_path = key in PATH_SETTINGS or (key == "init" and value not in ("random", "pretrained"))
        if is_path and isinstance(value, str) and value:
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else (base / path).resolve())
    return out


def _check_data(config: TrainConfig) -> None:
    """The CSV exists and has the required columns (checked here: a clear message before launch)."""
    if not config.data:
        raise UserError("no training data: the preset sets no data CSV",
                        hint="pass --data CSV (columns path,text[,num_frames,height,width,fps]); "
                             "python -m opensora_core.training.synthetic DIR writes a small one")
    path = Path(config.data)
    if not path.is_file():
        raise UserError(f"data CSV {str(path)!r} does not exist",
                        hint="on a cluster it must be on a filesystem every node sees")
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the header "
                        f"has {', '.join(header) if header else 'no columns'}",
                        hint="the CSV needs path and text; num_frames, height, width and fps are probed when absent")


def _warnings(config: TrainConfig) -> list[str]:
    if config.model == "tiny" and config.init == "random":
        return ["model tiny starts from RANDOM weights (its T5 and VAE are random too): a pipeline test, "
                "not a model you would want to sample from"]
    return []


# ---------------------------------------------------------------------------- nodes


def choose_nodes(project: Project, config: TrainConfig, *, node: str | None, gpus: int | None,
                 source: LaunchSpec | None, force: bool) -> tuple[list[str], int, dict | None, list[str]]:
    """(node names, GPUs per node, plan, notes). A resumed run keeps its source's nodes and GPUs
    unless --node/--nodes/--gpus say otherwise; ``tiny`` does not need the planner."""
    inventory = project.inventory
    if node is None and source is not None:
        names = list(source.node_names)
        return names, gpus or source.gpus_per_node, None, [f"nodes {','.join(names)} and {source.gpus_per_node} "
                                                          "GPU(s) each, as the resumed run"]
    names = [n.name for n in inventory.select(node)] if node else None
    if config.model == "tiny":
        chosen = names or [inventory.nodes[0].name]
        why = "--node" if names else "the first node: tiny needs no planning"
        return chosen, gpus or 1, None, [f"model tiny on {','.join(chosen)} ({why})"]
    from clusterkit.planner import PlanRequest, choose, plan

    from opensora_core.geometry import aspect_ratio_choices

    resolution, frames = config.largest_bucket()
    aspect = "9:16" if "9:16" in aspect_ratio_choices(resolution) else "1:1"  # image tables have no 9:16
    request = PlanRequest(resolution=resolution, frames=frames, aspect_ratio=aspect, task="train",
                          nodes=node or "all", gpus=gpus, dtype="bf16" if config.dtype == "bf16" else None)
    the_plan = plan(inventory, request)
    notes = [f"planned for the largest bucket, {resolution} x {frames} frames, one sample per GPU"]
    if names and len(names) > 1:
        verdicts = [n for n in the_plan.nodes]
        bad = [n for n in verdicts if not n.feasible]
        if bad and not force:
            raise UserError(f"{bad[0].name} cannot train {request.describe()}: {'; '.join(bad[0].reasons)}",
                            hint="--force runs it anyway")
        per_node = gpus or min(n.gpu_count for n in verdicts)
        return names, per_node, the_plan.to_dict(), notes
    try:
        chosen = choose(the_plan, names[0] if names else None)
    except UserError as exc:
        if not force or not names:
            raise UserError(exc.message, hint=(exc.hint + "; " if exc.hint else "") + "--force runs it anyway") from None
        target = inventory.node(names[0])
        return names, gpus or target.gpu.count, the_plan.to_dict(), [*notes, f"--force: {exc.message}"]
    layout = chosen.chosen.layout
    notes.append(f"planner: {chosen.name}, {layout.gpus} GPU(s), {chosen.chosen.settings.dtype}")
    return [chosen.name], gpus or layout.gpus, chosen.to_dict(), notes


# ---------------------------------------------------------------------------- resume


def find_resume_point(project: Project, resume: str, cwd: Path) -> ResumePoint:
    """``latest``: the newest training run's newest complete checkpoint (or, when it has none, the
    checkpoint that run itself resumed from); otherwise a run id, a run folder, a checkpoints folder
    or a ``step-N`` folder."""
    if resume == "latest":
        train_runs = [r for r in project.registry.list() if r.kind == "train"]
        if not train_runs:
            raise UserError(f"nothing to resume: no training run in {project.runs_dir}",
                            hint="start one with clusterkit train --config jobs/train-*.yaml")
        return _from_run(project, train_runs[0].run_id)
    path = Path(resume).expanduser()
    path = path if path.is_absolute() else cwd / path
    if path.exists():
        info, skipped = ckfiles.resolve_resume_path(path)
        return ResumePoint(info, _run_dir_of(info.path), tuple(skipped))
    return _from_run(project, resume)


def _from_run(project: Project, run: str) -> ResumePoint:
    record = project.registry.get(run)
    [record] = runs.refresh(project, [record])
    if not record.terminal:
        raise UserError(f"run {record.run_id} is still {record.state}: resuming it now would train twice",
                        hint=f"wait for it, or clusterkit cancel {record.run_id}")
    root = record.run_dir / ckfiles.CHECKPOINTS
    info, skipped = ckfiles.latest_checkpoint(root)
    if info is not None:
        return ResumePoint(info, record.run_dir, tuple(skipped))
    spec_path = RunPaths(record.run_dir).spec
    earlier = _resume_arg(LaunchSpec.read(spec_path).args) if spec_path.exists() else None
    if earlier is not None:
        info, more = ckfiles.resolve_resume_path(Path(earlier))
        return ResumePoint(info, _run_dir_of(info.path), (*skipped, *more))
    detail = f": {'; '.join(skipped)}" if skipped else ""
    raise UserError(f"nothing to resume: run {record.run_id} has no complete checkpoint{detail}",
                    hint="checkpoints are written every ckpt_every steps; start a fresh run instead")


def _resume_arg(args: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == "--resume-from":
            return args[i + 1]
    return None


def _run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder holding ``checkpoints/step-N`` (None when the checkpoint lives elsewhere)."""
    run_dir = checkpoint.parent.parent
    return run_dir if checkpoint.parent.name == ckfiles.CHECKPOINTS and (run_dir / CONFIG_FILE).is_file() else None


# ---------------------------------------------------------------------------- waiting


def wait_for_train(project: Project, run_id: str, *, timeout_s: float | None = None,
                   on_progress: ProgressFn | None = None) -> dict:
    """Wait for a training run (through requeues); the final step and checkpoints, or the job's error."""
    paths = RunPaths(project.registry.run_dir(run_id))
    record = runs.wait_reporting(project, run_id, timeout_s=timeout_s, on_progress=on_progress,
                                 timeout_note="cancelled (its checkpoints stay)",
                                 timeout_hint=f"clusterkit train --resume {run_id}")
    report = read_json(paths.result) or {}
    if record.state == "COMPLETED" and report.get("ok"):
        keys = ("step", "stopped", "checkpoints", "latest_checkpoint", "export", "metrics", "attempts",
                "samples_seen", "bad_samples", "data", "seconds", "device", "plugin", "dtype")
        return {"state": record.state, **{k: report.get(k) for k in keys},
                "job_notes": report.get("notes", [])}
    error = report.get("error")
    logs = f"clusterkit logs {run_id}"
    if error and error.get("kind") in ("user_error", "usage_error"):
        raise UserError(f"run {run_id} stopped: {error['message']}", hint=error.get("hint") or logs)
    detail = error["message"] if error else f"the job ended {record.state} without a result"
    raise JobFailed(f"run {run_id} failed: {detail}", hint=logs + (f" ({record.summary})" if record.summary else ""))
