"""``clusterkit diagnose nccl`` (first form): run the collective check on chosen nodes and
report world size, ranks, hosts, correctness and timings."""

from __future__ import annotations

from clusterkit.errors import UserError
from clusterkit.jobs import load_preset
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project

PRESET = "collective-check"


def run_collective_check(
    project: Project,
    *,
    nodes: str | None,
    gpus_per_node: int | None = None,
    executor: str = "auto",
    nccl_profile: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    sizes: str | None = None,
    dry_run: bool = False,
) -> dict:
    if not nodes:
        raise UserError(
            "choose the nodes to check with --nodes a,b or --node NAME",
            hint=f"nodes in {project.inventory_path.name}: {', '.join(project.inventory.names())}",
        )
    if timeout_s <= 0:
        raise UserError(f"--timeout {timeout_s:g} must be a positive number of seconds")
    preset = load_preset(project.jobs_dir, PRESET)
    slots = node_slots(project.inventory, nodes)
    run_id = new_run_id(preset.kind)
    paths = RunPaths(project.registry.run_dir(run_id))
    args = list(preset.args)
    if sizes:
        args += ["--sizes", sizes]
    args += ["--result", str(paths.result), "--timeout", f"{timeout_s:g}"]
    spec = LaunchSpec(
        run_id=run_id, kind=preset.kind, nodes=slots,
        gpus_per_node=gpus_per_node if gpus_per_node is not None else min(s.gpu_count for s in slots),
        entry=preset.entry, args=tuple(args), executor=pick_executor(executor),
        base_profile=preset.nccl_profile, nccl_profile=nccl_profile, env=dict(env or {}),
        time_limit_min=preset.time_limit_min, port_range=preset.port_range,
        rdzv_timeout_s=preset.rdzv_timeout_s, cpus_per_task=preset.cpus_per_task,
    )
    submitted = runs.launch(project, spec, dry_run=dry_run)
    if dry_run:
        return submitted
    # startup (queue, imports, rendezvous) + the collectives themselves
    record = runs.wait(project, run_id, timeout=timeout_s + spec.rdzv_timeout_s + 60)
    if not record.terminal:
        runs.cancel(project, run_id)
        record = project.registry.get(run_id)
        state = f"TIMEOUT (cancelled after {timeout_s + spec.rdzv_timeout_s + 60:g}s)"
    else:
        state = record.state
    report = read_json(paths.result) or {}
    return {
        **submitted,
        "state": state,
        "ok": record.state == "COMPLETED" and bool(report.get("ok")),
        "world_size": report.get("world_size"),
        "expected_world_size": spec.world_size,
        "backend": report.get("backend"),
        "hosts": report.get("hosts", []),
        "ranks": report.get("ranks", []),
        "checks": report.get("checks", []),
        "timings": report.get("timings", []),
        "summary": record.summary,
        "logs": [str(p) for p in runs.log_files(record)],
    }
