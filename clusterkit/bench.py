"""``clusterkit bench infer``: time the real inference pipeline on a node, stage by stage, and feed
what it measured back into the planner's cost model.

The bench is launched exactly like ``clusterkit submit infer`` (the same settings from
``submit.choose_settings``, the same launch layer, a run folder and a registry entry) but runs
``jobs/bench-infer.yaml`` (``opensora_core.inference.bench``): the models are loaded once, then one
video is made ``warmup + eval`` times. After the job: the report (``clusterkit.bench_report``) is
written atomically into the run folder (and to ``--report``), and a ``Calibration`` (measured stage
times against the cost model's prediction of the same configuration) is stored in the run registry
for ``clusterkit plan``: for the node's GPU model when the job computed on such a GPU, for the
benched node alone when it ran on a CPU or another GPU, and through the local executor only for
plans that run locally too (the job ran on this host; ``clusterkit.calibration``).

Torch-free: this launches a job and reads its result."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterkit import costmodel as cm
from clusterkit.bench_report import STAGES, build_report
from clusterkit.calibration import Calibration, CalibrationStore
from clusterkit.errors import InvalidChoice, JobFailed, UserError
from clusterkit.jobs import load_preset
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import atomic_write_json, new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project
from clusterkit.submit import (PROMPTS_FILE, REQUEST_FILE, Choice, LayoutPins, check_timeout, choose_settings,
                               resolve_checkpoint)
from opensora_core.inference.request import InferRequest
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME
from opensora_core.presets import get_preset

PRESET = "bench-infer"
REPORT_FILE = "bench-report.json"
DEFAULT_PROMPT = "a beautiful waterfall"

ProgressFn = Callable[[dict], None]


@dataclass(frozen=True)
class BenchCounts:
    """How many iterations: ``warmup`` run first and left out of the statistics, ``eval`` timed."""

    warmup: int = 3
    eval: int = 5

    def __post_init__(self) -> None:
        for flag, value, low in (("--warmup", self.warmup, 0), ("--eval", self.eval, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidChoice(flag, value, [f"an integer >= {low}"], suggestion=None)


def check_report_path(text: str) -> Path:
    """``--report PATH`` as an absolute path, or a ``UserError`` when the report could not be written
    there: a folder, a path under a file, or a folder where no file can be created (checked by
    creating and removing a probe file, so root on a read-only filesystem is caught too)."""
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise UserError(f"--report {text!r} is a folder; give a file path", hint=f"e.g. --report {path / REPORT_FILE}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--report {text!r} is not writable: {str(ancestor)!r} is a file, not a folder",
                        hint="give a path in a folder, e.g. --report bench-report.json")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"--report {text!r} is not writable: the file exists and is read-only")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clusterkit-report-probe.", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--report {text!r} is not writable: cannot create a file in {str(ancestor)!r} "
                        f"({exc.strerror or exc})", hint="give a path in a folder you can write") from None
    return path


def bench_infer(
    project: Project,
    *,
    node: str,
    frames: str,
    resolution: str,
    aspect_ratio: str = "9:16",
    model: str = "opensora-v1.2",
    ckpt_dir: str | None = None,
    ckpt_paths: Mapping[str, str] | None = None,
    gpus: int | None = None,
    sp: int | None = None,
    cfg_parallel: bool | None = None,
    sp_scheme: str = DEFAULT_SP_SCHEME,
    steps: int = 30,
    warmup: int = 3,
    evals: int = 5,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 42,
    report: str | None = None,
    executor: str = "auto",
    nccl_profile: str | None = None,
    env: dict[str, str] | None = None,
    force: bool = False,
    timeout_s: float | None = None,
    on_progress: ProgressFn | None = None,
    on_submitted: Callable[[dict], None] | None = None,
) -> dict:
    """Check everything, launch the bench on ``node``, wait, write the report and store the
    calibration. Every input error is raised before anything is written or submitted."""
    counts = BenchCounts(warmup, evals)
    check_timeout(timeout_s)
    inventory_node = project.inventory.node(node)  # InvalidChoice naming the nodes
    preset = get_preset(model)
    report_path = check_report_path(report) if report is not None else None
    pins = LayoutPins(gpus, sp, cfg_parallel, sp_scheme)
    pins.check(preset.stdit3_config.get("num_heads", 16))
    ckpt_dir, ckpt_paths = resolve_checkpoint(ckpt_dir, ckpt_paths)
    draft = InferRequest(prompts=(prompt,), frames=frames, resolution=resolution, aspect_ratio=aspect_ratio,
                         model=model, ckpt_dir=ckpt_dir, ckpt_paths=ckpt_paths, seed=seed,
                         steps=steps)  # --res/--frames checked here
    executor_name = pick_executor(executor)
    choice = choose_settings(project, draft, node=node, force=force, pins=pins, num_videos=1,
                             executor=executor_name)
    layout = choice.layout
    if layout.replicas > 1:
        raise UserError(f"a bench makes one video, so it runs one replica group; {layout.describe()} has "
                        f"{layout.replicas} replicas", hint=f"use --gpus {layout.group_size}")
    prediction = model_prediction(project.inventory, draft, choice)
    job = load_preset(project.jobs_dir, PRESET)
    run_id = new_run_id(job.kind)
    paths = RunPaths(project.registry.run_dir(run_id))
    request = InferRequest(**{**draft.to_dict(), **choice.settings, "name": run_id, "run_id": run_id,
                              "output_dir": str(paths.root / "outputs"), "notes": choice.notes, "node": node,
                              "sp": layout.sp, "cfg_parallel": layout.cfg_enabled, "sp_scheme": layout.sp_scheme})
    spec = LaunchSpec(
        run_id=run_id, kind=job.kind, nodes=node_slots(project.inventory, node), gpus_per_node=layout.world_size,
        entry=job.entry,
        args=(*job.args, "--request", str(paths.root / REQUEST_FILE), "--prompts", str(paths.root / PROMPTS_FILE),
              "--result", str(paths.result), "--warmup", str(counts.warmup), "--eval", str(counts.eval)),
        executor=executor_name, base_profile=job.nccl_profile, nccl_profile=nccl_profile, env=dict(env or {}),
        time_limit_min=job.time_limit_min, port_range=job.port_range, rdzv_timeout_s=job.rdzv_timeout_s,
        cpus_per_task=job.cpus_per_task,
    )
    files = {
        REQUEST_FILE: json.dumps(request.settings(), indent=2, ensure_ascii=False) + "\n",
        PROMPTS_FILE: json.dumps(request.prompts_json(), indent=2, ensure_ascii=False) + "\n",
    }
    submitted = runs.launch(project, spec, files=files)
    result = {
        **{k: submitted[k] for k in ("run_id", "run_dir", "executor", "job_ids")},
        "node": node, "model": preset.name, "random_weights": request.random_weights,
        "warmup": counts.warmup, "eval": counts.eval, "layout": layout.to_dict(), "notes": list(choice.notes),
    }
    if on_submitted is not None:
        on_submitted(result)
    raw = _wait(project, run_id, timeout_s=timeout_s, on_progress=on_progress)
    gpu = inventory_node.gpu.spec
    asked = {"model": preset.name, "resolution": resolution, "frames": frames, "aspect_ratio": aspect_ratio,
             "steps": steps, "prompt": prompt, "seed": seed, "cfg_scale": request.cfg_scale, "fps": request.fps,
             "ckpt_dir": ckpt_dir, "ckpt_paths": ckpt_paths}
    the_report = build_report(raw, run_id=run_id, executor=executor_name, request=asked,
                              inventory_gpu={"model": gpu.key, "name": gpu.name, "count": inventory_node.gpu.count})
    calibration, why_not = calibrate(the_report, prediction)
    the_report["calibration"] = {"stored": calibration is not None, "why_not": why_not,
                                 "model_prediction": prediction.summary if prediction else None,
                                 "record": calibration.to_dict() if calibration else None}
    in_run = paths.root / REPORT_FILE
    write_report(in_run, the_report)  # first: the measurement survives a --report that fails now
    if report_path is not None:
        try:
            write_report(report_path, the_report)
        except OSError as exc:
            raise UserError(f"--report {str(report_path)!r}: cannot write it now ({exc.strerror or exc})",
                            hint=f"the report is in {in_run}") from None
    if calibration is not None:
        CalibrationStore(project.runs_dir).add(calibration)
    return {**result, "state": "COMPLETED", "report": str(report_path or in_run),
            "report_paths": [str(in_run)] + ([str(report_path)] if report_path else []),
            "summary": summarise(the_report)}


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` atomically, readable by others as any output (0644 under umask 022)."""
    atomic_write_json(path, report)


def summarise(report: dict) -> dict:
    """The report's headline numbers (``--json`` result ``summary``): stage mean/min/max, memory,
    device, layout and the calibration stored (the per-iteration values stay in the report file)."""
    stages = {key: {k: report["stages"][key][k] for k in ("mean", "min", "max")}
              for key in (*STAGES[:2], "denoising_step", *STAGES[2:], "total")}
    gpu, asked = report["gpu"], report["request"]
    return {
        "request": {k: asked[k] for k in ("model", "resolution", "frames", "num_frames", "height", "width",
                                          "aspect_ratio", "steps", "dtype", "random_weights")},
        "iterations": {"warmup": report["iterations"]["warmup"], "eval": report["iterations"]["eval"]},
        "load_s": report["load_s"],
        "stages_s": stages,
        "peak_memory": {"kind": report["memory"]["kind"], "peak_bytes": report["memory"]["peak_bytes"],
                        "by_stage_bytes": dict(report["memory"]["by_stage_bytes"])},
        "gpu": {k: gpu[k] for k in ("inventory_model", "inventory_name", "device", "device_name",
                                    "device_gpu_model", "matches_inventory")},
        "layout": dict(report["layout"]),
        "versions": dict(report["versions"]),
        "calibration": report["calibration"],
    }


@dataclass(frozen=True)
class Prediction:
    """The cost model's timing of the bench's configuration on the benched node's GPU model."""

    timing: cm.Timing
    steps: int
    summary: dict

    @property
    def stages(self) -> dict:
        """Seconds per stage, keyed as ``calibration.STAGES``."""
        t = self.timing
        return {"text_s": t.text, "step_s": t.denoising / self.steps, "decode_s": t.vae, "write_s": t.fixed}


def model_prediction(inventory, request: InferRequest, choice: Choice) -> Prediction | None:
    """Plan the bench's own video on its node with its layout pinned (and, for opensora-v1.2, the
    settings it runs with); the chosen (or, when infeasible, leanest) candidate's timing, from the
    cost model alone (no calibration). The cost model sizes opensora-v1.2 whatever preset is benched:
    the ratio measured / predicted is what calibrates. None when no candidate exists."""
    from clusterkit.planner import PlanRequest, plan

    layout = choice.layout
    pins = {"gpus": layout.world_size, "sp": layout.sp, "cfg_parallel": layout.cfg_enabled,
            "sp_scheme": layout.sp_scheme}
    if choice.plan is not None:
        pins.update({key: choice.plan[key] for key in ("dtype", "attention", "t5", "vae_micro_batch")})
    the_plan = plan(inventory, PlanRequest(resolution=request.resolution, frames=request.frames,
                                           aspect_ratio=request.aspect_ratio, nodes=(choice.node,),
                                           steps=request.steps, **pins))
    [node_plan] = the_plan.nodes
    candidate = node_plan.chosen
    if candidate is None:
        return None
    s, t = candidate.settings, candidate.timing
    summary = {"sized_model": "opensora-v1.2", "gpu_model": node_plan.gpu.key, "feasible": node_plan.feasible,
               "layout": candidate.layout.to_dict(), "dtype": s.dtype, "attention": s.attention, "t5": s.t5,
               "vae_micro_batch": s.vae_micro_batch, "seconds_per_video": round(t.total, 6)}
    prediction = Prediction(t, request.steps, summary)
    summary.update({key: round(value, 6) for key, value in prediction.stages.items()})
    return prediction


def calibrate(report: dict, prediction: Prediction | None) -> tuple[Calibration | None, str | None]:
    """The calibration record of a finished bench (pure), or None and why not. Its scope is
    ``gpu-model`` only when the job computed on a GPU of the node's inventory model; a CPU or another
    GPU gives a ``node`` calibration (see ``clusterkit.calibration``)."""
    if prediction is None:
        return None, "the cost model has no candidate for this layout on this node"
    stages = report["stages"]
    measured = {"text_s": stages["text_encoding"]["mean"], "step_s": stages["denoising_step"]["mean"],
                "decode_s": stages["decode"]["mean"], "write_s": stages["write"]["mean"]}
    if any(value is None or value <= 0 for value in measured.values()):
        return None, f"a measured time is not positive: {measured}"
    gpu, asked = report["gpu"], report["request"]
    on_node_gpu = gpu["device_type"] == "cuda" and gpu["matches_inventory"]
    bench = {key: asked[key] for key in ("resolution", "frames", "num_frames", "height", "width", "aspect_ratio",
                                         "steps", "dtype")}
    bench.update(layout={k: report["layout"][k] for k in ("world_size", "replicas", "cfg", "sp", "sp_scheme")},
                 model_settings=prediction.summary)
    return Calibration(
        preset=asked["model"], node=report["node"], gpu_model=gpu["inventory_model"],
        scope="gpu-model" if on_node_gpu else "node", device=gpu["device"], device_name=gpu["device_name"],
        run_id=report["run_id"], created_at=report["timestamps"]["finished_at"], measured=measured,
        predicted=prediction.stages, executor=report["executor"], host=report["host"], bench=bench,
    ), None


def _wait(project: Project, run_id: str, *, timeout_s: float | None, on_progress: ProgressFn | None) -> dict:
    """The job's raw result once it ended well, else its own error (typed as the job typed it)."""
    record = runs.wait_reporting(project, run_id, timeout_s=timeout_s, on_progress=on_progress,
                                 timeout_note="cancelled")
    raw = read_json(RunPaths(project.registry.run_dir(run_id)).result) or {}
    if record.state == "COMPLETED" and raw.get("ok"):
        return raw
    error = raw.get("error")
    logs = f"clusterkit logs {run_id}"
    if error and error.get("kind") in ("user_error", "usage_error"):
        raise UserError(f"bench run {run_id} stopped before measuring: {error['message']}",
                        hint=error.get("hint") or logs)
    detail = error["message"] if error else f"the job ended {record.state} without a result"
    raise JobFailed(f"bench run {run_id} failed: {detail}",
                    hint=logs + (f" ({record.summary})" if record.summary else ""))
