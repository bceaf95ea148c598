"""``run_preflight``: probe a node (on this machine, or through a short job pinned to the
node), then check the facts against the inventory and, when asked, a plan.

The job path uses the launch layer like any other job: the preset ``jobs/preflight.yaml``
runs ``clusterkit.preflight.probe_main`` as one process that is given all of the node's
GPUs, and the probe writes its facts to the run's ``result.json``. Several nodes get one
job each, submitted together and awaited together (one scheduler query per pass).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from clusterkit.errors import UserError
from clusterkit.preflight.checks import (
    WARN,
    CheckResult,
    FAIL,
    run_checks,
    run_job_checks,
    summarize,
)
from clusterkit.project import Project

PRESET = "preflight"
DEFAULT_TIMEOUT_S = 300.0
_LOG_TAIL = 8


def make_plan(inventory, names: list[str], res: str, frames: str, aspect_ratio: str | None = None) -> dict | None:
    """The planner's verdict for ``names`` as plain data, or None when the planner is absent.

    Coordinates only through the planner's public API: ``plan(inventory, PlanRequest(...))``.
    A bad resolution or frame count raises the planner's own UserError (exit 2).
    """
    try:
        from clusterkit import planner
    except ModuleNotFoundError as exc:
        if exc.name not in ("clusterkit.planner", "clusterkit.costmodel"):
            raise
        return None
    fields = {"resolution": res, "frames": frames, "nodes": tuple(names)}
    if aspect_ratio:
        fields["aspect_ratio"] = aspect_ratio
    return planner.plan(inventory, planner.PlanRequest(**fields)).to_dict()


def run_preflight(
    project: Project,
    node: str,
    *,
    local: bool,
    executor: str = "auto",
    res: str | None = None,
    frames: str | None = None,
    aspect_ratio: str | None = None,
    plan: Mapping | None = None,
    port: int | None = None,
    output_dir: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
    host=None,
) -> dict:
    """Probe ``node`` ("a" or "a,b"), check it, and return the report as data.

    ``local``: probe this machine in-process (``environ``/``host`` are its seams) instead of
    launching a job on the node. ``plan``: a plan result or one node's entry; otherwise
    ``res`` + ``frames`` ask the planner. ``ok`` in the result is False when any check fails.
    """
    inventory = project.inventory
    names = [n.name for n in inventory.select(node)]
    if local and len(names) > 1:
        raise UserError("--local probes this one machine, so it checks one node; name one",
                        hint=f"e.g. clusterkit preflight {names[0]} --local")
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port (1-65535)")
    if timeout_s <= 0:
        raise UserError(f"--timeout {timeout_s:g} must be a positive number of seconds")
    if (res is None) != (frames is None):
        raise UserError("a plan needs both --res and --frames", hint="e.g. --res 720p --frames 4s")
    notes: list[str] = []
    if plan is None and res is not None:
        plan = make_plan(inventory, names, res, frames, aspect_ratio)
        if plan is None:
            notes.append("clusterkit.planner is not available: the plan's memory was not checked")
    output_dir = output_dir or str(project.runs_dir)

    runs_info: list[dict] = []
    if local:
        from clusterkit.preflight.probes import Host, collect_facts

        probe_host = host or Host.for_machine(environ or {})
        facts_by_node = {names[0]: collect_facts(probe_host, output_dir=output_dir, port=port)}
        chosen_executor = None
        here = (facts_by_node[names[0]].get("host") or {}).get("hostname")
        node_host = inventory.node(names[0]).hostname
        if here and here.split(".")[0] != node_host.split(".")[0]:
            notes.append(f"--local measured this machine ({here}), not {node_host}: the nodes.yaml edits above "
                         f"describe this machine; run without --local to measure {names[0]}")
    else:
        facts_by_node, runs_info, chosen_executor = _probe_through_jobs(
            project, names, executor=executor, port=port, output_dir=output_dir, timeout_s=timeout_s)

    checks: list[CheckResult] = []
    for name in names:
        facts = facts_by_node.get(name)
        run = next((r for r in runs_info if r["node"] == name), None)
        if facts is None:
            checks.append(_probe_failed(name, run))
            continue
        checks.extend(run_checks(facts, inventory.node(name), plan, inventory=inventory))
        if res is not None and plan is None:
            checks.append(CheckResult("plan-memory", WARN, "not checked: clusterkit.planner is not available",
                                      checked=False, node=name))
    checks.extend(run_job_checks({n: f for n, f in facts_by_node.items() if f is not None}))
    summary = summarize(checks)
    return {
        "nodes": names,
        "mode": "local" if local else "job",
        "executor": chosen_executor,
        "runs": runs_info,
        "ok": summary["ok"],
        "counts": summary["counts"],
        "checks": [c.to_dict() for c in checks],
        "facts": facts_by_node.get(names[0]) if len(names) == 1 else facts_by_node,
        "plan": plan,
        "notes": notes,
    }


def _probe_failed(name: str, run: dict | None) -> CheckResult:
    state = (run or {}).get("state", "?")
    line = _telling_line((run or {}).get("log_tail") or [])
    return CheckResult(
        "probe-job", FAIL,
        f"the preflight job on {name} ended {state} without writing facts; its logs say: {line}",
        "read the logs (`clusterkit logs " + str((run or {}).get("run_id", "RUN")) + "`); the probe starts through "
        "torchrun, so python, torch and clusterkit must import on the node, and the runs directory must be on a "
        "filesystem the node shares", node=name)


_ERROR_WORDS = ("Error", "error:", "Exception", "No module named", "not found", "Killed", "CANCELLED")


def _telling_line(lines: list[str]) -> str:
    """The line that explains a dead job: the first error-looking one (rank logs come first, and hold the
    Python error; the node log's torchrun summary follows), else the last real line."""
    real = [line.strip() for line in lines if line.strip().strip("=-*# ")]
    errors = [line for line in real if any(word in line for word in _ERROR_WORDS)]
    if errors:
        return errors[0]
    return real[-1] if real else "no log output"


def _probe_through_jobs(project: Project, names: list[str], *, executor: str, port: int | None,
                        output_dir: str, timeout_s: float) -> tuple[dict, list[dict], str]:
    from clusterkit.jobs import load_preset
    from clusterkit.launch import runs
    from clusterkit.launch.executors import pick_executor
    from clusterkit.launch.records import new_run_id, read_json
    from clusterkit.launch.render import RunPaths
    from clusterkit.launch.spec import LaunchSpec, node_slots

    preset = load_preset(project.jobs_dir, PRESET)
    chosen = pick_executor(executor)
    launched = []
    for slot in node_slots(project.inventory, names):
        run_id = new_run_id(preset.kind)
        paths = RunPaths(project.registry.run_dir(run_id))
        args = [*preset.args, "--result", str(paths.result), "--output-dir", output_dir]
        if port is not None:
            args += ["--port", str(port)]
        spec = LaunchSpec(
            run_id=run_id, kind=preset.kind, nodes=(slot,), gpus_per_node=slot.gpu_count, procs_per_node=1,
            entry=preset.entry, args=tuple(args), executor=chosen, base_profile=preset.nccl_profile,
            time_limit_min=preset.time_limit_min, port_range=preset.port_range,
            rdzv_timeout_s=preset.rdzv_timeout_s, cpus_per_task=preset.cpus_per_task,
        )
        submitted = runs.launch(project, spec)
        launched.append((slot.name, run_id, paths, submitted["job_ids"]))
    records = _wait_all(project, [run_id for _, run_id, _, _ in launched], timeout_s)
    facts_by_node, runs_info = {}, []
    for name, run_id, paths, job_ids in launched:
        record = records[run_id]
        state = record.state
        if not record.terminal:
            try:
                runs.cancel(project, run_id)
            except UserError:  # it ended between the last poll and now
                pass
            state = f"TIMEOUT (not finished after {timeout_s:g}s; cancelled)"
        facts = read_json(paths.result)
        info = {"node": name, "run_id": run_id, "job_ids": list(job_ids), "state": state,
                "run_dir": str(paths.root)}
        if facts is None:
            info["log_tail"] = _log_tail(project, run_id)
        facts_by_node[name] = facts
        runs_info.append(info)
    return facts_by_node, runs_info, chosen


def _wait_all(project: Project, run_ids: list[str], timeout_s: float, poll: float = 0.5) -> dict:
    """Wait for every run, asking each scheduler once per pass for all of them."""
    from clusterkit.launch import runs

    deadline = time.monotonic() + timeout_s
    records = {r: project.registry.get(r) for r in run_ids}
    while True:
        pending = [rec for rec in records.values() if not rec.terminal]
        if pending:
            for rec in runs.refresh(project, pending):
                records[rec.run_id] = rec
        if all(rec.terminal for rec in records.values()) or time.monotonic() > deadline:
            return records
        time.sleep(poll)
        poll = min(poll * 1.5, 5.0)


def _log_tail(project: Project, run_id: str) -> list[str]:
    """The last lines of every log of the run: rank logs first (where a Python error lands), then the node's."""
    from clusterkit.launch import runs

    lines: list[str] = []
    for path in runs.log_files(project.registry.get(run_id)):
        try:
            lines += path.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
        except OSError:
            continue
    return lines
