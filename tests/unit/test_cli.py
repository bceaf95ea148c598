"""The CLI contract: JSON envelope, exit codes, one error boundary, light commands stay light."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, runs_dir, inventory=ROOT / "nodes.yaml", env=None):
    full_env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(inventory),
                "PATH": os.environ["PATH"], **(env or {})}
    full_env.pop("SLURM_CONF", None)
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=60)
    return proc


def envelope(proc):
    data = json.loads(proc.stdout)
    assert set(data) == {"schema", "command", "ok", "result", "error"}
    assert data["schema"] == "clusterkit/v1"
    return data


def test_nodes_json(tmp_path):
    proc = run("nodes", "--json", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = envelope(proc)
    assert data["ok"] and data["command"] == "nodes" and data["error"] is None
    nodes = {n["name"]: n for n in data["result"]["nodes"]}
    assert sorted(nodes) == [f"worker-{i}" for i in range(1, 9)]
    assert nodes["worker-5"]["gpu_count"] == 8 and nodes["worker-5"]["gpu_model"] == "rtx-a6000"
    assert nodes["worker-8"]["slurm_state"] is None  # no controller in this test


def test_global_json_flag_before_the_command(tmp_path):
    assert envelope(run("--json", "nodes", runs_dir=tmp_path))["ok"]


def test_nodes_table_mentions_every_node(tmp_path):
    proc = run("nodes", runs_dir=tmp_path)
    assert proc.returncode == 0
    for i in range(1, 9):
        assert f"worker-{i}" in proc.stdout


def test_light_command_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from clusterkit.cli import main\n"
        f"rc = main(['--inventory', {str(ROOT / 'nodes.yaml')!r}, 'nodes', '--json'])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in ('torch', 'submitit', 'transformers', 'diffusers', 'av') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--inventory", "/nope/nodes.yaml", "nodes"), "not found"),
    (("diagnose", "nccl", "--executor", "local"), "choose the nodes"),
    (("diagnose", "nccl", "--nodes", "worker-9", "--executor", "local"), "worker-9"),
    (("diagnose", "nccl", "--node", "worker-8", "--gpus-per-node", "3", "--executor", "local"), "more than worker-8 has"),
    (("diagnose", "nccl", "--node", "worker-8", "--executor", "kubernetes"), "valid choices: auto, slurm, local"),
    (("diagnose", "nccl", "--node", "worker-8", "--executor", "local", "--nccl-profile", "debg"), "Did you mean 'debug'"),
    (("diagnose", "nccl", "--node", "worker-8", "--executor", "local", "--env", "NCCL_BLOCKING_WAIT=1"),
     "TORCH_NCCL_BLOCKING_WAIT"),
    (("logs", "no-such-run"), "no run 'no-such-run'"),
    (("status", "no-such-run"), "no run"),
])
def test_user_errors_exit_2_with_a_clear_message(tmp_path, args, message):
    proc = run(*args, runs_dir=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    data = envelope(run(*args, "--json", runs_dir=tmp_path))
    assert data["ok"] is False and data["result"] is None
    assert message in data["error"]["message"]


def test_usage_errors_exit_2(tmp_path):
    proc = run("nodes", "--no-such-flag", runs_dir=tmp_path)
    assert proc.returncode == 2 and "No such option" in proc.stderr
    data = envelope(run("nodes", "--no-such-flag", "--json", runs_dir=tmp_path))
    assert data["error"]["kind"] == "usage_error"


def test_bad_inventory_names_file_and_line(tmp_path):
    bad = tmp_path / "nodes.yaml"
    bad.write_text("version: 1\nnodes:\n  - name: a\n    gpu: {model: rtx-a600, count: 2}\n")
    proc = run("nodes", runs_dir=tmp_path, inventory=bad)
    assert proc.returncode == 2
    assert f"{bad}:4" in proc.stderr and "rtx-a600" in proc.stderr and "rtx-a6000" in proc.stderr


def test_dry_run_submits_and_writes_nothing(tmp_path):
    proc = run("diagnose", "nccl", "--nodes", "worker-5,worker-8", "--gpus-per-node", "2", "--executor", "slurm",
               "--dry-run", "--json", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = envelope(proc)["result"]
    assert result["dry_run"] and result["job_ids"] == []
    rendered = result["rendered"]
    assert "#SBATCH --nodes=2" in rendered["slurm"]["sbatch"]
    assert "--rdzv-endpoint" in rendered["torchrun"] and rendered["port"]["range"] == [20000, 29000]
    assert rendered["env"]["worker-8"]["env"]["NCCL_P2P_DISABLE"] == "1"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    text = run("diagnose", "nccl", "--node", "worker-5", "--executor", "slurm", "--dry-run", runs_dir=tmp_path)
    assert "nothing submitted" in text.stdout and "sbatch script" in text.stdout


def test_help_lists_the_commands(tmp_path):
    proc = run("--help", runs_dir=tmp_path)
    assert proc.returncode == 0
    for command in ("nodes", "status", "logs", "cancel", "runs", "diagnose"):
        assert command in proc.stdout


@pytest.mark.parametrize("args, command", [
    (["--json", "--inventory", str(ROOT / "nodes.yaml"), "logs", "no-such-run"], "logs"),
    (["--json", "submit", "infer", "--frames", "9q", "--res", "144p", "--prompt", "x"], "submit infer"),
    (["--json", "runs", "plot", "no-such-run"], "runs plot"),
    (["--json", "--inventory=/nonexistent.yaml", "plan", "--res", "144p", "--frames", "2s"], "plan"),
    (["--json", "no-such-command"], "clusterkit"),
])
def test_error_envelope_names_the_command(tmp_path, args, command):
    """Errors raised before or while the command parses still name it (global options skipped)."""
    data = envelope(run(*args, runs_dir=tmp_path))
    assert not data["ok"] and data["command"] == command


def test_logs_of_a_rank_that_does_not_exist_names_the_ranks(tmp_path):
    import time

    from clusterkit.launch.records import Registry, RunRecord

    registry = Registry(tmp_path)
    run_dir = registry.run_dir("r1")
    (run_dir / "logs").mkdir(parents=True)
    for rank in (0, 1):
        (run_dir / "logs" / f"rank-{rank:03d}.log").write_text(f"hello from rank {rank}\n")
    now = time.time()
    registry.add(RunRecord(run_id="r1", kind="infer", executor="local", nodes=("worker-5",), job_ids=("local-1",),
                           state="COMPLETED", run_dir=run_dir, created_at=now, updated_at=now))
    proc = run("logs", "r1", "--rank", "7", runs_dir=tmp_path)
    assert proc.returncode == 2 and "--rank 7 is not valid; valid choices: 0, 1" in proc.stderr
    data = envelope(run("--json", "logs", "r1", "--rank", "1", runs_dir=tmp_path))
    assert [lines for lines in data["result"]["files"].values()] == [["hello from rank 1"]]


@pytest.mark.parametrize("command", [("plan",), ("submit", "infer", "--model", "tiny", "--prompt", "a cat", "--dry-run")])
def test_upstreams_option_names_are_aliases(tmp_path, command):
    # inference.py spells them --resolution and --num-frames; people paste those
    short = envelope(run(*command, "--res", "240p", "--frames", "2s", "--json", runs_dir=tmp_path))
    upstream = envelope(run(*command, "--resolution", "240p", "--num-frames", "2s", "--json", runs_dir=tmp_path))
    assert short["ok"] and upstream["ok"]
    if command[0] == "plan":
        assert upstream["result"] == short["result"]
    else:
        assert {k: upstream["result"]["request"][k] for k in ("resolution", "frames")} == {"resolution": "240p",
                                                                                        "frames": "2s"}
