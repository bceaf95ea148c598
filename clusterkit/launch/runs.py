"""Library calls behind ``submit``/``status``/``logs``/``cancel``/``runs``.

``launch`` renders, records and submits; ``refresh`` asks each scheduler once for all
unfinished runs and caches the answer in the registry.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

from clusterkit.errors import LaunchError, UserError
from clusterkit.launch.executors import get_executor
from clusterkit.launch.records import RunRecord, atomic_write_json, atomic_write_text, read_json
from clusterkit.launch.render import RunPaths, render_env, render_submission
from clusterkit.launch.spec import LaunchSpec
from clusterkit.project import Project

_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def launch(project: Project, spec: LaunchSpec, *, dry_run: bool = False, files: dict[str, str] | None = None) -> dict:
    """Render, record and submit ``spec``. With ``dry_run`` nothing is written or submitted.

    ``files`` (name -> text) are inputs the job reads, e.g. its prompts: they are written into the
    run directory (atomically) before submission, so user text reaches the job as files.
    """
    registry = project.registry
    paths = RunPaths(registry.run_dir(spec.run_id))
    records = {p.name for p in (paths.spec, paths.env, paths.rendered, paths.submission, paths.local, paths.result,
                                paths.submitit, paths.logs, paths.ranks, paths.results)}
    for name in files or {}:
        if not _SAFE_FILE.match(name) or name in records:
            raise LaunchError(f"job input file name {name!r} must match {_SAFE_FILE.pattern} and not be a run record")
    rendered = render_submission(spec, project.profiles, paths.root)
    result = {"run_id": spec.run_id, "run_dir": str(paths.root), "executor": spec.executor,
              "dry_run": dry_run, "job_ids": [], "rendered": rendered}
    if dry_run:
        return result
    if paths.root.exists():
        raise LaunchError(f"run directory {paths.root} already exists")
    paths.root.mkdir(parents=True)
    spec.write(paths.spec)
    # private: --env values may be tokens
    atomic_write_json(paths.env, {n: r.to_dict() for n, r in render_env(spec, project.profiles, paths.root).items()},
                      private=True)
    atomic_write_json(paths.rendered, rendered)
    if "slurm" in rendered:
        atomic_write_text(paths.submission, rendered["slurm"]["sbatch"])
    for name, text in (files or {}).items():
        atomic_write_text(paths.root / name, text)
    now = time.time()
    registry.add(RunRecord(run_id=spec.run_id, kind=spec.kind, executor=spec.executor, nodes=spec.node_names,
                           job_ids=(), state="SUBMITTING", run_dir=paths.root, created_at=now, updated_at=now))
    try:
        job_ids = get_executor(spec.executor).submit(spec, paths)
    except BaseException as exc:
        registry.update(spec.run_id, state="FAILED", summary=f"submission failed: {exc}")
        raise
    registry.update(spec.run_id, state="PENDING", job_ids=tuple(job_ids))
    result["job_ids"] = job_ids
    return result


def refresh(project: Project, records: list[RunRecord]) -> list[RunRecord]:
    """Current state of ``records``: one scheduler query per executor for all unfinished runs."""
    registry = project.registry
    by_executor: dict[str, list[tuple[RunRecord, LaunchSpec]]] = {}
    for record in records:
        if not record.terminal and record.job_ids:
            spec_path = RunPaths(record.run_dir).spec
            if spec_path.exists():
                by_executor.setdefault(record.executor, []).append((record, LaunchSpec.read(spec_path)))
    for executor, runs in by_executor.items():
        for run_id, state in get_executor(executor).states(runs).items():
            registry.update(run_id, state=state, summary=summarise(RunPaths(registry.run_dir(run_id)), state))
    return [registry.get(r.run_id) for r in records]


def summarise(paths: RunPaths, state: str) -> str:
    """One line about how a run went, from what its nodes wrote: its attempts when Slurm requeued it,
    and once it ended, the nodes that exited non-zero."""
    restarts = {p.name.split("-", 1)[0] for p in paths.attempts.glob("*.json")} if paths.attempts.is_dir() else set()
    requeues = max(0, len(restarts) - 1)
    if state in ("RUNNING", "PENDING", "SUBMITTING"):
        return f"attempt {requeues + 1} (requeued {requeues}x)" if requeues else ""
    parts = [f"{requeues + 1} attempts ({requeues} requeue{'s' if requeues > 1 else ''})"] if requeues else []
    for path in sorted(paths.results.glob("node-*.json")) if paths.results.exists() else []:
        data = read_json(path) or {}
        if data.get("exit_code") not in (0, None):
            parts.append(f"{data.get('node')} exit {data.get('exit_code')}")
    return "; ".join(parts)


def attempts(record: RunRecord) -> list[dict]:
    """The attempts of a run, oldest first: one per Slurm requeue (a run that was never requeued has
    one). Each: attempt number, nodes, start, end (None while running or when the attempt was
    requeued), exit codes per node, and how the requeue went."""
    folder = RunPaths(record.run_dir).attempts
    by_restart: dict[int, list[dict]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = read_json(path) or {}
        if "restart" in data:
            by_restart.setdefault(int(data["restart"]), []).append(data)
    out = []
    for restart, nodes in sorted(by_restart.items()):
        ends = [n.get("finished_at") for n in nodes]
        out.append({
            "attempt": restart,
            "nodes": sorted(n.get("node") for n in nodes),
            "started_at": min(n.get("started_at", 0.0) for n in nodes),
            "finished_at": max(ends) if all(e is not None for e in ends) else None,
            "exit_codes": {n.get("node"): n.get("exit_code") for n in nodes if "exit_code" in n},
            "requeued": any("requeued_at" in n for n in nodes),
            "requeue": next((n["requeue"] for n in nodes if "requeue" in n), None),
        })
    return out


def status(project: Project, run_id: str | None = None, limit: int = 20) -> list[RunRecord]:
    records = [project.registry.get(run_id)] if run_id else project.registry.list(limit=limit)
    return refresh(project, records)


def wait(project: Project, run_id: str, timeout: float | None = None, poll: float = 0.5) -> RunRecord:
    """Block until the run reaches a terminal state (polling backs off to 5 s)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    record = project.registry.get(run_id)
    while True:
        [record] = refresh(project, [record])
        if record.terminal:
            return record
        if deadline is not None and time.monotonic() > deadline:
            return record
        time.sleep(poll)
        poll = min(poll * 1.5, 5.0)


PROGRESS_FILE = "progress.json"  # what a job's rank 0 says it is doing (stage, step, ...)


def wait_reporting(project: Project, run_id: str, *, timeout_s: float | None, on_progress=None,
                   timeout_note: str = "cancelled", timeout_hint: str | None = None) -> RunRecord:
    """Wait for a run to end, passing its progress file to ``on_progress`` about once a second;
    past ``timeout_s`` the run is cancelled and JobFailed raised."""
    from clusterkit.errors import JobFailed

    progress = RunPaths(project.registry.run_dir(run_id)).root / PROGRESS_FILE
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        record = wait(project, run_id, timeout=1.0)
        if on_progress is not None:
            on_progress(read_json(progress) or {"stage": record.state.lower()})
        if record.terminal:
            return record
        if deadline is not None and time.monotonic() > deadline:
            cancel(project, run_id)
            raise JobFailed(f"run {run_id} did not finish within {timeout_s:g}s; {timeout_note}",
                            hint=timeout_hint or f"clusterkit logs {run_id}")


def cancel(project: Project, run_id: str) -> RunRecord:
    record = project.registry.get(run_id)
    [record] = refresh(project, [record])
    if record.terminal:
        raise UserError(f"run {record.run_id} already ended ({record.state}); nothing to cancel")
    get_executor(record.executor).cancel(record)
    project.registry.update(record.run_id, state="CANCELLED", summary="cancelled by user")
    return project.registry.get(record.run_id)


def log_files(record: RunRecord) -> list[Path]:
    """Per-rank logs first, then node (torchrun agent) logs, then scheduler logs."""
    paths = RunPaths(record.run_dir)
    files = sorted(paths.logs.glob("rank-*.log")) + sorted(paths.logs.glob("node-*.log"))
    files += sorted(paths.logs.glob("agent-*.log"))
    if paths.submitit.exists():
        files += sorted(paths.submitit.glob("*_log.out")) + sorted(paths.submitit.glob("*_log.err"))
    return files


def follow(project: Project, run_id: str, poll: float = 0.5) -> Iterator[tuple[Path, str]]:
    """Yield (file, line) as logs grow, until the run ends and every file is drained."""
    offsets: dict[Path, int] = {}
    record = project.registry.get(run_id)
    while True:
        [record] = refresh(project, [record])
        for path in log_files(record):
            with open(path, "rb") as handle:
                handle.seek(offsets.get(path, 0))
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1] if not record.terminal else chunk
            offsets[path] = offsets.get(path, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                yield path, line
        if record.terminal:
            return
        time.sleep(poll)
