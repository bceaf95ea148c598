"""Executors: start a rendered job on Slurm (through submitit) or on this machine.

Both run the same thing on every node (``clusterkit.launch.node``), so a job that works
locally works on the cluster. ``auto`` picks Slurm when a controller answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from clusterkit.errors import InvalidChoice, SlurmError
from clusterkit.launch import slurm
from clusterkit.launch.records import RunRecord, atomic_write_json, read_json
from clusterkit.launch.render import RunPaths, render_slurm_params
from clusterkit.launch.spec import LaunchSpec

EXECUTOR_CHOICES = ("auto", "slurm", "local")


def pick_executor(choice: str, runner: slurm.Runner = slurm.run_command) -> str:
    """Resolve ``auto``: Slurm when a controller answers, else the local executor."""
    if choice not in EXECUTOR_CHOICES:
        raise InvalidChoice("--executor", choice, EXECUTOR_CHOICES)
    if choice != "auto":
        return choice
    return "slurm" if slurm.controller_answers(runner) else "local"


def _state_from_results(paths: RunPaths, spec: LaunchSpec) -> str | None:
    """The job's own record of how it ended: COMPLETED when every node's torchrun exited 0."""
    results = [read_json(paths.node_result(name)) for name in spec.node_names]
    if any(r is None for r in results):
        return None
    return "COMPLETED" if all(r["exit_code"] == 0 for r in results) else "FAILED"


class SlurmExecutor:
    name = "slurm"

    def submit(self, spec: LaunchSpec, paths: RunPaths) -> list[str]:
        import submitit

        from clusterkit.launch.node import NodeTask, RequeueableNodeTask

        executor = submitit.SlurmExecutor(folder=paths.submitit, max_num_timeout=spec.requeue)
        executor.update_parameters(**render_slurm_params(spec))
        task = (RequeueableNodeTask if spec.requeue else NodeTask)(str(paths.root))
        try:
            job = executor.submit(task)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.output or b"")
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            raise SlurmError(f"sbatch refused the job: {detail.strip() or exc}") from None
        except FileNotFoundError:
            raise SlurmError("sbatch not found: Slurm's client tools are not installed here",
                             hint="use --executor local") from None
        script = paths.submitit / f"{job.job_id}_submission.sh"
        if script.exists():
            paths.submission.write_text(script.read_text())
        return [str(job.job_id)]

    def states(self, runs: list[tuple[RunRecord, LaunchSpec]]) -> dict[str, str]:
        job_ids = [j for record, _ in runs for j in record.job_ids]
        live, _notes = slurm.job_states(job_ids)
        states = {}
        for record, spec in runs:
            job_states = [live.get(j) for j in record.job_ids]
            if all(s is not None for s in job_states) and job_states:
                state = _combine(job_states)
                if state == "COMPLETED":  # trust, but verify with what the nodes wrote
                    state = _state_from_results(RunPaths(record.run_dir), spec) or state
            else:
                state = _state_from_results(RunPaths(record.run_dir), spec) or "UNKNOWN"
            states[record.run_id] = state
        return states

    def cancel(self, record: RunRecord) -> None:
        slurm.cancel(record.job_ids)


class LocalExecutor:
    """One detached process per node on this machine, each running the node's torchrun."""

    name = "local"

    def submit(self, spec: LaunchSpec, paths: RunPaths) -> list[str]:
        job_id = f"local-{spec.run_id.rsplit('-', 1)[-1]}{os.getpid() % 10000:04d}"
        paths.logs.mkdir(parents=True, exist_ok=True)
        processes = []
        for index, node in enumerate(spec.nodes):
            argv = [sys.executable, "-m", "clusterkit.launch.node", str(paths.root),
                    "--node", node.name, "--job-id", job_id]
            if index == 0:
                argv.append("--head")
            with open(paths.logs / f"agent-{node.name}.log", "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            processes.append({"node": node.name, "pid": proc.pid, "create_time": _create_time(proc.pid)})
        atomic_write_json(paths.local, {"job_id": job_id, "processes": processes, "submitted_at": time.time()})
        return [job_id]

    def states(self, runs: list[tuple[RunRecord, LaunchSpec]]) -> dict[str, str]:
        states = {}
        for record, spec in runs:
            paths = RunPaths(record.run_dir)
            info = read_json(paths.local) or {}
            if info.get("cancelled_at"):
                states[record.run_id] = "CANCELLED"
            elif any(_alive(p) for p in info.get("processes", [])):
                states[record.run_id] = "RUNNING"
            else:
                states[record.run_id] = _state_from_results(paths, spec) or "FAILED"
        return states

    def cancel(self, record: RunRecord) -> None:
        import psutil

        paths = RunPaths(record.run_dir)
        info = read_json(paths.local) or {}
        procs = []
        for entry in info.get("processes", []):
            if _alive(entry):
                proc = psutil.Process(entry["pid"])
                procs += [proc, *proc.children(recursive=True)]
        info["cancelled_at"] = time.time()
        atomic_write_json(paths.local, info)
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        _gone, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            _signal(proc, signal.SIGKILL)


def _combine(states: list[str]) -> str:
    for state in ("RUNNING", "PENDING", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"):
        if state in states:
            return state
    return states[0]


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(entry: dict) -> bool:
    import psutil

    try:
        proc = psutil.Process(entry["pid"])
        return proc.create_time() == entry.get("create_time") and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc, sig: int) -> None:
    import psutil

    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def get_executor(name: str) -> SlurmExecutor | LocalExecutor:
    if name == "slurm":
        return SlurmExecutor()
    if name == "local":
        return LocalExecutor()
    raise InvalidChoice("executor", name, ("slurm", "local"))
