"""`clusterkit preflight` through the real Slurm test cluster: the probe runs as a job pinned
to the node (one process, all of the node's GPUs), writes its facts on the node, and the CLI
turns them into a structured report whose exit code follows the checks. This machine has no
NVIDIA driver, so the GPU checks fail or say "not checked" plainly: never a traceback."""

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]

STATUSES = {"pass", "warn", "fail"}


def _assert_report(out, code, err):
    assert "Traceback" not in err, err
    assert set(out) == {"schema", "command", "ok", "result", "error"} and out["command"] == "preflight"
    result = out["result"]
    for check in result["checks"]:
        assert check["status"] in STATUSES and check["detail"], check
        assert set(check) >= {"name", "status", "detail", "remedy"}
    failed = any(c["status"] == "fail" for c in result["checks"])
    assert code == (1 if failed else 0), (code, [c for c in result["checks"] if c["status"] == "fail"])
    assert out["ok"] is result["ok"] is (not failed)
    return result


@pytest.mark.slurm
def test_preflight_worker5_runs_on_the_node_through_slurm(slurm_cluster, cli):
    code, out, err = cli("preflight", "worker-5", "--timeout", "240")  # --executor auto finds the controller
    result = _assert_report(out, code, err)
    assert result["nodes"] == ["worker-5"] and result["mode"] == "job" and result["executor"] == "slurm"
    [run] = result["runs"]
    assert run["node"] == "worker-5" and run["state"] == "COMPLETED" and run["job_ids"][0].isdigit()

    facts = result["facts"]
    assert facts["schema"] == "clusterkit/preflight-facts/v1"
    # collected inside the Slurm job on worker-5, which was given all 8 of its GPUs
    assert facts["env"]["SLURMD_NODENAME"] == "worker-5"
    assert facts["env"]["SLURM_JOB_ID"] == run["job_ids"][0]
    assert facts["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert facts["torch"]["installed"] and facts["host"]["cpus_logical"] >= 1
    assert any(i["name"] == "lo" for i in facts["network"]["interfaces"])

    run_dir = Path(run["run_dir"])
    assert json.loads((run_dir / "result.json").read_text()) == facts
    script = (run_dir / "submission.sh").read_text()
    assert "#SBATCH --nodelist=worker-5" in script and "#SBATCH --gpus-per-node=8" in script
    torchrun = json.loads((run_dir / "rendered.json").read_text())["torchrun"]
    assert torchrun[torchrun.index("--nproc-per-node") + 1] == "1"
    assert "clusterkit.preflight.probe_main" in torchrun

    checks = {c["name"]: c for c in result["checks"]}
    for name in ("nvidia-driver", "gpu-health", "torch", "driver-cuda", "nvcc", "precision", "attention",
                 "inventory-gpu-model", "inventory-gpu-count", "inventory-cuda", "dev-shm", "disk",
                 "nccl-socket-ifname", "rendezvous-port"):
        assert name in checks, name
    assert all(c["node"] == "worker-5" for c in result["checks"])
    if not facts["nvidia"]["available"]:  # this GPU-less machine
        assert checks["nvidia-driver"]["status"] == "fail"
        assert checks["nvidia-driver"]["detail"].startswith("no NVIDIA driver: NVML not found")
        assert checks["gpu-health"]["status"] == "warn" and not checks["gpu-health"]["checked"]
        assert checks["inventory-gpu-count"]["detail"].startswith("not checked")
        assert code == 1


@pytest.mark.slurm
def test_preflight_two_nodes_with_a_plan_reports_per_node_and_job_checks(slurm_cluster, cli):
    code, out, err = cli("preflight", "worker-5,worker-8", "--res", "720p", "--frames", "4s", "--port", "29123",
                         "--timeout", "240")
    result = _assert_report(out, code, err)
    assert result["nodes"] == ["worker-5", "worker-8"]
    assert sorted(r["node"] for r in result["runs"]) == ["worker-5", "worker-8"]
    assert {r["state"] for r in result["runs"]} == {"COMPLETED"}
    assert sorted(result["facts"]) == ["worker-5", "worker-8"]
    assert result["facts"]["worker-8"]["env"]["SLURMD_NODENAME"] == "worker-8"
    assert result["facts"]["worker-8"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert result["facts"]["worker-8"]["env"]["NCCL_P2P_DISABLE"] == "1"  # nodes.yaml nccl_env reached the node
    names = [(c["node"], c["name"]) for c in result["checks"]]
    assert ("worker-5", "plan-memory") in names and ("worker-8", "plan-memory") in names
    assert (None, "nccl-versions") in names  # the job-level check across both nodes
    ports = result["facts"]["worker-5"]["ports"]["checked"]
    assert ports == [{"port": 29123, "why": "requested", "free": True, "error": None}]
    if result["plan"] is not None:
        assert [n["name"] for n in result["plan"]["nodes"]] == ["worker-5", "worker-8"]

    text_code, text, text_err = cli("preflight", "worker-8", "--timeout", "240", expect_json=False)
    assert "Traceback" not in text_err and "Traceback" not in text
    assert text_code == code or text_code in (0, 1)
    assert "preflight worker-8" in text and "checks" in text


# ---------------------------------------------------------------------------- the local executor (no Slurm)


def test_preflight_through_the_local_executor(cli):
    code, out, err = cli("preflight", "worker-8", "--executor", "local", "--timeout", "180")
    result = _assert_report(out, code, err)
    [run] = result["runs"]
    assert result["executor"] == "local" and run["state"] == "COMPLETED"
    assert result["facts"]["env"]["CLUSTERKIT_NODE"] == "worker-8"


def test_a_probe_job_that_dies_is_a_failed_check_with_its_last_log_line(tmp_path):
    """torch, python or clusterkit missing on a node kills the job before any probe runs: the
    report says so (with the log line), it does not crash."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "env").mkdir()
    shutil.copy(ROOT / "nodes.yaml", project / "nodes.yaml")
    shutil.copy(ROOT / "env" / "nccl.yaml", project / "env" / "nccl.yaml")
    (project / "jobs" / "preflight.yaml").write_text(
        "kind: preflight\nentry: ck_module_that_is_not_installed\ntime_limit_min: 5\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CLUSTERKIT_RUNS_DIR", "CLUSTERKIT_INVENTORY")}
    proc = subprocess.run([sys.executable, "-m", "clusterkit", "--inventory", str(project / "nodes.yaml"), "preflight",
                           "worker-5", "--executor", "local", "--timeout", "180", "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)["result"]
    [check] = result["checks"]
    assert check["name"] == "probe-job" and check["status"] == "fail" and check["node"] == "worker-5"
    assert "without writing facts" in check["detail"] and "ck_module_that_is_not_installed" in check["detail"]
    assert "clusterkit logs" in check["remedy"] and result["facts"] is None
