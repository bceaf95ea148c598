"""The launch layer on the real Slurm test cluster (slurmctld + one slurmd per node of
nodes.yaml, all on this machine): submitit submits real sbatch jobs, every node runs
torchrun (gloo), and status works without sacct (no accounting on this cluster)."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from clusterkit.launch import runs
from clusterkit.launch.records import read_json
from clusterkit.launch.render import RunPaths

from ck_testing import echo_spec

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def test_diagnose_nccl_two_nodes_two_processes(slurm_cluster, cli):
    code, out, err = cli("diagnose", "nccl", "--nodes", "worker-5,worker-8", "--gpus-per-node", "2",
                         "--timeout", "90")  # --executor auto finds the controller
    assert code == 0, (out, err)
    result = out["result"]
    assert result["executor"] == "slurm" and result["ok"] is True
    assert result["world_size"] == 4
    assert all(c["ok"] for c in result["checks"])
    assert {c["got"] for c in result["checks"] if c["op"] == "all_reduce"} == {10.0}
    assert sorted({r["node"] for r in result["ranks"]}) == ["worker-5", "worker-8"]
    job_id = result["job_ids"][0]
    assert job_id.isdigit()
    paths = RunPaths(Path(result["run_dir"]))
    script = paths.submission.read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=2" in script
    assert "#SBATCH --nodelist=worker-5,worker-8" in script
    rendezvous = read_json(paths.rendezvous(0))
    assert rendezvous["job_id"] == job_id and rendezvous["port"] not in (29400, 29500)
    node_results = {n: read_json(paths.node_result(n)) for n in ("worker-5", "worker-8")}
    assert all(r["exit_code"] == 0 for r in node_results.values())
    # Slurm gave each node's torchrun its two simulated GPUs
    ranks = [read_json(p) for p in sorted(paths.ranks.glob("rank-*.json"))]
    assert {r["cuda_visible_devices"] for r in ranks} == {"0,1"}
    code, out, _ = cli("status", result["run_id"])
    assert out["result"]["runs"][0]["state"] == "COMPLETED"
    # the fabric benchmark: every op and size in every scope, saved as JSON and PNG with the run
    scopes = {t["scope"] for t in result["timings"]}
    assert scopes == {"world", "intra:worker-5", "intra:worker-8", "inter:worker-5-worker-8"}
    assert {t["op"] for t in result["timings"]} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert all(t["busbw_gbs"] > 0 and t["expected_busbw_gbs"] is None for t in result["timings"])  # gloo: no GPU fabric
    png = Path(result["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_json(paths.root / "diagnosis.json")["timings"] == result["timings"]


def test_diagnose_names_a_stalled_rank_within_its_timeout(slurm_cluster, cli):
    start = time.monotonic()
    code, out, err = cli("diagnose", "nccl", "--nodes", "worker-6,worker-7", "--gpus-per-node", "2",
                         "--timeout", "10", "--stall-rank", "2", "--no-plot")
    elapsed = time.monotonic() - start
    assert code == 1, err
    hang = out["result"]["hang"]
    assert [m["rank"] for m in hang["missing"]] == [2]
    assert hang["missing"][0]["host"] and hang["missing"][0]["node"] in ("worker-6", "worker-7")
    assert "rank 2 never arrived" in hang["verdict"]
    assert out["result"]["state"] == "CANCELLED"
    assert elapsed < 10 + 60  # the timeout plus start-up, never NCCL's 30-minute watchdog
    queue = subprocess.run(["squeue", "-h", "-j", out["result"]["job_ids"][0], "-o", "%T"],
                           capture_output=True, text=True).stdout
    assert "RUNNING" not in queue


def test_two_concurrent_jobs_on_the_same_nodes_get_different_ports(slurm_cluster, project):
    specs = [echo_spec(project, nodes="worker-6,worker-7", gpus_per_node=2, executor="slurm") for _ in range(2)]
    for spec in specs:
        runs.launch(project, spec)
    records = [runs.wait(project, spec.run_id, timeout=240) for spec in specs]
    assert [r.state for r in records] == ["COMPLETED", "COMPLETED"], [r.summary for r in records]
    choices = [read_json(RunPaths(r.run_dir).rendezvous(0)) for r in records]
    assert choices[0]["port"] != choices[1]["port"]
    assert choices[0]["job_id"] != choices[1]["job_id"]


def test_cancel_stops_a_running_job_and_status_works_without_sacct(slurm_cluster, project, cli):
    import psutil

    sacct = subprocess.run(["sacct", "-n"], capture_output=True, text=True)
    assert sacct.returncode != 0  # accounting is off here: status must not depend on it
    spec = echo_spec(project, nodes="worker-3", gpus_per_node=2, executor="slurm", args=("--sleep", "600"))
    runs.launch(project, spec)
    echo = RunPaths(project.registry.run_dir(spec.run_id)).root / "echo"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(echo.glob("rank-*.json"))) < 2:
        time.sleep(0.5)
    pids = [json.loads(p.read_text())["pid"] for p in echo.glob("rank-*.json")]
    assert len(pids) == 2
    code, out, _ = cli("status", spec.run_id)
    assert code == 0 and out["result"]["runs"][0]["state"] == "RUNNING"
    code, out, err = cli("cancel", spec.run_id)
    assert code == 0, err
    job_id = out["result"]["job_ids"][0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if "RUNNING" not in queue and not alive:
            break
        time.sleep(0.5)
    assert "RUNNING" not in queue and not alive
    code, out, _ = cli("status", spec.run_id)
    assert out["result"]["runs"][0]["state"] == "CANCELLED"


def test_status_of_finished_jobs_falls_back_to_what_the_job_wrote(slurm_cluster, project):
    spec = echo_spec(project, nodes="worker-4", gpus_per_node=1, executor="slurm")
    runs.launch(project, spec)
    record = runs.wait(project, spec.run_id, timeout=180)
    assert record.state == "COMPLETED"
    # a job squeue has forgotten and sacct cannot see: the node result files decide
    from clusterkit.launch.executors import SlurmExecutor
    from clusterkit.launch.spec import LaunchSpec

    gone = record.__class__(**{**record.__dict__, "job_ids": ("999999",), "state": "RUNNING"})
    paths = RunPaths(record.run_dir)
    assert SlurmExecutor().states([(gone, LaunchSpec.read(paths.spec))]) == {record.run_id: "COMPLETED"}


def test_hostile_runs_directory_on_slurm(slurm_cluster, tmp_path):
    """Quotes, $(...), backticks, ';' and unicode in the runs path: sbatch and srun get it verbatim."""
    from clusterkit.project import Project

    from ck_testing import ROOT

    hostile = tmp_path / "it's \"our\" $(touch PWNED) `touch PWNED2`; ☃ runs"
    project = Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(hostile)})
    spec = echo_spec(project, nodes="worker-5", gpus_per_node=1, executor="slurm", args=("--x", "$(id)"))
    runs.launch(project, spec)
    record = runs.wait(project, spec.run_id, timeout=180)
    assert record.state == "COMPLETED", runs.log_files(record)
    assert json.loads((record.run_dir / "echo" / "rank-0.json").read_text())["argv"] == ["--x", "$(id)"]
    assert list(record.run_dir.glob("submitit/*_log.out"))  # Slurm wrote its log where we asked
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_nodes_shows_live_slurm_state(slurm_cluster, cli):
    code, out, err = cli("nodes")
    assert code == 0, err
    assert out["result"]["slurm"] is True
    states = {n["name"]: n["slurm_state"] for n in out["result"]["nodes"]}
    assert set(states) == {f"worker-{i}" for i in range(1, 9)}
    assert all(s in ("idle", "mixed", "allocated", "completing") for s in states.values()), states
    code, text, _ = cli("nodes", expect_json=False)
    assert "slurm" in text and "idle" in text
