"""`clusterkit env [NODE]`: which env/requirements-*.txt fits a node's driver, and why."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterkit.inventory import load_inventory
from clusterkit.preflight.envspec import CUDA_LINES, choose_env, env_for_node, load_env_specs, parse_env_spec

from preflight_fakes import DATA

ROOT = Path(__file__).resolve().parents[2]
SPECS = load_env_specs(ROOT / "env")
INVENTORY = load_inventory(ROOT / "nodes.yaml")


def run(*args, runs_dir):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=ROOT)


def test_every_cuda_line_has_a_spec_with_its_index_and_a_torch_pin():
    by_name = {s.name: s for s in SPECS}
    assert set(by_name) == {"cu118", "cu121", "cu124", "cpu"}
    for name, cuda in CUDA_LINES:
        spec = by_name[name]
        assert spec.cuda == cuda and spec.index_url == f"https://download.pytorch.org/whl/{name}"
        assert "torch" in spec.pins and "torchvision" in spec.pins
        text = spec.path.read_text()
        assert f"--index-url https://download.pytorch.org/whl/{name}" in text  # the install line says it too
        assert "flash-attn" in text and "xformers" in text
    assert by_name["cpu"].cuda is None and by_name["cpu"].index_url.endswith("/cpu")
    assert by_name["cu121"].pins["torch"] == "2.3.0"  # upstream Open-Sora 1.2.0's torch
    assert [s.name for s in SPECS] == ["cu124", "cu121", "cu118", "cpu"]  # newest first, CPU last


@pytest.mark.parametrize("driver,env,alternatives", [
    ("12.2", "cu121", {"cu124": False, "cu118": True}),
    ("12.2.1", "cu121", {"cu124": False, "cu118": True}),
    ("12.4", "cu124", {"cu121": True, "cu118": True}),
    ("12.8", "cu124", {"cu121": True, "cu118": True}),
    ("13.0", "cu124", {"cu121": True, "cu118": True}),
    ("12.1", "cu121", {"cu124": False, "cu118": True}),
    ("12.0", "cu118", {"cu121": False, "cu124": False}),
    ("11.8", "cu118", {"cu121": False, "cu124": False}),
    ("11.4", None, {"cu118": False, "cu121": False, "cu124": False, "cpu": True}),
    (None, None, {}),
])
def test_choose_env(driver, env, alternatives):
    choice = choose_env(driver, SPECS)
    assert choice["env"] == env
    assert {a["env"]: a["fits"] for a in choice["alternatives"]} == alternatives
    assert choice["reasons"]


def test_why_names_the_rule_and_minor_version_compatibility():
    choice = choose_env("12.2", SPECS)
    assert "cu121 wheels are built with CUDA 12.1 <= 12.2" in choice["reasons"][0]
    cu124 = next(a for a in choice["alternatives"] if a["env"] == "cu124")
    assert "minor-version compatibility" in cu124["why"] and "PTX" in cu124["why"]
    old = choose_env("11.4", SPECS)
    assert "upgrade the NVIDIA driver" in old["reasons"][0]
    assert "minor-version compatibility" in next(a for a in old["alternatives"] if a["env"] == "cu118")["why"]
    cu121 = next(a for a in choose_env("11.8", SPECS)["alternatives"] if a["env"] == "cu121")
    assert "a different major version: no compatibility" in cu121["why"]


def test_turing_and_the_seed_cuda_124_notes():
    worker2 = env_for_node(INVENTORY.node("worker-2"), SPECS)
    assert worker2["env"] == "cu124" and worker2["cuda_source"] == "nodes.yaml"
    notes = " ".join(worker2["notes"])
    assert "upstream Open-Sora 1.2 targets cu121" in notes and "CUDA 12.4" in notes
    assert "sm_75: no bf16 and no FlashAttention-2" in notes
    assert "flash-attn 2 is optional" in " ".join(env_for_node(INVENTORY.node("worker-5"), SPECS)["notes"])


def test_a_measurement_wins_over_nodes_yaml_and_the_disagreement_is_said():
    choice = env_for_node(INVENTORY.node("worker-1"), SPECS, {"cuda": "12.4", "run_id": "r1"})
    assert choice["env"] == "cu124" and choice["cuda_source"] == "measured by preflight run r1"
    assert 'nodes.yaml says cuda: "12.2" but the node reports 12.4' in choice["notes"][0]


def test_a_bad_header_is_a_clear_error():
    from clusterkit.errors import UserError

    with pytest.raises(UserError, match="is not a CUDA version"):
        parse_env_spec(Path("env/requirements-cu999.txt"), "# cuda: twelve\ntorch==2.3.0\n")


# ---------------------------------------------------------------------------- the command


def test_env_node_json(tmp_path):
    proc = run("env", "worker-2", "--json", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    result = out["result"]
    assert out["ok"] and result["node"] == "worker-2" and result["env"] == "cu124"
    assert result["path"].endswith("env/requirements-cu124.txt") and result["driver_cuda"] == "12.4"
    assert {s["name"] for s in result["specs"]} == {"cu118", "cu121", "cu124", "cpu"}


def test_env_node_text(tmp_path):
    proc = run("env", "worker-1", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "worker-1: cu121" in proc.stdout and "why:" in proc.stdout
    assert "--index-url https://download.pytorch.org/whl/cu121" in proc.stdout


def test_env_unknown_cuda_exits_1_and_says_how_to_find_out(tmp_path):
    proc = run("env", "worker-4", "--json", runs_dir=tmp_path)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["result"]["env"] is None
    assert "clusterkit preflight NODE" in out["result"]["reasons"][0]


def test_env_every_node(tmp_path):
    proc = run("env", "--json", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    nodes = {n["node"]: n["env"] for n in json.loads(proc.stdout)["result"]["nodes"]}
    assert nodes == {"worker-1": "cu121", "worker-2": "cu124", "worker-3": "cu121", "worker-4": None,
                     "worker-5": "cu121", "worker-6": None, "worker-7": None, "worker-8": None}
    text = run("env", runs_dir=tmp_path)
    assert text.returncode == 0 and "worker-8" in text.stdout and "unknown" in text.stdout


def test_env_with_facts_from_a_preflight(tmp_path):
    proc = run("env", "worker-4", "--facts", str(DATA / "a100.json"), "--json", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["result"]
    assert result["env"] == "cu124" and result["cuda_source"].startswith("measured by preflight run")
    envelope = tmp_path / "preflight.json"
    envelope.write_text(json.dumps({"schema": "clusterkit/v1", "command": "preflight", "ok": True,
                                    "result": {"facts": json.loads((DATA / "rtx3090.json").read_text())}}))
    assert json.loads(run("env", "worker-4", "--facts", str(envelope), "--json",
                          runs_dir=tmp_path).stdout)["result"]["env"] == "cu121"


def test_env_uses_the_newest_completed_preflight_run_of_the_node(tmp_path):
    from clusterkit.launch.records import Registry, RunRecord, atomic_write_json

    registry = Registry(tmp_path)
    for age, (run_id, state, fixture) in enumerate([("old", "COMPLETED", "rtx3090"), ("new", "COMPLETED", "a100"),
                                                   ("newest-failed", "FAILED", "rtx3090")]):
        run_dir = registry.run_dir(run_id)
        atomic_write_json(run_dir / "result.json", json.loads((DATA / f"{fixture}.json").read_text()))
        now = time.time() + age
        registry.add(RunRecord(run_id=run_id, kind="preflight", executor="slurm", nodes=("worker-4",), job_ids=("1",),
                               state=state, run_dir=run_dir, created_at=now, updated_at=now))
    result = json.loads(run("env", "worker-4", "--json", runs_dir=tmp_path).stdout)["result"]
    assert result["env"] == "cu124" and result["cuda_source"] == "measured by preflight run new"


@pytest.mark.parametrize("args,message", [
    (["env", "--facts", "x.json"], "name it"),
    (["env", "worker-4", "--facts", "/nonexistent/facts.json"], "file not found"),
    (["env", "worker-99"], "worker-99"),
])
def test_env_user_errors(tmp_path, args, message):
    proc = run(*args, runs_dir=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_env_rejects_a_file_that_is_not_facts(tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    proc = run("env", "worker-4", "--facts", str(bogus), runs_dir=tmp_path)
    assert proc.returncode == 2 and "not preflight facts" in proc.stderr
