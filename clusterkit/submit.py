"""``clusterkit submit infer``: check a text-to-video request, take the node and settings from the
planner, write the request and prompts into the run folder, launch the inference job through the
launch layer and, when asked, wait for it and report its files, timings and peak memory.

Torch-free: this only launches a job (``jobs/infer.yaml`` -> ``opensora_core.inference.run``).

Settings:
- ``opensora-v1.2``: the planner (``clusterkit.planner``) picks the node when ``--node`` is not
  given, the layout (GPUs, ``--sp``, ``--cfg-parallel``, replicas; each flag given pins it) and
  sets precision, attention, T5 placement and VAE micro-batch; a plan it rejects is refused
  unless ``--force``.
- ``tiny``: the planner sizes the full model, not this one, so it never blocks a tiny run: the
  node is ``--node``, else the planner's best node for the same video, else the first node; the
  layout is the flags' (default one GPU); the settings are fp32 everywhere (CPU-friendly).

Every layout is checked (``opensora_core.parallel.ParallelLayout``) before anything is planned,
written or submitted: ``--sp 6`` on a 16-head model fails at once, naming the rule and the legal
layouts. ``--nodes`` (a prompt sweep over several nodes) is ``clusterkit.sweep``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import JobFailed, UserError
from clusterkit.jobs import load_preset
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project
from opensora_core.errors import ConditioningError
from opensora_core.inference.prompts import check_prompts, read_prompts_file
from opensora_core.inference.request import InferRequest
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME, ParallelLayout, check_sp_degree
from opensora_core.presets import checkpoint_overrides, checkpoint_paths, get_preset

PRESET = "infer"
REQUEST_FILE = "request.json"
PROMPTS_FILE = "prompts.json"
PROGRESS_FILE = runs.PROGRESS_FILE
# --t5 placement -> (t5_device, t5_dtype, t5_offload). "offload" encodes in the model's precision
# (fp32 without bf16); every placement encodes on the GPU, and only "offload" then moves T5 off it.
_T5_PLACEMENT = {"gpu-fp32": ("gpu", "fp32", False), "gpu-bf16": ("gpu", "bf16", False)}

ProgressFn = Callable[[dict], None]


@dataclass(frozen=True)
class Choice:
    """Where the run goes, on which layout and with which settings, and why."""

    node: str
    settings: dict
    plan: dict | None
    notes: tuple[str, ...]
    layout: ParallelLayout = ParallelLayout()
    seconds: float | None = None
    """Predicted seconds per video of one replica group (the full model's, scaled by a `bench infer`
    calibration where one applies; None when unknown)."""


@dataclass(frozen=True)
class LayoutPins:
    """The layout flags: ``gpus``, ``sp`` and ``cfg_parallel`` pin the planner (None: it chooses)."""

    gpus: int | None = None
    sp: int | None = None
    cfg_parallel: bool | None = None
    sp_scheme: str = DEFAULT_SP_SCHEME

    def check(self, num_heads: int) -> None:
        """``LayoutError`` naming the rule for flags no node could run (before any planning)."""
        if self.sp is not None:
            check_sp_degree(self.sp, num_heads, self.gpus or self.sp)
        ParallelLayout(sp=self.sp or 1, cfg=2 if self.cfg_parallel else 1, sp_scheme=self.sp_scheme,
                       num_heads=num_heads)
        if self.gpus is not None:
            ParallelLayout.for_world(self.gpus, sp=self.sp or 1, cfg_parallel=bool(self.cfg_parallel),
                                     sp_scheme=self.sp_scheme, num_heads=num_heads)

    def fixed(self, num_heads: int) -> ParallelLayout:
        """The layout the flags give when nothing is planned (tiny): one replica unless --gpus says more."""
        sp, cfg = self.sp or 1, bool(self.cfg_parallel)
        gpus = self.gpus or sp * (2 if cfg else 1)
        return ParallelLayout.for_world(gpus, sp=sp, cfg_parallel=cfg, sp_scheme=self.sp_scheme, num_heads=num_heads)


def submit_infer(
    project: Project,
    *,
    frames: str,
    resolution: str,
    aspect_ratio: str = "9:16",
    prompts: tuple[str, ...] = (),
    prompts_file: str | None = None,
    model: str = "opensora-v1.2",
    ckpt_dir: str | None = None,
    ckpt_paths: Mapping[str, str] | None = None,
    node: str | None = None,
    gpus: int | None = None,
    sp: int | None = None,
    cfg_parallel: bool | None = None,
    sp_scheme: str = DEFAULT_SP_SCHEME,
    seed: int = 42,
    steps: int = 30,
    num_samples: int = 1,
    cfg_scale: float = 7.0,
    fps: int = 24,
    executor: str = "auto",
    nccl_profile: str | None = None,
    env: dict[str, str] | None = None,
    output: str | None = None,
    wait: bool = False,
    dry_run: bool = False,
    force: bool = False,
    timeout_s: float | None = None,
    on_progress: ProgressFn | None = None,
    on_submitted: Callable[[dict], None] | None = None,
    refine: str = "none",
    refine_config: str | None = None,
    environ: Mapping[str, str] | None = None,
    start_index: int = 0,
    end_index: int | None = None,
    **options,
) -> dict:
    """Validate, plan, launch; with ``wait`` also the outputs. Every input error is raised before
    anything is written or submitted. ``on_submitted(result)`` runs once the job is submitted and
    before waiting; ``on_progress(event)`` on every poll while waiting (the job's progress.json).
    ``refine`` (none|template|command|http, settings from ``refine_config`` or env/refine.yaml, keys
    from ``environ``) refines the prompts here, once, after every other check (``clusterkit.refine``);
    a dry run checks the config and the key but calls no command or endpoint (the template still runs).
    ``start_index`` / ``end_index`` take a slice of the prompts (file names keep their index);
    ``options`` are more ``InferRequest`` fields (``CONDITIONING_OPTIONS``: references, mask
    strategies, loops, scores, batch size; docs/inference-modes.md). Every reference is opened
    here, and its path made absolute, before anything is planned or written."""
    preset = get_preset(model)
    check_timeout(timeout_s)
    pins = LayoutPins(gpus, sp, cfg_parallel, sp_scheme)
    pins.check(preset.stdit3_config.get("num_heads", 16))  # before anything is read, planned or written
    refiner = _refiner(project, refine, refine_config, environ, camera_motion=options.get("camera_motion"))
    all_prompts = _prompts(prompts, prompts_file)
    prompt_list = slice_prompts(all_prompts, start_index, end_index)
    unknown = sorted(set(options) - set(CONDITIONING_OPTIONS))
    if unknown:
        raise TypeError(f"submit_infer: unknown options {unknown}")
    options = slice_per_prompt(options, len(all_prompts), start_index, end_index)
    ckpt_dir, ckpt_paths = resolve_checkpoint(ckpt_dir, ckpt_paths)  # missing components fail here
    draft = InferRequest(prompts=prompt_list, frames=frames, resolution=resolution, aspect_ratio=aspect_ratio,
                         model=model, ckpt_dir=ckpt_dir, ckpt_paths=ckpt_paths, seed=seed, steps=steps,
                         num_samples=num_samples, cfg_scale=cfg_scale, fps=fps, start_index=start_index, **options)
    draft = draft.with_absolute_references()  # missing / unreadable references fail here, on this host
    executor_name = pick_executor(executor)  # local benches calibrate only plans that run locally
    choice = choose_settings(project, draft, node=node, force=force, pins=pins, executor=executor_name)
    refinement = _refine(draft.prompts, refiner, dry_run=dry_run)  # a dry run calls no command or endpoint
    job = load_preset(project.jobs_dir, PRESET)
    run_id = new_run_id(job.kind)
    paths = RunPaths(project.registry.run_dir(run_id))
    output_dir = Path(output).expanduser().resolve() if output else paths.root / "outputs"
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {str(output_dir)!r} is a file, not a folder")
    layout = choice.layout
    request = InferRequest(**{**draft.to_dict(), **choice.settings, "name": run_id,
                              "output_dir": str(output_dir), "notes": choice.notes, "node": choice.node,
                              "sp": layout.sp, "cfg_parallel": layout.cfg_enabled, "sp_scheme": layout.sp_scheme,
                              "refined_prompts": refinement.prompts if refinement else None,
                              "refiner": None if refinement is None or refinement.dry_run else refinement.refiner})
    spec = LaunchSpec(
        run_id=run_id, kind=job.kind, nodes=node_slots(project.inventory, choice.node),
        gpus_per_node=layout.world_size,
        entry=job.entry,
        args=(*job.args, "--request", str(paths.root / REQUEST_FILE), "--prompts", str(paths.root / PROMPTS_FILE),
              "--result", str(paths.result)),
        executor=executor_name, base_profile=job.nccl_profile, nccl_profile=nccl_profile,
        env=dict(env or {}), time_limit_min=job.time_limit_min, port_range=job.port_range,
        rdzv_timeout_s=job.rdzv_timeout_s, cpus_per_task=job.cpus_per_task,
    )
    files = {
        REQUEST_FILE: json.dumps(request.settings(), indent=2, ensure_ascii=False) + "\n",
        PROMPTS_FILE: json.dumps(request.prompts_json(), indent=2, ensure_ascii=False) + "\n",
    }
    submitted = runs.launch(project, spec, dry_run=dry_run, files=files)
    result = {
        **submitted,
        "node": choice.node,
        "model": preset.name,
        "random_weights": request.random_weights,
        "warnings": _warnings(request, preset),
        "notes": list(choice.notes),
        "settings": {key: getattr(request, key) for key in ("dtype", "t5_device", "t5_dtype", "t5_offload",
                                                            "vae_micro_batch",
                                                            "flash_attn", "seed", "steps", "cfg_scale", "fps")},
        "plan": choice.plan,
        "layout": layout.to_dict(),
        "num_videos": len(request.videos()),
        "output_dir": str(output_dir),
        "expected_outputs": [str(output_dir / v.filename) for v in request.videos()],
        "refine": refinement.to_dict(request.prompts) if refinement else None,
        "request": request.to_dict(),  # what request.json + prompts.json hold (``InferRequest.from_dict``)
    }
    if dry_run or not wait:
        return result
    if on_submitted is not None:
        on_submitted(result)
    return {**result, **wait_for_infer(project, run_id, timeout_s=timeout_s, on_progress=on_progress)}


def resolve_checkpoint(ckpt_dir: str | None, ckpt_paths: Mapping[str, str] | None) -> tuple[str | None, dict]:
    """``--ckpt-dir`` and the ``--ckpt-path-<name>`` component folders checked on this host (the
    layout, from file names; every component must resolve) and made absolute, so the job finds them
    whatever its working folder; (None, {}) when neither is given (random weights, or the request
    names what is needed)."""
    overrides = checkpoint_overrides(dict(ckpt_paths or {}))
    if ckpt_dir is None and not overrides:
        return None, {}
    checkpoint_paths(ckpt_dir, **overrides)

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    return (None if ckpt_dir is None else absolute(ckpt_dir)), {name: absolute(p) for name, p in overrides.items()}


TINY_SETTINGS = {"dtype": "fp32", "t5_device": "gpu", "t5_dtype": "fp32", "vae_micro_batch": 4, "flash_attn": False}


def read_calibrations(project: Project, preset: str) -> tuple[list, list]:
    """The ``bench infer`` calibrations of ``preset`` and notes on unreadable rows (one registry read:
    a sweep passes them to every node's ``choose_settings``)."""
    from clusterkit.calibration import CalibrationStore

    return CalibrationStore(project.runs_dir).read(preset)


def check_timeout(timeout_s: float | None) -> None:
    """``--timeout`` (with --wait): None, or a finite number of seconds above 0."""
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UserError(f"--timeout {timeout_s!r} must be a positive number of seconds",
                        hint="or leave it out to wait until the run ends")


def choose_settings(project: Project, request: InferRequest, *, node: str | None, force: bool,
                    pins: LayoutPins = LayoutPins(), objective: str | None = None,
                    num_videos: int | None = None, executor: str = "slurm",
                    calibrations: tuple[list, list] | None = None) -> Choice:
    """The node, the layout and the request fields the plan decides (see the module docstring).
    ``num_videos`` (default: the request's) caps the replicas; ``objective`` is the planner's;
    ``executor`` (resolved: slurm or local) is where the job runs, so which `bench infer`
    calibrations rank the nodes (one benched with the local executor only a local run)."""
    from clusterkit.planner import PlanRequest, choose, plan

    if node is not None:
        project.inventory.node(node)  # an unknown node is an error with the valid names
    tiny = request.model == "tiny"
    fixed = pins.fixed(request.num_heads) if tiny else None
    plan_request = PlanRequest(
        resolution=request.resolution, frames=request.frames, aspect_ratio=request.aspect_ratio,
        num_videos=num_videos or len(request.videos()), nodes=node or "all", objective=objective,
        gpus=fixed.world_size if tiny else pins.gpus, sp=fixed.sp if tiny else pins.sp,
        cfg_parallel=fixed.cfg_enabled if tiny else pins.cfg_parallel, sp_scheme=pins.sp_scheme,
        steps=request.steps * request.loop,  # --loop makes that many clips, each sampled in full
    )
    # `clusterkit bench infer` calibrations of this preset rank the nodes as `clusterkit plan` does
    calibrations, skipped = calibrations if calibrations is not None else read_calibrations(project, request.model)
    the_plan = plan(project.inventory, plan_request, calibrations, executor=executor)
    if tiny:
        try:
            best = choose(the_plan, node) if node else choose(the_plan)
            name, why, seconds = best.name, "--node" if node else "the planner's best node for this video size", \
                best.seconds
        except UserError:
            name = node or project.inventory.nodes[0].name
            why = "--node" if node else "the first node: no node fits the full-size model"
            seconds = _leanest_seconds(the_plan, name)
        _check_gpus(project, name, fixed)
        return Choice(name, dict(TINY_SETTINGS), None,
                      ((f"--model tiny: the planner sizes opensora-v1.2 only, so tiny runs fp32 with default "
                        f"settings on {name} ({why}), layout {fixed.describe()}"), *skipped), fixed, seconds)
    try:
        chosen = choose(the_plan, node)
        s = chosen.chosen.settings
        notes = [(f"planner: {chosen.name} with {s.dtype}, attention {s.attention}, T5 {s.t5}, "
                  f"VAE micro-batch {s.vae_micro_batch}"), *chosen.reasons]
    except UserError as exc:
        if not force:
            hint = (exc.hint + "; " if exc.hint else "") + "--force runs it anyway"
            raise UserError(exc.message, hint=hint) from None
        chosen = _forced(the_plan, node)
        notes = [f"--force: the planner rejected this run ({exc.message}); running on {chosen.name} anyway"]
    plan_dict = chosen.to_dict()
    settings = {"dtype": plan_dict["dtype"], "flash_attn": plan_dict["attention"] == "fused",
                "vae_micro_batch": plan_dict["vae_micro_batch"]}
    t5 = plan_dict["t5"]
    if t5 in _T5_PLACEMENT:
        settings["t5_device"], settings["t5_dtype"], settings["t5_offload"] = _T5_PLACEMENT[t5]
    elif t5 == "offload":  # encode on the GPU in the model's precision (fp32 without bf16), then move off
        settings["t5_device"], settings["t5_dtype"] = "gpu", "bf16" if settings["dtype"] == "bf16" else "fp32"
        settings["t5_offload"] = True
    layout = _planned_layout(chosen, pins, request.num_heads)
    return Choice(chosen.name, {k: v for k, v in settings.items() if v is not None}, plan_dict, (*notes, *skipped),
                  layout, chosen.seconds)


def _planned_layout(node_plan, pins: LayoutPins, num_heads: int) -> ParallelLayout:
    """The plan's layout of ``node_plan`` (with --force on an infeasible node: its leanest candidate's,
    else the flags')."""
    candidate = node_plan.chosen
    if candidate is None:
        return pins.fixed(num_heads)
    layout = candidate.layout
    return ParallelLayout(sp=layout.sp, cfg=2 if layout.cfg_parallel else 1, replicas=layout.replicas,
                          sp_scheme=pins.sp_scheme, num_heads=num_heads)


def _leanest_seconds(the_plan, name: str) -> float | None:
    found = next((n for n in the_plan.nodes if n.name == name), None)
    return found.chosen.seconds if found is not None and found.chosen is not None else None


def _check_gpus(project: Project, node: str, layout: ParallelLayout) -> None:
    count = project.inventory.node(node).gpu.count
    if layout.world_size > count:
        raise UserError(f"layout {layout.describe()} needs {layout.world_size} GPUs; {node} has {count}",
                        hint=f"use --gpus {count} or fewer, or another --node")


def wait_for_infer(
    project: Project, run_id: str, *, timeout_s: float | None = None, on_progress: ProgressFn | None = None
) -> dict:
    """Wait for an inference run; its outputs, timings and peak memory, or the job's own error."""
    paths = RunPaths(project.registry.run_dir(run_id))
    record = runs.wait_reporting(project, run_id, timeout_s=timeout_s, on_progress=on_progress,
                                 timeout_note="cancelled")
    report = read_json(paths.result) or {}
    if record.state == "COMPLETED" and report.get("ok"):
        keys = ("outputs", "index", "timings", "peak_memory", "device", "dtype", "t5", "videos")
        return {"state": record.state, **{k: report.get(k) for k in keys}}
    error = report.get("error")
    logs = f"clusterkit logs {run_id}"
    if error and error.get("kind") in ("user_error", "usage_error"):
        raise UserError(f"run {run_id} stopped before generating: {error['message']}", hint=error.get("hint") or logs)
    detail = error["message"] if error else f"the job ended {record.state} without a result"
    raise JobFailed(f"run {run_id} failed: {detail}", hint=logs + (f" ({record.summary})" if record.summary else ""))


def _refiner(project: Project, method: str, config: str | None, environ: Mapping[str, str] | None, *,
             camera_motion: str | None = None):
    """The refiner of ``--refine`` (None for none), its config and key checked; nothing runs yet."""
    if method == "none" and config is None:
        return None
    from clusterkit.refine import build_refiner, find_refine_config

    return build_refiner(method, find_refine_config(project.env_dir, config), environ or {},
                         camera_motion=camera_motion)


def _refine(prompts: tuple[str, ...], refiner, *, dry_run: bool = False):
    """The ``Refinement`` (None without a refiner); with ``dry_run`` only a pure refiner (the template) runs."""
    if refiner is None:
        return None
    from clusterkit.refine import refine_prompts

    return refine_prompts(prompts, refiner, dry_run=dry_run)


#: ``InferRequest`` fields ``submit_infer`` takes as keyword options (docs/inference-modes.md).
CONDITIONING_OPTIONS = ("reference_paths", "mask_strategies", "loop", "condition_frame_length",
                        "condition_frame_edit", "align", "aes", "flow", "camera_motion", "batch_size")


def slice_prompts(prompts: tuple[str, ...], start: int = 0, end: int | None = None) -> tuple[str, ...]:
    """``prompts[start:end]`` as upstream's ``--start-index`` / ``--end-index``; a slice that is empty
    or reaches past the list is an error naming the count."""
    count = len(prompts)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < count:
        raise UserError(f"--start-index {start!r} must be an integer in 0..{count - 1} ({count} prompt(s))")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or not start < end <= count):
        raise UserError(f"--end-index {end!r} must be an integer in {start + 1}..{count} "
                        f"(after --start-index {start}; {count} prompt(s))")
    return prompts[start:end]


#: ``submit_infer`` options holding one entry per prompt, and their flags.
PER_PROMPT_OPTIONS = {"reference_paths": "--reference-path", "mask_strategies": "--mask-strategy"}


def slice_per_prompt(options: Mapping, count: int, start: int = 0, end: int | None = None) -> dict:
    """``options`` with each per-prompt list (``PER_PROMPT_OPTIONS``) fitted to the prompts
    ``[start:end]`` of a ``count``-prompt list: one entry per prompt of the list is sliced like the
    prompts, one per selected prompt is kept as it is; any other count is a ``ConditioningError``
    naming both counts."""
    stop = count if end is None else end
    selected = stop - start
    out = dict(options)
    for key, flag in PER_PROMPT_OPTIONS.items():
        values = tuple(options.get(key) or ())
        if not values or len(values) == selected:
            continue
        if len(values) == count:
            out[key] = values[start:stop]
            continue
        if selected == count:
            raise ConditioningError(f"{flag} was given {len(values)} time(s) for {count} prompt(s): give it once per "
                                    "prompt, in order (\"\" for a prompt without), as upstream",
                                    hint='or put it in the prompt: text{"reference_path": ..., "mask_strategy": ...}')
        raise ConditioningError(f"{flag} was given {len(values)} time(s) for prompts {start}..{stop - 1} of {count} "
                                f"(--start-index {start}, --end-index {stop}): give it once per prompt of the list "
                                f"({count}) or once per selected prompt ({selected}), in order (\"\" for a prompt "
                                "without)", hint='or put it in the prompt: text{"reference_path": ..., '
                                '"mask_strategy": ...}')
    return out


def _prompts(prompts: tuple[str, ...], prompts_file: str | None) -> tuple[str, ...]:
    if prompts and prompts_file:
        raise UserError("give either --prompt (repeatable) or --prompts-file, not both")
    if prompts_file:
        return tuple(read_prompts_file(prompts_file))
    return check_prompts(tuple(prompts))


def _forced(the_plan, node: str | None):
    """With --force: ``node``'s plan, else the node whose leanest candidate misses by the least."""
    if node is not None:
        return next(n for n in the_plan.nodes if n.name == node)
    with_candidate = [n for n in the_plan.nodes if n.chosen is not None] or list(the_plan.nodes)
    return min(with_candidate, key=lambda n: n.chosen.memory.peak - n.chosen.budget_gib if n.chosen else 0.0)


def _warnings(request: InferRequest, preset) -> list[str]:
    out = []
    if request.random_weights:
        out.append(f"--model {preset.name} uses RANDOM weights (seed {preset.weights_seed}): the videos are noise, "
                   "not generated content; use --model opensora-v1.2 --ckpt-dir DIR for real videos")
    return out
