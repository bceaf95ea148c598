"""The real-Slurm test harness works: nodes come up, multi-node jobs with GPUs run
(sbatch/srun and submitit), cancel works, two jobs share a node."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def slurm(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm client; SLURM_CONF comes from the slurm_cluster fixture's environment."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def sbatch(*argv: str) -> str:
    return slurm("sbatch", "--parsable", *argv).stdout.strip().split(";")[0]


def job_states(*job_ids: str) -> dict[str, str]:
    """States of the given jobs as listed by a plain `squeue` (pending/running/completing)."""
    out = slurm("squeue", "--noheader", "--format=%i %T").stdout
    listed = dict(line.split() for line in out.splitlines() if line.strip())
    return {j: listed[j] for j in job_ids if j in listed}


def wait_for(predicate, timeout: float, what: str, cluster, interval: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{cluster.diagnostics()}", pytrace=False)


def processes_of_job(job_id: str) -> list[int]:
    marker = f"SLURM_JOB_ID={job_id}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_all_nodes_idle_with_their_gpus(slurm_cluster):
    expected = {n.name: n for n in slurm_cluster.nodes}
    assert {"worker-5", "worker-6", "worker-8"} <= expected.keys()
    states = wait_for(lambda: (s := slurm_cluster.node_states()) and all(v == "IDLE" for v in s.values()) and s,
                      30, "all nodes IDLE", slurm_cluster)
    assert states == {name: "IDLE" for name in expected}
    out = slurm("sinfo", "--noheader", "--Node", "--partition=gpu", "--format=%N %G").stdout
    gres = dict(line.split() for line in out.splitlines())
    assert gres == {n.name: f"gpu:{n.gres_type}:{n.gpus}" for n in expected.values()}


def test_sbatch_two_nodes_with_gpus(slurm_cluster, tmp_path):
    script = ('srun hostname; env | grep -E "SLURM_JOB_NODELIST|CUDA_VISIBLE|SLURM_NODEID"; '
              "srun sh -c 'echo TASK node=$SLURMD_NODENAME nodeid=$SLURM_NODEID gpus=$CUDA_VISIBLE_DEVICES'")
    out_file = tmp_path / "job-%j.out"
    r = slurm("sbatch", "--parsable", "--wait", "-N2", "-w", "worker-5,worker-8", "--gpus-per-node=2",
              f"--output={out_file}", "--wrap", script, timeout=90, check=False)
    job_id = r.stdout.strip().split(";")[0]
    output = Path(str(out_file).replace("%j", job_id)).read_text() if job_id else ""
    assert r.returncode == 0, f"sbatch --wait failed: {r.stderr}\n{output}\n{slurm_cluster.diagnostics()}"
    lines = output.splitlines()
    assert lines.count(socket.gethostname()) == 2, output  # `srun hostname`: one line per task
    assert "SLURM_JOB_NODELIST=worker-[5,8]" in lines, output
    assert "SLURM_NODEID=0" in lines, output
    assert "CUDA_VISIBLE_DEVICES=0,1" in lines, output
    tasks = sorted(line for line in lines if line.startswith("TASK "))
    assert tasks == ["TASK node=worker-5 nodeid=0 gpus=0,1", "TASK node=worker-8 nodeid=1 gpus=0,1"], output


def test_submitit_two_node_job(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")

    def facts():  # defined locally so cloudpickle ships it by value to the job
        import os

        import submitit

        env = submitit.JobEnvironment()
        return {"global_rank": env.global_rank, "local_rank": env.local_rank, "num_tasks": env.num_tasks,
                "num_nodes": env.num_nodes, "node": env.node, "hostnames": env.hostnames,
                "job_id": env.job_id, "slurmd_nodename": os.environ.get("SLURMD_NODENAME"),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(nodes=2, ntasks_per_node=1, gpus_per_node=2, nodelist="worker-5,worker-6",
                               time=5)
    job = executor.submit(facts)
    # No sacct here (no slurmdbd), so submitit cannot see a failed job finish: bound the wait
    # ourselves, stopping early once the job has left squeue.
    wait_for(lambda: job.done() or not job_states(job.job_id), 90, f"submitit job {job.job_id}", slurm_cluster,
             interval=0.5)
    try:
        results = job.results()
    except Exception as e:  # noqa: BLE001 - add the cluster logs to submitit's message
        pytest.fail(f"submitit job failed: {e}\n{slurm_cluster.diagnostics()}", pytrace=False)
    assert len(results) == 2
    by_rank = {r["global_rank"]: r for r in results}
    assert sorted(by_rank) == [0, 1]
    assert {r["slurmd_nodename"] for r in results} == {"worker-5", "worker-6"}
    for rank, r in by_rank.items():
        assert r["job_id"] == job.job_id
        assert (r["num_tasks"], r["num_nodes"], r["node"], r["local_rank"]) == (2, 2, rank, 0)
        assert r["hostnames"] == ["worker-5", "worker-6"]
        assert r["cuda_visible_devices"] == "0,1"


def test_scancel_removes_running_job(slurm_cluster, tmp_path):
    job_id = sbatch("-w", "worker-7", f"--output={tmp_path}/sleep-%j.out", "--wrap", "sleep 300")
    try:
        wait_for(lambda: job_states(job_id).get(job_id) == "RUNNING", 30, f"job {job_id} RUNNING", slurm_cluster)
        wait_for(lambda: processes_of_job(job_id), 10, f"processes of job {job_id}", slurm_cluster)
    finally:
        slurm("scancel", job_id)
    wait_for(lambda: job_id not in job_states(job_id), 30, f"job {job_id} to leave squeue", slurm_cluster)
    assert "JobState=CANCELLED" in slurm("scontrol", "show", "job", job_id).stdout
    wait_for(lambda: not processes_of_job(job_id), 15, f"processes of job {job_id} to end", slurm_cluster)


def test_two_gpu_jobs_share_a_node(slurm_cluster, tmp_path):
    jobs = [sbatch("-w", "worker-5", "--gpus-per-node=2", f"--output={tmp_path}/share-%j.out",
                   "--wrap", "sleep 120") for _ in range(2)]
    try:
        wait_for(lambda: job_states(*jobs) == {j: "RUNNING" for j in jobs}, 30,
                 f"jobs {jobs} both RUNNING on worker-5", slurm_cluster)
        gpu_sets = []
        for j in jobs:
            detail = slurm("scontrol", "show", "job", "-d", j).stdout
            assert "NodeList=worker-5" in detail, detail
            m = re.search(r"GRES=gpu(?::\w+)?:2\(IDX:([\d,-]+)\)", detail)
            assert m, detail
            gpu_sets.append(m.group(1))
        assert gpu_sets[0] != gpu_sets[1], f"both jobs got GPUs {gpu_sets[0]}"
        assert slurm_cluster.node_states()["worker-5"] == "MIXED"
    finally:
        slurm("scancel", *jobs)
