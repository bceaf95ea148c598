"""The local executor: real torchrun processes (gloo) on this machine, nodes simulated as
separate torchrun agents that rendezvous over c10d exactly as on a cluster."""

import json
import time

import pytest

from clusterkit.launch import runs
from clusterkit.launch.records import read_json
from clusterkit.launch.render import RunPaths

from ck_testing import echo_spec

pytestmark = pytest.mark.integration

HOSTILE = "it's \"q\" $(touch /tmp/ck-pwned) `id`; ☃\nline2"


def test_diagnose_nccl_two_simulated_nodes(cli):
    code, out, err = cli("diagnose", "nccl", "--nodes", "worker-5,worker-8", "--gpus-per-node", "2",
                         "--executor", "local", "--timeout", "60")
    assert code == 0, (out, err)
    assert out["schema"] == "clusterkit/v1" and out["ok"] is True and out["command"] == "diagnose nccl"
    result = out["result"]
    assert result["world_size"] == 4 and result["expected_world_size"] == 4
    assert result["backend"] == "gloo"
    assert sorted(r["rank"] for r in result["ranks"]) == [0, 1, 2, 3]
    assert sorted({r["node"] for r in result["ranks"]}) == ["worker-5", "worker-8"]
    assert all(c["ok"] for c in result["checks"]) and len(result["checks"]) == 8
    sums = [c for c in result["checks"] if c["op"] == "all_reduce"]
    assert all(c["got"] == 10.0 for c in sums)  # 1+2+3+4
    assert {t["op"] for t in result["timings"]} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert {t["scope"] for t in result["timings"]} == {"world", "intra:worker-5", "intra:worker-8",
                                                       "inter:worker-5-worker-8"}
    assert result["hang"] is None and result["log_diagnosis"] is None
    paths = RunPaths(__import__("pathlib").Path(result["run_dir"]))
    rendezvous = read_json(paths.rendezvous(0))
    assert 20000 <= rendezvous["port"] < 29000 and rendezvous["port"] not in (29400, 29500)
    env = read_json(paths.env)
    # diagnose uses the debug profile as its base; worker-8's own override survives it
    assert env["worker-5"]["env"]["NCCL_DEBUG"] == "INFO"
    assert env["worker-8"]["env"]["NCCL_P2P_DISABLE"] == "1"
    assert env["worker-8"]["source"]["NCCL_P2P_DISABLE"] == "node:worker-8"
    code, listed, _ = cli("runs")
    assert [r["run_id"] for r in listed["result"]["runs"]] == [result["run_id"]]
    assert listed["result"]["runs"][0]["state"] == "COMPLETED"


def test_hostile_args_and_env_reach_every_rank_verbatim(project):
    spec = echo_spec(project, nodes="worker-5,worker-6", gpus_per_node=1, executor="local",
                     args=("--prompt", HOSTILE, "--x", "$HOME"), env={"MY_VAR": HOSTILE})
    runs.launch(project, spec)
    record = runs.wait(project, spec.run_id, timeout=180)
    assert record.state == "COMPLETED", runs.log_files(record)
    for rank in (0, 1):
        echo = json.loads((record.run_dir / "echo" / f"rank-{rank}.json").read_text())
        assert echo["argv"] == ["--prompt", HOSTILE, "--x", "$HOME"]
        assert echo["env"]["MY_VAR"] == HOSTILE
        assert echo["env"]["WORLD_SIZE"] == "2"
    assert not __import__("pathlib").Path("/tmp/ck-pwned").exists()


def test_two_concurrent_multi_node_jobs_on_the_same_nodes(project):
    specs = [echo_spec(project, nodes="worker-5,worker-6", gpus_per_node=1, executor="local") for _ in range(2)]
    for spec in specs:
        runs.launch(project, spec)
    records = [runs.wait(project, spec.run_id, timeout=180) for spec in specs]
    assert [r.state for r in records] == ["COMPLETED", "COMPLETED"]
    ports = [read_json(RunPaths(r.run_dir).rendezvous(0))["port"] for r in records]
    assert ports[0] != ports[1]


def test_two_concurrent_single_node_jobs(project):
    specs = [echo_spec(project, nodes="worker-5", gpus_per_node=2, executor="local") for _ in range(2)]
    for spec in specs:
        runs.launch(project, spec)
    records = [runs.wait(project, spec.run_id, timeout=180) for spec in specs]
    assert [r.state for r in records] == ["COMPLETED", "COMPLETED"]
    master_ports = {read_json(r.run_dir / "echo" / "rank-0.json")["env"]["MASTER_PORT"] for r in records}
    assert len(master_ports) == 2  # --standalone: the OS gave each its own port


def test_cancel_stops_every_process(project, cli):
    import psutil

    spec = echo_spec(project, nodes="worker-5,worker-6", gpus_per_node=1, executor="local", args=("--sleep", "300"))
    runs.launch(project, spec)
    paths = RunPaths(project.registry.run_dir(spec.run_id))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((paths.root / "echo").glob("rank-*.json"))) < 2:
        time.sleep(0.3)
    pids = [json.loads(p.read_text())["pid"] for p in (paths.root / "echo").glob("rank-*.json")]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    code, out, err = cli("cancel", spec.run_id[:-1])  # a unique prefix is enough
    assert code == 0, err
    assert out["result"]["state"] == "CANCELLED"
    time.sleep(0.5)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    code, out, _ = cli("status", spec.run_id)
    assert out["result"]["runs"][0]["state"] == "CANCELLED"
    code, out, _ = cli("cancel", spec.run_id)
    assert code == 2 and "already ended" in out["error"]["message"]


def test_failed_rank_fails_the_run(project):
    spec = echo_spec(project, nodes="worker-5", gpus_per_node=1, executor="local")
    spec = type(spec)(**{**spec.__dict__, "entry": "ck_missing_module"})
    runs.launch(project, spec)
    record = runs.wait(project, spec.run_id, timeout=120)
    assert record.state == "FAILED"
    assert "worker-5 exit" in record.summary
    log = (record.run_dir / "logs" / "rank-000.log").read_text()
    assert "No module named ck_missing_module" in log


def test_logs_show_and_follow_every_rank(project, cli):
    spec = echo_spec(project, nodes="worker-5", gpus_per_node=2, executor="local", args=("--sleep", "2"))
    runs.launch(project, spec)
    code, text, err = cli("logs", spec.run_id, "--follow", expect_json=False, timeout=120)
    assert code == 0, err
    assert "rank-000| [clusterkit] rank 0/2" in text and "rank-001| [clusterkit] rank 1/2" in text
    code, out, _ = cli("logs", spec.run_id, "--rank", "1")
    files = out["result"]["files"]
    assert list(files) == [str(RunPaths(project.registry.run_dir(spec.run_id)).rank_log(1))]
    assert any("rank 1/2" in line for line in next(iter(files.values())))
    code, out, _ = cli("status", spec.run_id)
    assert out["result"]["runs"][0]["state"] == "COMPLETED"


def test_stalled_rank_then_log_diagnosis_of_the_run(cli):
    code, out, err = cli("diagnose", "nccl", "--executor", "local", "--nodes", "worker-5,worker-8",
                         "--gpus-per-node", "1", "--timeout", "8", "--stall-rank", "1", "--no-plot")
    assert code == 1, err
    result = out["result"]
    assert [m["rank"] for m in result["hang"]["missing"]] == [1]
    assert result["hang"]["missing"][0]["node"] == "worker-8" or result["hang"]["missing"][0]["node"] == "worker-5"
    assert result["log_diagnosis"] is not None  # the failed run's logs were read right away
    code, logs, err = cli("diagnose", "nccl", "--run", result["run_id"])
    assert code in (0, 1), err
    assert logs["command"] == "diagnose nccl" and logs["result"]["run_id"] == result["run_id"]
    assert logs["result"]["lines"] > 0 and logs["result"]["sources"]


def test_log_diagnosis_of_loose_files_names_cause_and_fix(cli, tmp_path):
    log = tmp_path / "rank-000.log"
    log.write_text(
        "[rank0]:[E1122 02:08:11.123456 ProcessGroupNCCL.cpp:1234] [PG 0 Rank 0] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=57, OpType=ALLREDUCE, NumelIn=1048576, NumelOut=1048576, "
        "Timeout(ms)=600000) ran for 600076 milliseconds before timing out.\n")
    code, out, err = cli("diagnose", "nccl", "--log", str(log))
    assert code == 1, err
    first = out["result"]["first_error"]
    assert first["id"] == "N1" and first["fix"] and first["cause"]
    code, text, _ = cli("diagnose", "nccl", "--log", str(log), expect_json=False)
    assert "N1" in text
    code, out, _ = cli("diagnose", "nccl", "--log", str(tmp_path / "missing.log"))
    assert code == 2
    code, out, _ = cli("diagnose", "nccl", "--log", str(log), "--node", "worker-5")
    assert code == 2 and "do not combine" in out["error"]["message"]
