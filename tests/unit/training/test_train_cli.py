"""``clusterkit train`` refuses bad input before anything is written or submitted, with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def train(*args, runs_dir: Path):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    proc = subprocess.run([sys.executable, "-m", "clusterkit", "train", *args, "--json"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("path,text\nclip.mp4,a clip\n")
    return path


def tiny(*args, csv_file):
    return ("--config", "jobs/train-tiny.yaml", "--data", str(csv_file), "--executor", "local", *args)


def error_of(code, out, expected_code=2):
    assert code == expected_code, out
    assert out["ok"] is False
    return out["error"]["message"], out["error"]["hint"] or ""


def test_csv_with_missing_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nclip.mp4,a clip\n")
    message, hint = error_of(*train("--config", "train-tiny", "--data", str(bad), runs_dir=tmp_path / "runs"))
    assert "missing column text; the header has path, caption" in message and "needs path and text" in hint
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*-train-*"))


def test_nonexistent_csv(tmp_path):
    message, _ = error_of(*train("--config", "tiny", "--data", str(tmp_path / "nope.csv"), runs_dir=tmp_path / "r"))
    assert "does not exist" in message and "nope.csv" in message


def test_unknown_bucket_resolution(tmp_path, csv_file):
    code, out = train(*tiny("--set", "buckets={4K: {16: [0.1, 1]}}", csv_file=csv_file), runs_dir=tmp_path / "r")
    message, _ = error_of(code, out)
    assert "resolution '4K' is not valid" in message and "Did you mean '4k'?" in message


def test_keep_last_one_is_refused(tmp_path, csv_file):
    message, _ = error_of(*train(*tiny("--set", "keep_last=1", csv_file=csv_file), runs_dir=tmp_path / "r"))
    assert "keep_last=1: must be an integer >= 2" in message


def test_resume_with_nothing_to_resume(tmp_path):
    message, hint = error_of(*train("--resume", runs_dir=tmp_path / "runs"))
    assert "nothing to resume: no training run in" in message and "--config" in hint
    message, _ = error_of(*train("--resume", str(tmp_path), runs_dir=tmp_path / "runs"))
    assert "nothing to resume" in message


def test_which_training_and_stray_path(tmp_path, csv_file):
    message, hint = error_of(*train("--data", str(csv_file), runs_dir=tmp_path / "r"))
    assert "give --config" in message and "train-tiny" in hint and "train-stage1" in hint
    message, _ = error_of(*train("somewhere", runs_dir=tmp_path / "r"))
    assert "a PATH only goes with --resume" in message
    message, _ = error_of(*train("--config", "train-nope", runs_dir=tmp_path / "r"))
    assert "--config 'train-nope' is not valid" in message


def test_resume_on_another_world_size_needs_allow_dp_change(tmp_path, csv_file):
    from clusterkit.launch.records import new_run_id
    from clusterkit.launch.spec import LaunchSpec, node_slots
    from clusterkit.project import Project
    from opensora_core.training.checkpoint_files import FORMAT

    project = Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})
    run_dir = tmp_path / "old-run"
    step = run_dir / "checkpoints" / "step-3"
    step.mkdir(parents=True)
    (step / "train_state.json").write_text(json.dumps({"format": FORMAT, "step": 3, "epoch": 0, "world_size": 2,
                                                       "steps_in_epoch": 3, "files": {}}))
    (run_dir / "train_config.json").write_text(json.dumps({"name": "train-tiny", "data": str(csv_file)}))
    LaunchSpec(run_id=new_run_id("train"), kind="train", nodes=node_slots(project.inventory, "worker-5"),
               gpus_per_node=2, entry="opensora_core.training.run").write(run_dir / "spec.json")
    code, out = train("--resume", str(step), "--gpus", "1", "--executor", "local", runs_dir=tmp_path / "runs")
    message, hint = error_of(code, out)
    assert "written by 2 ranks but this run would have 1" in message and "--allow-dp-change" in hint
    code, out = train("--resume", str(step), "--executor", "local", "--dry-run", runs_dir=tmp_path / "runs")
    assert code == 0, out
    result = out["result"]
    assert result["nodes"] == ["worker-5"] and result["world_size"] == 2  # pinned to the resumed run
    assert result["resume"]["step"] == 3 and str(step) in result["rendered"]["torchrun"]
    code, out = train("--resume", str(step), "--gpus", "1", "--allow-dp-change", "--executor", "local", "--dry-run",
                      runs_dir=tmp_path / "runs")
    assert code == 0 and "--allow-dp-change" in out["result"]["rendered"]["torchrun"]


def test_dry_run_shows_the_launch_and_writes_nothing(tmp_path, csv_file):
    code, out = train(*tiny("--gpus", "2", "--max-steps", "7", "--dry-run", csv_file=csv_file), runs_dir=tmp_path / "r")
    assert code == 0, out
    result = out["result"]
    assert result["dry_run"] and result["job_ids"] == [] and result["run_id"].split("-")[2] == "train"
    assert result["world_size"] == 2 and result["config"]["max_steps"] == 7 and result["config"]["data"] == str(csv_file)
    argv = result["rendered"]["torchrun"]
    assert "opensora_core.training.run" in argv and "--nproc-per-node" in argv and "--config" in argv
    assert any("RANDOM weights" in w for w in result["warnings"])
    assert not Path(result["run_dir"]).exists()
