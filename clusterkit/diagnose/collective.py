"""``clusterkit diagnose nccl``: run the collective check / fabric benchmark on chosen nodes,
watch every rank's heartbeat, and report correctness, bandwidth against what the fabric
should reach, the ranks that never arrived when something hangs, and the env to change."""

from __future__ import annotations

import time

from clusterkit.diagnose.expected import annotate
from clusterkit.diagnose.hang import find_hang, read_heartbeats
from clusterkit.diagnose.recommend import recommend_from_findings, recommend_from_inventory, recommend_from_timings
from clusterkit.errors import UserError
from clusterkit.jobs import load_preset
from clusterkit.launch import runs
from clusterkit.launch.executors import pick_executor
from clusterkit.launch.records import atomic_write_json, new_run_id, read_json
from clusterkit.launch.render import RunPaths
from clusterkit.launch.spec import LaunchSpec, node_slots
from clusterkit.project import Project

PRESET = "collective-check"
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def _check_ops(ops: str | None) -> None:
    for op in (ops or "").split(","):
        if op.strip() and op.strip() not in OPS:
            from clusterkit.errors import InvalidChoice

            raise InvalidChoice("--ops entry", op.strip(), OPS)


def _check_sizes(sizes: str | None) -> None:
    if not sizes:
        return
    import argparse

    from clusterkit.diagnose.sizes import parse_sizes

    try:
        parse_sizes(sizes)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--sizes {sizes!r}: {exc}; write a list like 8K,1M,64M or a range like 8K:1G")


#: Ranks per simulated node when the local executor runs on a machine without a GPU (gloo on CPUs):
#: enough to exercise every collective across ranks and nodes without oversubscribing the cores.
CPU_RANKS_PER_NODE = 2


def local_gpu_count() -> int:
    """GPUs NVML sees on this machine (0 without a driver or nvidia-ml-py)."""
    try:
        import pynvml as nvml
    except ImportError:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPU here
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def default_ranks_per_node(inventory_gpus: int, executor: str, here_gpus: int) -> int:
    """Ranks per node without --gpus-per-node: every GPU of the node on Slurm; with the local
    executor every node runs on this machine, so its GPUs (or, without one, a couple of CPU ranks)
    bound it."""
    if executor != "local":
        return inventory_gpus
    return min(inventory_gpus, here_gpus if here_gpus else CPU_RANKS_PER_NODE)


def build_spec(project: Project, *, nodes: str | None, gpus_per_node: int | None, executor: str,
               nccl_profile: str | None, env: dict[str, str] | None, timeout_s: float, sizes: str | None,
               ops: str | None, stall_rank: int | None = None) -> LaunchSpec:
    if not nodes:
        raise UserError(
            "choose the nodes to check with --nodes a,b or --node NAME",
            hint=f"nodes in {project.inventory_path.name}: {', '.join(project.inventory.names())}",
        )
    if timeout_s <= 0:
        raise UserError(f"--timeout {timeout_s:g} must be a positive number of seconds")
    _check_ops(ops)
    _check_sizes(sizes)
    preset = load_preset(project.jobs_dir, PRESET)
    slots = node_slots(project.inventory, nodes)
    run_id = new_run_id(preset.kind)
    paths = RunPaths(project.registry.run_dir(run_id))
    args = list(preset.args)
    for flag, value in (("--sizes", sizes), ("--ops", ops)):
        if value:
            args += [flag, value]
    args += ["--result", str(paths.result), "--heartbeat-dir", str(paths.heartbeats), "--timeout", f"{timeout_s:g}"]
    if stall_rank is not None:
        args += ["--stall-rank", str(stall_rank)]
    chosen_executor = pick_executor(executor)
    if gpus_per_node is None:
        here = local_gpu_count() if chosen_executor == "local" else 0  # NVML only where it decides something
        gpus_per_node = default_ranks_per_node(min(s.gpu_count for s in slots), chosen_executor, here)
    return LaunchSpec(
        run_id=run_id, kind=preset.kind, nodes=slots, gpus_per_node=gpus_per_node,
        entry=preset.entry, args=tuple(args), executor=chosen_executor,
        base_profile=preset.nccl_profile, nccl_profile=nccl_profile, env=dict(env or {}),
        time_limit_min=preset.time_limit_min, port_range=preset.port_range,
        rdzv_timeout_s=preset.rdzv_timeout_s, cpus_per_task=preset.cpus_per_task,
    )


def watch(project: Project, spec: LaunchSpec, timeout_s: float, poll: float = 0.5) -> tuple[object, dict | None]:
    """Wait for the run; cancel it as soon as the heartbeats show a hang. -> (record, hang)."""
    paths = RunPaths(project.registry.run_dir(spec.run_id))
    deadline = time.monotonic() + timeout_s + spec.rdzv_timeout_s + 60  # queue + start-up + the sweep
    record = project.registry.get(spec.run_id)
    while True:
        [record] = runs.refresh(project, [record])
        beats = read_heartbeats(paths.heartbeats)
        if record.terminal:
            # post-mortem: who was still waiting when the job died (timeout 0: any wait counts)
            hang = find_hang(beats, now=time.time(), timeout=0, world_size=spec.world_size)
            return record, hang if record.state != "COMPLETED" else None
        hang = find_hang(beats, now=time.time(), timeout=timeout_s, world_size=spec.world_size)
        if hang or time.monotonic() > deadline:
            runs.cancel(project, spec.run_id)
            project.registry.update(spec.run_id, summary=hang["verdict"] if hang else "no progress before the deadline")
            return project.registry.get(spec.run_id), hang or {
                "verdict": "no result before the deadline and no rank waiting at a collective: "
                           "the job never started (still queued?) or a rank died before its first heartbeat",
                "missing": [], "waiting": [], "step": None}
        time.sleep(poll)
        poll = min(poll * 1.3, 2.0)


def run_collective_check(project: Project, *, nodes: str | None, gpus_per_node: int | None = None,
                         executor: str = "auto", nccl_profile: str | None = None, env: dict[str, str] | None = None,
                         timeout_s: float = 60.0, sizes: str | None = None, ops: str | None = None,
                         dry_run: bool = False, plot: bool = True, stall_rank: int | None = None) -> dict:
    spec = build_spec(project, nodes=nodes, gpus_per_node=gpus_per_node, executor=executor,
                      nccl_profile=nccl_profile, env=env, timeout_s=timeout_s, sizes=sizes, ops=ops,
                      stall_rank=stall_rank)
    submitted = runs.launch(project, spec, dry_run=dry_run)
    if dry_run:
        return submitted
    paths = RunPaths(project.registry.run_dir(spec.run_id))
    record, hang = watch(project, spec, timeout_s)
    report = read_json(paths.result) or {}
    timings = report.get("timings", [])
    if spec.nnodes == 1:
        timings = [{**t, "single_node": spec.node_names[0]} if t["scope"] == "world" else t for t in timings]
    timings = annotate(timings, project.inventory, report.get("backend") or "")
    recommendations = recommend_from_inventory(project.inventory, list(spec.node_names))
    recommendations += recommend_from_timings(project.inventory, timings)
    log_report = None
    if record.state != "COMPLETED" or not report.get("ok"):
        # the job failed or hung: read every log of the run and find the first error
        from clusterkit.diagnose.logs import context_from_inventory, diagnose_run

        context = context_from_inventory(project.inventory, expected_world_size=spec.world_size)
        log_report = diagnose_run(paths.root, context)
        known = {(r.node, r.key) for r in recommendations}
        recommendations += [r for r in recommend_from_findings(log_report, context, project.inventory)
                            if (r.node, r.key) not in known]
    result = {
        **submitted,
        "state": record.state,
        "ok": record.state == "COMPLETED" and bool(report.get("ok")),
        "world_size": report.get("world_size"),
        "expected_world_size": spec.world_size,
        "backend": report.get("backend"),
        "hosts": report.get("hosts", []),
        "ranks": report.get("ranks", []),
        "checks": report.get("checks", []),
        "timings": timings,
        "hang": hang,
        "recommendations": [r.to_dict() for r in recommendations],
        "log_diagnosis": log_report.to_dict() if log_report else None,
        "summary": record.summary,
        "logs": [str(p) for p in runs.log_files(record)],
        "plot": None,
    }
    if timings and plot:
        from clusterkit.diagnose.plot import plot_busbw

        title = f"{spec.run_id}: {','.join(spec.node_names)} x {spec.nproc_per_node} ({report.get('backend')})"
        result["plot"] = str(plot_busbw(timings, paths.root / "fabric.png", title))
    atomic_write_json(paths.root / "diagnosis.json", result)
    return result


def diagnose_logs(project: Project, *, run: str | None, logs: list[str]) -> tuple[dict, object, object]:
    """``--run RUN`` / ``--log PATH...``: read logs, order them in time, find the first error.
    Returns (JSON result, report, context) so the CLI can render the report."""
    from pathlib import Path

    from clusterkit.diagnose.logs import context_from_inventory, diagnose_files, diagnose_run

    if run and logs:
        raise UserError("give either --run or --log, not both")
    inventory = project.inventory
    if run:
        record = project.registry.get(run)
        spec_path = RunPaths(record.run_dir).spec
        world = LaunchSpec.read(spec_path).world_size if spec_path.exists() else None
        context = context_from_inventory(inventory, expected_world_size=world)
        report = diagnose_run(record.run_dir, context)
        source = {"run_id": record.run_id, "run_dir": str(record.run_dir)}
    else:
        context = context_from_inventory(inventory)
        report = diagnose_files([Path(p) for p in logs], context)
        source = {"logs": list(logs)}
    recommendations = recommend_from_findings(report, context, inventory)
    result = {**source, **report.to_dict(), "recommendations": [r.to_dict() for r in recommendations]}
    return result, report, recommendations
