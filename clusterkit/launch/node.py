"""The per-node side of a launch: agree on the rendezvous, run torchrun, record the result.

Under Slurm, submitit runs ``NodeTask(run_dir)()`` once per node (one task per node);
the local executor runs ``python -m clusterkit.launch.node`` once per simulated node.
Both end in ``run_node``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import JobFailed, LaunchError
from clusterkit.launch.ports import choose_port
from clusterkit.launch.records import atomic_write_json, read_json
from clusterkit.launch.render import RunPaths, render_torchrun_argv
from clusterkit.launch.spec import LaunchSpec

# USR2 stays with submitit (checkpoint + requeue); torchrun passes TERM/INT on to its workers.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds a requeueable job's ranks get, after SIGUSR2, to save and exit, counted back from the
#: time limit's end (the rest of the signal delay goes to the requeue itself).
REQUEUE_MARGIN_S = 15


@dataclass(frozen=True)
class NodeContext:
    """Where this process sits in the job."""

    job_id: str
    node_name: str
    is_head: bool
    restart: int = 0


def slurm_context(env: dict[str, str]) -> NodeContext:
    """Read the context Slurm gives a task. The node is named by SLURMD_NODENAME (its index in
    the sorted node list is not our spec order) and node 0 of the allocation is the head."""
    try:
        return NodeContext(
            job_id=env["SLURM_JOB_ID"],
            node_name=env["SLURMD_NODENAME"],
            is_head=int(env.get("SLURM_NODEID", "0")) == 0,
            restart=int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        )
    except KeyError as exc:
        raise LaunchError(f"not inside a Slurm task: {exc.args[0]} is not set") from None


def _publish_rendezvous(paths: RunPaths, spec: LaunchSpec, ctx: NodeContext) -> dict:
    choice = choose_port(ctx.job_id, ctx.restart, spec.port_range)
    info = {
        "job_id": ctx.job_id,
        "restart": ctx.restart,
        "head_node": ctx.node_name,
        "host": socket.gethostname(),
        "chosen_at": time.time(),
        **choice.to_dict(),
    }
    atomic_write_json(paths.rendezvous(ctx.restart), info)
    return info


def _await_rendezvous(paths: RunPaths, spec: LaunchSpec, ctx: NodeContext) -> dict:
    deadline = time.monotonic() + spec.rdzv_timeout_s
    path = paths.rendezvous(ctx.restart)
    while time.monotonic() < deadline:
        info = read_json(path)
        if info and info.get("job_id") == ctx.job_id:
            return info
        time.sleep(0.2)
    raise LaunchError(
        f"{ctx.node_name}: the head node never published {path.name} within {spec.rdzv_timeout_s}s",
        hint="the run directory must be on a filesystem shared by all nodes of the job",
    )


def _ignore_usr2() -> None:  # preexec_fn: torchrun must survive USR2 (its ranks handle it)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def run_node(run_dir: Path, ctx: NodeContext, on_start=None) -> int:
    """Run this node's torchrun agent to completion; returns its exit code.

    For a requeueable job (``spec.requeue``) torchrun ignores SIGUSR2, which Slurm sends to every
    process of the step before the time limit: the ranks catch it, save and exit, while the agent
    stays up to collect them. ``on_start(proc)`` sees the torchrun process once it runs.
    """
    paths = RunPaths(Path(run_dir))
    spec = LaunchSpec.read(paths.spec)
    node_env = (read_json(paths.env) or {}).get(ctx.node_name)
    if node_env is None:
        raise LaunchError(f"{paths.env} has no environment for node {ctx.node_name!r}; "
                          f"job nodes: {', '.join(spec.node_names)}")

    rendezvous = None
    if spec.nnodes > 1:
        rendezvous = (_publish_rendezvous if ctx.is_head else _await_rendezvous)(paths, spec, ctx)
    argv = render_torchrun_argv(
        spec, paths.root,
        endpoint=f"{rendezvous['host']}:{rendezvous['port']}" if rendezvous else None,
        rdzv_id=f"{ctx.job_id}.{ctx.restart}" if rendezvous else None,
    )
    env = dict(os.environ)
    env.update(node_env["env"])
    env.update(CLUSTERKIT_RUN_DIR=str(paths.root), CLUSTERKIT_NODE=ctx.node_name,
               CLUSTERKIT_JOB_ID=ctx.job_id, CLUSTERKIT_RESTART=str(ctx.restart))
    paths.logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    attempt = {"restart": ctx.restart, "node": ctx.node_name, "job_id": ctx.job_id, "host": socket.gethostname(),
               "started_at": started}
    atomic_write_json(paths.attempt(ctx.restart, ctx.node_name), attempt)
    with open(paths.node_log(ctx.node_name), "a", encoding="utf-8") as log:
        log.write(f"[clusterkit] {ctx.node_name} attempt {ctx.restart}: {argv!r}\n")
        log.flush()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_ignore_usr2 if spec.requeue else None)
        if on_start is not None:
            on_start(proc)
        previous = {sig: signal.signal(sig, lambda s, _f: proc.send_signal(s)) for sig in FORWARDED_SIGNALS}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finished = time.time()
    atomic_write_json(paths.attempt(ctx.restart, ctx.node_name), {**attempt, "finished_at": finished,
                                                                   "exit_code": code})
    atomic_write_json(paths.node_result(ctx.node_name), {
        "node": ctx.node_name, "host": socket.gethostname(), "job_id": ctx.job_id, "restart": ctx.restart,
        "exit_code": code, "started_at": started, "finished_at": finished,
        "rendezvous": rendezvous, "argv": argv,
    })
    return code


class NodeTask:
    """The picklable callable submitit runs on every node of a Slurm job."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self) -> int:
        code = run_node(Path(self.run_dir), slurm_context(dict(os.environ)))
        if code != 0:
            raise JobFailed(f"torchrun exited with code {code} on {os.environ.get('SLURMD_NODENAME')}; "
                            f"see {RunPaths(Path(self.run_dir)).logs}")
        return code


class RequeueableNodeTask(NodeTask):
    """A NodeTask whose job checkpoints and requeues on SIGUSR2 (``spec.requeue`` > 0).

    Slurm sends USR2 ``signal_delay_s`` before the time limit (or on preemption, where the cluster
    sends preemption signals) to every process of the step. The ranks save a checkpoint and exit;
    torchrun ignores the signal and collects them. On the job's first task submitit calls
    ``checkpoint()``, which waits for this node's torchrun to finish and returns the task to run
    next; submitit then runs ``scontrol requeue``. The next attempt gets SLURM_RESTART_COUNT + 1,
    hence a fresh rendezvous port, and the training resumes from its newest complete checkpoint.
    """

    def __call__(self) -> int:
        self._torchrun_pid = None
        code = run_node(Path(self.run_dir), slurm_context(dict(os.environ)), on_start=self._started)
        if code != 0:
            raise JobFailed(f"torchrun exited with code {code} on {os.environ.get('SLURMD_NODENAME')}; "
                            f"see {RunPaths(Path(self.run_dir)).logs}")
        return code

    def _started(self, proc: subprocess.Popen) -> None:
        self._torchrun_pid = proc.pid

    def checkpoint(self):
        """Called by submitit's USR2 handler (inside the wait for torchrun): let the ranks finish
        their save, then ask for the same task to be requeued."""
        import submitit

        paths = RunPaths(Path(self.run_dir))
        spec = LaunchSpec.read(paths.spec)
        pid = getattr(self, "_torchrun_pid", None)
        deadline = time.monotonic() + max(10, spec.signal_delay_s - REQUEUE_MARGIN_S)
        outcome = "no torchrun was running"
        if pid is not None:
            _forward_to_ranks(pid, signal.SIGUSR2)  # in case the cluster signals only the task itself
            outcome = "torchrun did not finish before the deadline; the newest complete checkpoint is used"
            while time.monotonic() < deadline:
                if not _running(pid):
                    outcome = "the ranks saved and exited"
                    break
                time.sleep(0.5)
        ctx = slurm_context(dict(os.environ))
        record = read_json(paths.attempt(ctx.restart, ctx.node_name)) or {}
        atomic_write_json(paths.attempt(ctx.restart, ctx.node_name),
                          {**record, "requeued_at": time.time(), "requeue": outcome})
        return submitit.helpers.DelayedSubmission(RequeueableNodeTask(self.run_dir))


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as finished: the waiting thread reaps it later)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _forward_to_ranks(pid: int, sig: int) -> None:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=False)
    except psutil.Error:
        return
    for child in children:
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass


def main(argv: list[str] | None = None) -> int:
    """Local executor entry: one process per simulated node."""
    parser = argparse.ArgumentParser(prog="python -m clusterkit.launch.node")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--head", action="store_true")
    ns = parser.parse_args(argv)
    return run_node(ns.run_dir, NodeContext(job_id=ns.job_id, node_name=ns.node, is_head=ns.head))


if __name__ == "__main__":
    sys.exit(main())
