"""Prompt sweeps: ``clusterkit submit infer --prompts-file FILE --nodes all|a,b,c``.

One sweep = one set of settings and prompts = one output folder. Each run of the command:

1. reads what is already done there (``opensora_core.inference.records``: a video counts only
   when its file and its completion record agree; partial files are never counted);
2. plans every chosen node (the planner's layout for the full model; for ``tiny`` the flags'
   layout, weighted by the planner's prediction for the full model), skipping nodes that
   cannot run it;
3. deals the videos still missing to the replica groups of all nodes in proportion to their
   predicted throughput (``split_videos``: each next video goes to the group that would finish it
   first), and submits one job per node that got any;
4. records the runs in ``sweep.json``; with ``--wait`` it waits for all of them (one scheduler
   query per poll for all runs) and rebuilds ``index.json`` (file, prompt, seed, node, layout,
   seconds per video).

Re-running the same command therefore resumes: finished videos are skipped and nothing is made
twice. It refuses to start while a job of the same sweep is still queued or running.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import JobFailed, UserError
from clusterkit.jobs import load_preset
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import atomic_write_json, new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project
from clusterkit.submit import (PRESET, PROMPTS_FILE, REQUEST_FILE, LayoutPins, _prompts, _refine, _warnings,
                               check_timeout, choose_settings, read_calibrations, resolve_checkpoint)
from opensora_core.inference import records
from opensora_core.inference.request import InferRequest, VideoItem
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME
from opensora_core.presets import COMPONENTS, get_preset

#: Request fields that decide what the videos look like: the sweep's identity.
IDENTITY = ("model", "ckpt_dir", "ckpt_paths", "frames", "resolution", "aspect_ratio", "seed", "steps", "cfg_scale",
            "fps", "num_samples", "aes")
MANIFEST_SCHEMA = "clusterkit/sweep/v1"
_ACTIVE = ("SUBMITTING", "PENDING", "RUNNING")


@dataclass(frozen=True)
class Group:
    """One replica group of one node: it makes one video at a time in ``seconds``."""

    node: str
    seconds: float


def split_videos(videos: list, groups: list[Group]) -> dict[str, list]:
    """Deal ``videos`` (in order) to the nodes of ``groups``, in proportion to each group's throughput:
    every next video goes to the group that would finish it first (ties: the earlier group).
    Returns the videos per node, in order; nodes that get none are absent. Pure."""
    if not groups:
        raise ValueError("no group to split the videos over")
    loads = [0] * len(groups)
    out: dict[str, list] = {}
    for video in videos:
        best = min(range(len(groups)), key=lambda g: ((loads[g] + 1) * groups[g].seconds, g))
        loads[best] += 1
        out.setdefault(groups[best].node, []).append(video)
    return out


def sweep_id(request: InferRequest, refine: Mapping[str, str] | None = None) -> str:
    """``sweep-<12 hex>`` from the settings that decide the videos and the prompts, in order; with
    ``--refine``, also from ``refine`` (``clusterkit.refine.refine_identity``: the refiner and a digest
    of its settings), so other refine settings make another sweep."""
    identity = _identity(request, refine)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"sweep-{digest[:12]}"


def submit_sweep(
    project: Project,
    *,
    nodes: str,
    frames: str,
    resolution: str,
    aspect_ratio: str = "9:16",
    prompts: tuple[str, ...] = (),
    prompts_file: str | None = None,
    model: str = "opensora-v1.2",
    ckpt_dir: str | None = None,
    ckpt_paths: Mapping[str, str] | None = None,
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
    on_progress: Callable[[dict], None] | None = None,
    on_submitted: Callable[[dict], None] | None = None,
    refine: str = "none",
    refine_config: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict:
    """Plan, split and submit the videos of a sweep still missing from its output folder (see the
    module docstring). Every input error is raised before anything is written or submitted.
    ``refine`` (as ``submit_infer``'s) refines the prompts once, before the split; a resumed sweep
    reuses the refined prompts its manifest holds, so every video of a sweep has the same ones, and
    needs no key then. A dry run calls no command or endpoint (the template still runs)."""
    preset = get_preset(model)
    check_timeout(timeout_s)
    pins = LayoutPins(gpus, sp, cfg_parallel, sp_scheme)
    pins.check(preset.stdit3_config.get("num_heads", 16))
    loaded_refine, refine_id = _refine_settings(project, refine, refine_config)  # checked; no key read yet
    names = [n.name for n in project.inventory.select(nodes)]  # unknown names: an error with the valid ones
    prompt_list = _prompts(prompts, prompts_file)
    ckpt_dir, ckpt_paths = resolve_checkpoint(ckpt_dir, ckpt_paths)
    draft = InferRequest(prompts=prompt_list, frames=frames, resolution=resolution, aspect_ratio=aspect_ratio,
                         model=model, ckpt_dir=ckpt_dir, ckpt_paths=ckpt_paths, seed=seed, steps=steps,
                         num_samples=num_samples, cfg_scale=cfg_scale, fps=fps)
    if draft.conditioned:  # a prompt's {"reference_path": ...} suffix (docs/inference-modes.md)
        raise UserError("reference_path / mask_strategy in a prompt are not supported with --nodes (a sweep) yet",
                        hint="run those prompts on one node (--node, or no --nodes)")
    sweep = sweep_id(draft, refine_id)
    draft = InferRequest(**{**draft.to_dict(), "name": sweep})
    output_dir = Path(output).expanduser().resolve() if output else project.runs_dir / "sweeps" / sweep
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {str(output_dir)!r} is a file, not a folder")
    manifest = _check_manifest(project, output_dir, sweep, draft, refine_id)
    done = records.completed(output_dir)
    todo = [v for v in draft.videos() if v.filename not in done]
    result = {"sweep": sweep, "output_dir": str(output_dir), "model": preset.name, "dry_run": dry_run,
              "random_weights": draft.random_weights, "warnings": _warnings(draft, preset),
              "num_videos": len(draft.videos()), "already_done": len(draft.videos()) - len(todo),
              "to_make": len(todo), "runs": [], "skipped": {}, "unused": [], "refine": None}
    if not todo:
        if not dry_run:
            result["index"] = str(output_dir / records.INDEX)
            _save_manifest(output_dir, manifest, draft, sweep, [], refine_id)
            result.update(collect(output_dir))
        return result
    saved = _saved_refinement(manifest, draft) if refine_id else None
    refiner = None
    if refine_id and saved is None:  # the key is needed only when the prompts are refined now
        from clusterkit.refine import build_refiner

        refiner = build_refiner(refine, loaded_refine, environ or {})
    executor = pick_executor(executor)  # once: the plans and every job of the sweep use the same one
    plans, result["skipped"] = _plan_nodes(project, draft, names, pins, force, len(todo), executor)
    if not plans:
        raise UserError(f"no node of {nodes} can run this sweep: "
                        + "; ".join(f"{n}: {why}" for n, why in result["skipped"].items()))
    # after every check, before the split; a dry run calls no command or endpoint
    refinement = saved or (_new_refinement(draft, refiner, dry_run) if refiner else None)
    if refinement is not None:
        refined = refinement["prompts"]
        if refined is not None:
            draft = InferRequest(**{**draft.to_dict(), "refined_prompts": tuple(refined),
                                    "refiner": refinement["refiner"]})
            todo = [v for v in draft.videos() if v.filename not in done]
        result["refine"] = {**refinement, "prompts": [
            {"prompt": p, "refined_prompt": r} for p, r in zip(draft.prompts, refined or [None] * len(draft.prompts))]}
    groups = [Group(name, choice.seconds or 1.0) for name, choice in plans.items()
              for _ in range(choice.layout.replicas)]
    shares = split_videos(todo, groups)
    result["unused"] = [name for name in plans if name not in shares]  # the others finish every video sooner
    job = load_preset(project.jobs_dir, PRESET)
    launches = []
    for name, videos in shares.items():
        choice = plans[name]
        run_id = new_run_id(job.kind)
        paths = RunPaths(project.registry.run_dir(run_id))
        layout = choice.layout
        request = InferRequest(**{
            **draft.to_dict(), **choice.settings, "output_dir": str(output_dir), "notes": choice.notes,
            "node": name, "sweep": sweep, "run_id": run_id, "sp": layout.sp, "cfg_parallel": layout.cfg_enabled,
            "sp_scheme": layout.sp_scheme, "items": tuple((v.prompt_index, v.sample) for v in videos)})
        spec = LaunchSpec(
            run_id=run_id, kind=job.kind, nodes=node_slots(project.inventory, name), gpus_per_node=layout.world_size,
            entry=job.entry,
            args=(*job.args, "--request", str(paths.root / REQUEST_FILE), "--prompts",
                  str(paths.root / PROMPTS_FILE), "--result", str(paths.result)),
            executor=executor, base_profile=job.nccl_profile, nccl_profile=nccl_profile,
            env=dict(env or {}), time_limit_min=job.time_limit_min, port_range=job.port_range,
            rdzv_timeout_s=job.rdzv_timeout_s, cpus_per_task=job.cpus_per_task,
        )
        files = {
            REQUEST_FILE: json.dumps(request.settings(), indent=2, ensure_ascii=False) + "\n",
            PROMPTS_FILE: json.dumps(request.prompts_json(), indent=2, ensure_ascii=False) + "\n",
        }
        launches.append((spec, files, {"run_id": run_id, "node": name, "layout": layout.to_dict(),
                                       "describe": layout.describe(), "seconds_per_video": choice.seconds,
                                       "videos": [v.filename for v in videos]}))
    for spec, files, row in launches:  # everything is built and checked before the first submission
        submitted = runs.launch(project, spec, dry_run=dry_run, files=files)
        result["runs"].append({**row, "job_ids": submitted["job_ids"], "executor": submitted["executor"],
                               "run_dir": submitted["run_dir"]})
        if not dry_run:
            _save_manifest(output_dir, manifest, draft, sweep, result["runs"][-1:], refine_id, refinement)
            manifest = read_json(output_dir / records.MANIFEST)
    if dry_run or not wait:
        return result
    if on_submitted is not None:
        on_submitted(result)
    return {**result, **wait_for_sweep(project, output_dir, [r["run_id"] for r in result["runs"]],
                                       total=len(draft.videos()), timeout_s=timeout_s, on_progress=on_progress)}


def wait_for_sweep(project: Project, output_dir: Path, run_ids: list[str], *, total: int,
                   timeout_s: float | None = None, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Wait for every run of a sweep (one scheduler query per poll for all of them), then collect.
    Raises ``JobFailed`` naming the failed runs and the missing videos when a run did not complete."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = [project.registry.get(run_id) for run_id in run_ids]
    while True:
        pending = runs.refresh(project, pending)
        if on_progress is not None:
            on_progress({"stage": "sweep", "done": len(records.completed(output_dir)), "total": total,
                         "running": sum(not r.terminal for r in pending)})
        if all(r.terminal for r in pending):
            break
        if deadline is not None and time.monotonic() > deadline:
            for record in pending:
                if not record.terminal:
                    runs.cancel(project, record.run_id)
            raise JobFailed(f"the sweep did not finish within {timeout_s:g}s; its runs were cancelled",
                            hint="re-run the same command to resume")
        time.sleep(1.0)
    collected = collect(output_dir)
    failed = [f"{r.run_id} ({r.state})" for r in pending if r.state != "COMPLETED"]
    if failed:
        raise JobFailed(f"sweep runs did not complete: {', '.join(failed)}; {collected['done']} of "
                        f"{collected['expected']} videos done, missing: {', '.join(collected['missing'][:8])}",
                        hint="re-run the same command to make only the missing videos (clusterkit logs RUN)")
    return {"states": {r.run_id: r.state for r in pending}, **collected}


def collect(output_dir: Path) -> dict:
    """Rebuild the sweep's ``index.json`` from its completion records; what is done and missing."""
    index = records.write_sweep_index(output_dir)
    return {"index": str(Path(output_dir) / records.INDEX), "done": index["done"], "expected": index["expected"],
            "missing": index["missing"] or [], "outputs": [str(Path(output_dir) / v["file"]) for v in index["videos"]]}


def _plan_nodes(project: Project, draft: InferRequest, names: list[str], pins: LayoutPins, force: bool,
                videos: int, executor: str) -> tuple[dict, dict]:
    """(node -> Choice) for the nodes that can run the sweep, (node -> reason) for the others; the
    calibrations that apply where the jobs will run (``executor``) rank them, as for one run."""
    plans, skipped = {}, {}
    calibrations = read_calibrations(project, draft.model)  # once for all the nodes
    for name in names:  # the planner memoises per node kind: equal nodes cost one plan
        try:
            plans[name] = choose_settings(project, draft, node=name, force=force, pins=pins,
                                          objective="throughput", num_videos=videos, executor=executor,
                                          calibrations=calibrations)
        except UserError as exc:
            skipped[name] = exc.message
    return plans, skipped


def _check_manifest(project: Project, output_dir: Path, sweep: str, draft: InferRequest,
                    refine: Mapping[str, str] | None = None) -> dict | None:
    """The folder's manifest; refuses another sweep's folder (naming what differs) and a sweep whose
    jobs still run."""
    manifest = read_json(output_dir / records.MANIFEST)
    if manifest is None:
        if output_dir.is_dir() and any(output_dir.iterdir()):
            raise UserError(f"--output {str(output_dir)!r} is not empty and holds no sweep",
                            hint="give an empty or new folder")
        return None
    if manifest.get("sweep") != sweep:
        old = manifest.get("settings", {})
        new = _identity(draft, refine)
        changed = sorted(k for k in (*IDENTITY, "prompts", "refiner", "refine_settings") if old.get(k) != new.get(k))
        why = ""
        if "refiner" in changed:  # another refiner (or none): its settings differ as a matter of course
            changed = [k for k in changed if k != "refine_settings"]
        elif "refine_settings" in changed:
            via = (manifest.get("refine") or {}).get("via", old.get("refiner"))
            why = (f"; its refined prompts were made by {via} with other {old.get('refiner')} settings (the "
                   "template's parts, the command's argv, or the endpoint's url, model, temperature or system prompt)")
        raise UserError(f"{str(output_dir)!r} holds sweep {manifest.get('sweep')}, made with other settings "
                        f"({', '.join(changed) or 'prompts'} differ){why}",
                        hint="use the same settings and prompts to resume it, or another --output")
    active = []
    records_of = []
    for row in manifest.get("runs", []):
        try:
            records_of.append(project.registry.get(row["run_id"]))
        except UserError:
            continue  # a run of another runs directory: its state is unknown here
    for record in runs.refresh(project, records_of):
        if record.state in _ACTIVE:
            active.append(f"{record.run_id} ({record.state})")
    if active:
        raise UserError(f"sweep {sweep} still has jobs queued or running: {', '.join(active)}",
                        hint="wait for them (clusterkit status) or cancel them (clusterkit cancel RUN), then re-run")
    return manifest


def _save_manifest(output_dir: Path, manifest: dict | None, draft: InferRequest, sweep: str, new_runs: list,
                   refine: Mapping[str, str] | None = None, refinement: dict | None = None) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest or {"schema": MANIFEST_SCHEMA, "sweep": sweep, "settings": _identity(draft, refine),
                            "videos": [_video(v) for v in draft.videos()], "runs": []}
    if refinement is not None and "refine" not in manifest:
        manifest["refine"] = {k: refinement[k] for k in ("refiner", "via", "prompts")}
    manifest["runs"] = [*manifest["runs"], *({k: v for k, v in row.items() if k != "videos"} | {
        "videos": row["videos"], "submitted_at": time.time()} for row in new_runs)]
    atomic_write_json(output_dir / records.MANIFEST, manifest)


def _identity(request: InferRequest, refine: Mapping[str, str] | None = None) -> dict:
    # ``refine`` only when refining, ``ckpt_paths`` only when it differs from a plain ``ckpt_dir``:
    # sweeps without them keep the ids they had before those options existed
    identity = {key: getattr(request, key) for key in IDENTITY if key not in ("ckpt_dir", "ckpt_paths")}
    identity.update(_weights_identity(request.ckpt_dir, request.ckpt_paths))
    return {**identity, "prompts": list(request.prompts), **(refine or {})}


def _weights_identity(ckpt_dir: str | None, ckpt_paths: Mapping[str, str] | None) -> dict:
    """The folders the weights come from, one way whatever options named them: ``--ckpt-dir D`` and
    the four ``--ckpt-path-<name> D/<name>`` are the same sweep (``{"ckpt_dir": D}``, as before the
    component options existed); any other mix is its four resolved component folders."""
    if not ckpt_paths:
        return {"ckpt_dir": ckpt_dir}
    folders = {name: str(ckpt_paths[name]) if name in ckpt_paths else str(Path(ckpt_dir) / name)
               for name in COMPONENTS}
    parents = {str(Path(folder).parent) for folder in folders.values()}
    if len(parents) == 1 and all(Path(folder).name == name for name, folder in folders.items()):
        return {"ckpt_dir": parents.pop()}
    return {"ckpt_dir": None, "ckpt_paths": folders}


def _refine_settings(project: Project, method: str, config: str | None):
    """(the refine config, ``refine_identity``) of ``--refine``: (None, {}) for none; the config and the
    method checked, the key not read (a resumed sweep reuses its texts and needs none)."""
    if method == "none" and config is None:
        return None, {}
    from clusterkit.refine import find_refine_config, refine_identity

    loaded = find_refine_config(project.env_dir, config)
    return loaded, refine_identity(method, loaded)


def _saved_refinement(manifest: dict | None, draft: InferRequest) -> dict | None:
    """The refined prompts a resumed sweep's manifest holds (never refined again: an LLM would answer
    other text); the manifest's identity holds the refiner and a digest of its settings, so they
    were made by the same settings."""
    saved = (manifest or {}).get("refine")
    if saved is None:
        return None
    if len(saved.get("prompts", ())) != len(draft.prompts):
        raise UserError(f"the sweep manifest's refined prompts do not match its {len(draft.prompts)} prompts",
                        hint="use another --output")
    return {"refiner": saved["refiner"], "via": saved.get("via", saved["refiner"]), "seconds": 0.0,
            "prompts": list(saved["prompts"]), "reused": True, "dry_run": False}


def _new_refinement(draft: InferRequest, refiner, dry_run: bool) -> dict:
    """The prompts refined now, once, before the split; on a dry run only by a pure refiner (the
    template): else ``prompts`` is None and ``dry_run`` True."""
    done = _refine(draft.prompts, refiner, dry_run=dry_run)
    return {"refiner": done.refiner, "via": done.via, "seconds": round(done.seconds, 3),
            "prompts": None if done.dry_run else list(done.prompts), "reused": False, "dry_run": done.dry_run}


def _video(video: VideoItem) -> dict:
    entry = {"file": video.filename, "prompt_index": video.prompt_index, "sample": video.sample,
             "prompt": video.prompt, "seed": video.seed}
    if video.refined_prompt is not None:
        entry["refined_prompt"] = video.refined_prompt
    return entry


__all__ = ["Group", "collect", "split_videos", "submit_sweep", "sweep_id", "wait_for_sweep"]
