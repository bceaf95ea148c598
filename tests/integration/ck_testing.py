"""Shared helpers for the integration tests (importable: this directory is on sys.path)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKLOADS = Path(__file__).parent / "workloads"


def echo_spec(project, *, nodes, gpus_per_node, executor, args=(), env=None, run_id=None):
    """A LaunchSpec running the ck_echo test workload."""
    from clusterkit.launch.records import new_run_id
    from clusterkit.launch.spec import LaunchSpec, node_slots

    return LaunchSpec(
        run_id=run_id or new_run_id("echo"), kind="echo", nodes=node_slots(project.inventory, nodes),
        gpus_per_node=gpus_per_node, entry="ck_echo", args=tuple(args), executor=executor,
        env={"PYTHONPATH": str(WORKLOADS), **(env or {})}, time_limit_min=5, rdzv_timeout_s=120,
    )
