"""Training through the real Slurm test cluster: a job that reaches its time limit gets SIGUSR2
(``--signal=USR2@120``), saves a checkpoint, is requeued by submitit, resumes on a fresh attempt and
finishes; a preempted job (submitit's interrupt: SIGTERM then SIGUSR2) does the same. ``clusterkit
runs`` shows one run with its attempts, and the losses match an uninterrupted local run bit for bit."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from train_testing import losses, tiny_args, tiny_dataset, wait_for_step

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


#: Seconds a requeued job stays held before the test releases it. slurmd refuses a batch launch whose
#: credential is not newer than the requeue's revocation (one-second resolution): a job started again
#: within the same second dies with "Job credential revoked" (FAILED, NonZeroExitCode). Slurm's own
#: BeginTime hold is about two minutes; a few seconds are enough and keep the test short.
RELEASE_AFTER_S = 5.0


@contextmanager
def prompt_requeues():
    """Slurm holds a requeued job about two minutes (BeginTime) before it may start again. While the
    block runs, a thread lets any such job start after ``RELEASE_AFTER_S`` (``scontrol update
    StartTime=now``), the way an operator would; it changes when attempts start, nothing about what
    they do."""
    stop = threading.Event()

    def release():
        held_since: dict[str, float] = {}
        while not stop.wait(1.0):
            queue = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
            held = {job_id: reason.strip() for job_id, _, reason in
                    (line.partition(" ") for line in queue.stdout.splitlines())}
            now = time.monotonic()
            held_since = {j: held_since.get(j, now) for j, reason in held.items() if reason == "BeginTime"}
            for job_id, since in list(held_since.items()):
                if now - since >= RELEASE_AFTER_S:
                    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
                    del held_since[job_id]

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def trainer_attempts(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "train_attempts.json").read_text())


def check_continuous(run_dir: Path, steps: int) -> None:
    assert [s for s, _ in losses(run_dir)] == list(range(1, steps + 1))  # every step exactly once


@pytest.mark.timeout(1500)
def test_time_limit_requeues_resumes_and_finishes(slurm_cluster, cli, tmp_path):
    csv = tiny_dataset(tmp_path / "data")
    steps = 36
    # 3 minutes with the signal 120 s before the end: SIGUSR2 comes 30-90 s into an attempt (slurmctld
    # checks time limits periodically); 2.5 s per step makes the run need about 90 s of steps, so the
    # first attempt cannot finish before it. No periodic checkpoint: only the signal's save carries the
    # run over. A last attempt may find the work done (the signal came as it finished) and end at once.
    with prompt_requeues():
        code, out, err = cli(*tiny_args(csv, steps, "--set", "ckpt_every=1000", "--set", "min_step_s=2.5"),
                             "--node", "worker-5", "--time-limit", "3", "--executor", "slurm", "--wait",
                             "--timeout", "1200", timeout=1300)
    assert code == 0, (out, err)
    result = out["result"]
    assert result["executor"] == "slurm" and result["job_ids"][0].isdigit()
    assert result["state"] == "COMPLETED" and result["step"] == steps and result["stopped"] == "max_steps"
    run_dir = Path(result["run_dir"])
    assert "#SBATCH --signal=USR2@120" in (run_dir / "submission.sh").read_text()

    attempts = trainer_attempts(run_dir)
    assert len(attempts) >= 2
    first, second = attempts[0], attempts[1]
    assert first["stopped"] == "signal" and 0 < first["end_step"] < steps
    assert second["resumed_from"].endswith(f"step-{first['end_step']}") and second["start_step"] == first["end_step"]
    assert {a["job_id"] for a in attempts} == {result["job_ids"][0]}  # one Slurm job, requeued
    check_continuous(run_dir, steps)
    log = (run_dir / "logs" / "rank-000.log").read_text()
    assert "caught SIGUSR2: saving a checkpoint" in log

    # `clusterkit runs` shows one run with its attempts; each attempt had its own rendezvous record
    code, out, _ = cli("runs")
    [run] = [r for r in out["result"]["runs"] if r["run_id"] == result["run_id"]]
    assert len(run["attempts"]) == len(attempts) and run["attempts"][0]["requeued"] is True
    assert run["attempts"][0]["requeue"] == "the ranks saved and exited"
    assert run["state"] == "COMPLETED" and f"{len(attempts)} attempts" in run["summary"]

    # the same training without interruption, locally: the same losses, bit for bit
    code, out, err = cli(*tiny_args(csv, steps, "--set", "ckpt_every=1000"), "--executor", "local", "--wait")
    assert code == 0, (out, err)
    assert losses(run_dir) == losses(Path(out["result"]["run_dir"]))


@pytest.mark.timeout(900)
def test_preemption_signal_requeues_two_nodes_and_resumes_on_a_fresh_port(slurm_cluster, cli, tmp_path):
    csv = tiny_dataset(tmp_path / "data")
    steps = 14
    # two nodes with one rank each, so the requeued attempt needs a new rendezvous
    code, out, err = cli(*tiny_args(csv, steps, "--set", "min_step_s=1.0"), "--nodes", "worker-6,worker-7",
                         "--gpus", "1", "--time-limit", "30", "--executor", "slurm")
    assert code == 0, (out, err)
    run_dir, job_id = Path(out["result"]["run_dir"]), out["result"]["job_ids"][0]
    wait_for_step(run_dir, 5, timeout=300)
    # submitit's Job._interrupt(timeout=False): SIGTERM then SIGUSR2 to the job's steps
    for sig in ("SIGTERM", "USR2"):
        subprocess.run(["scancel", job_id, "--signal", sig], check=True)
    code, out, err = cli("status", out["result"]["run_id"])
    record = out["result"]["runs"][0]
    from clusterkit.launch import runs
    from clusterkit.project import Project

    project = Project.from_options(None, {"CLUSTERKIT_INVENTORY": str(Path(__file__).parents[2] / "nodes.yaml"),
                                          "CLUSTERKIT_RUNS_DIR": str(run_dir.parent)})
    with prompt_requeues():
        final = runs.wait(project, record["run_id"], timeout=600)
    assert final.state == "COMPLETED", final
    attempts = trainer_attempts(run_dir)
    assert len(attempts) == 2 and attempts[0]["stopped"] == "signal"
    assert attempts[1]["start_step"] == attempts[0]["end_step"] >= 5
    result = json.loads((run_dir / "result.json").read_text())
    assert result["ok"] and result["step"] == steps and result["world_size"] == 2
    check_continuous(run_dir, steps)
    first, second = (json.loads((run_dir / f"rendezvous-{n}.json").read_text()) for n in (0, 1))
    assert first["job_id"] == second["job_id"] == job_id and (first["restart"], second["restart"]) == (0, 1)
    assert first["port"] != second["port"]  # a fresh port for the requeued attempt
