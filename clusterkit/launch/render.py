"""Pure renderers: LaunchSpec -> submitit parameters, sbatch script, torchrun argv, env.

Nothing here touches the network, the scheduler or the clock, so every output is
golden-tested. User text reaches a node only as argv list items, env values or JSON
files; the sbatch script holds nothing but validated names, numbers and shell-quoted
paths, and ``check_script_safe`` refuses anything else before it is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import LaunchError
from clusterkit.launch.envprofiles import Profile, ResolvedEnv, resolve_env
from clusterkit.launch.spec import LaunchSpec

RANK_MAIN = "clusterkit.launch.rank_main"


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``runs/<run-id>/``; the only place that names these files."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def rendered(self) -> Path:
        return self.root / "rendered.json"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def submission(self) -> Path:
        return self.root / "submission.sh"

    @property
    def submitit(self) -> Path:
        return self.root / "submitit"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ranks(self) -> Path:
        return self.root / "ranks"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def heartbeats(self) -> Path:
        return self.root / "heartbeats"

    @property
    def local(self) -> Path:
        return self.root / "local.json"

    def rendezvous(self, restart: int) -> Path:
        return self.root / f"rendezvous-{restart}.json"

    def node_log(self, node: str) -> Path:
        return self.logs / f"node-{node}.log"

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank:03d}.log"

    def node_result(self, node: str) -> Path:
        return self.results / f"node-{node}.json"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def attempt(self, restart: int, node: str) -> Path:
        """One node's record of one attempt of the job (a Slurm requeue starts the next one)."""
        return self.attempts / f"{restart}-{node}.json"


def render_slurm_params(spec: LaunchSpec) -> dict:
    """Keyword arguments for ``submitit.SlurmExecutor.update_parameters``.

    One Slurm task per node; each task runs one torchrun agent that starts
    ``gpus_per_node`` ranks (the torchtitan / NeMo-Run pattern, not one task per GPU).
    """
    params: dict = {
        "job_name": spec.run_id,
        "time": spec.time_limit_min,
        "nodes": spec.nnodes,
        "ntasks_per_node": 1,
        "nodelist": ",".join(spec.node_names),
        "signal_delay_s": spec.signal_delay_s,
        "stderr_to_stdout": True,
    }
    gres_types = {n.gres_type for n in spec.nodes}
    if len(gres_types) == 1 and None not in gres_types:
        # nodes.yaml named the GRES type: emit it verbatim (Slurm compares it case-sensitively)
        params["gres"] = f"gpu:{gres_types.pop()}:{spec.gpus_per_node}"
    else:
        params["gpus_per_node"] = spec.gpus_per_node
    partition = spec.nodes[0].partition
    if partition:
        params["partition"] = partition
    if spec.cpus_per_task:
        params["cpus_per_task"] = spec.cpus_per_task
    return params


def render_sbatch(params: dict, folder: Path, python: str | None = None) -> str:
    """The exact sbatch script submitit will write for ``params`` (pure: submitit's renderer)."""
    import shlex

    from submitit.slurm.slurm import _make_sbatch_string

    python = python or sys.executable
    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    script = _make_sbatch_string(command=command, folder=folder, **params)
    check_script_safe(script)
    return script


def check_script_safe(script: str) -> None:
    """Every line of a job script must be a directive, a comment, or known command text."""
    for number, line in enumerate(script.splitlines(), 1):
        if any(ord(c) < 32 and c != "\t" for c in line):
            raise LaunchError(f"job script line {number} contains a control character: {line!r}")


def render_torchrun_argv(
    spec: LaunchSpec,
    run_dir: Path,
    *,
    python: str | None = None,
    endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """torchrun's argv for one node: ``--standalone`` on one node, c10d rendezvous otherwise."""
    argv = [python or sys.executable, "-m", "torch.distributed.run"]
    if spec.nnodes == 1:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        if not endpoint or not rdzv_id:
            raise LaunchError("a multi-node torchrun needs the rendezvous endpoint and id")
        argv += [
            "--nnodes", str(spec.nnodes),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint,
            "--rdzv-id", rdzv_id,
            "--rdzv-conf", f"join_timeout={spec.rdzv_timeout_s}",
        ]
    argv += [
        "--nproc-per-node", str(spec.nproc_per_node),
        "--max-restarts", "0",  # restarts go through Slurm requeue, never a half-world retry
        "-m", RANK_MAIN, str(run_dir), spec.entry, *spec.args,
    ]
    return argv


def render_env(spec: LaunchSpec, profiles: dict[str, Profile], run_dir: Path) -> dict[str, ResolvedEnv]:
    """The resolved env for every node of the job, keyed by node name."""
    return {
        node.name: resolve_env(
            profiles,
            base_profile=spec.base_profile,
            node_name=node.name,
            node_env=node.nccl_env,
            cli_profile=spec.nccl_profile,
            cli_env=spec.env,
            run_dir=str(run_dir),
        )
        for node in spec.nodes
    }


def render_submission(spec: LaunchSpec, profiles: dict[str, Profile], run_dir: Path,
                      python: str | None = None) -> dict:
    """Everything a submission would do, as data: what ``--dry-run`` prints and runs record."""
    paths = RunPaths(run_dir)
    multi = spec.nnodes > 1
    rendered: dict = {
        "run_id": spec.run_id,
        "executor": spec.executor,
        "nodes": list(spec.node_names),
        "gpus_per_node": spec.gpus_per_node,
        "world_size": spec.world_size,
        "torchrun": render_torchrun_argv(
            spec, run_dir, python=python,
            endpoint="<head>:<port>" if multi else None,
            rdzv_id="<job-id>.<restart>" if multi else None,
        ),
        "port": (
            {"rule": "derived from job id + restart count, probed on the head node",
             "range": list(spec.port_range)}
            if multi else {"rule": "torchrun --standalone: the OS picks a free port"}
        ),
        "env": {name: resolved.to_dict() for name, resolved in render_env(spec, profiles, run_dir).items()},
    }
    if spec.executor == "slurm":
        params = render_slurm_params(spec)
        rendered["slurm"] = {"parameters": params, "sbatch": render_sbatch(params, paths.submitit, python)}
    return rendered
