"""Checkpoint-and-requeue in the launch layer: spec fields, preset keys, and what the Slurm task does
when SIGUSR2 arrives (wait for the ranks to save, then ask submitit for a requeue)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time

import pytest

from clusterkit.errors import UserError
from clusterkit.jobs import load_preset
from clusterkit.launch.records import read_json
from clusterkit.launch.render import RunPaths, render_slurm_params
from clusterkit.launch.spec import LaunchSpec, NodeSlot

NODE = NodeSlot(name="worker-5", hostname="worker-5", gpu_count=8)


def spec(**changes) -> LaunchSpec:
    return LaunchSpec(**{"run_id": "20260101-000000-train-abcd", "kind": "train", "nodes": (NODE,),
                         "gpus_per_node": 2, "entry": "opensora_core.training.run", **changes})


def test_signal_delay_reaches_sbatch_and_must_fit_the_time_limit():
    assert render_slurm_params(spec())["signal_delay_s"] == 120
    assert render_slurm_params(spec(signal_delay_s=600, time_limit_min=60))["signal_delay_s"] == 600
    with pytest.raises(UserError, match="shorter than the time limit"):
        spec(signal_delay_s=120, time_limit_min=2)
    with pytest.raises(UserError, match="requeue -1"):
        spec(requeue=-1)
    assert LaunchSpec.from_dict(spec(requeue=3).to_dict()).requeue == 3


def test_preset_keys_for_requeue_and_workload_config(tmp_path):
    (tmp_path / "good.yaml").write_text("kind: train\nentry: m.n\nrequeue: 2\nsignal_delay_s: 300\nconfig: {a: 1}\n")
    job = load_preset(tmp_path, "good")
    assert (job.requeue, job.signal_delay_s, job.config) == (2, 300, {"a": 1})
    (tmp_path / "bad.yaml").write_text("kind: train\nentry: m.n\nrequeue: -1\n")
    with pytest.raises(UserError, match="'requeue' must be a non-negative integer"):
        load_preset(tmp_path, "bad")
    (tmp_path / "worse.yaml").write_text("kind: train\nentry: m.n\nconfig: [1, 2]\n")
    with pytest.raises(UserError, match="'config' must be a mapping"):
        load_preset(tmp_path, "worse")


# A stand-in for torchrun: it ignores USR2 and waits for its one "rank", which needs a moment to
# "save" after USR2 and then exits.
FAKE_TORCHRUN = r"""
import signal, subprocess, sys
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
rank = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
saving = []
signal.signal(signal.SIGUSR2, lambda *a: saving.append(1))
while not saving:
    time.sleep(0.05)
time.sleep(0.8)
open(sys.argv[1], "w").write("saved")
''', sys.argv[1]])
sys.exit(rank.wait())
"""


def test_checkpoint_waits_for_the_ranks_then_asks_for_a_requeue(tmp_path, monkeypatch):
    import submitit

    from clusterkit.launch.node import RequeueableNodeTask

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec(requeue=3, time_limit_min=5).write(run_dir / "spec.json")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURMD_NODENAME", "worker-5")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    task = RequeueableNodeTask(str(run_dir))
    assert pickle.loads(pickle.dumps(task)).run_dir == str(run_dir)  # submitit pickles it
    marker = tmp_path / "saved"
    torchrun = subprocess.Popen([sys.executable, "-c", FAKE_TORCHRUN, str(marker)])
    time.sleep(1.0)  # the rank is up and waiting
    task._started(torchrun)
    started = time.monotonic()
    delayed = task.checkpoint()  # forwards USR2 to the rank, waits for torchrun to finish
    assert marker.read_text() == "saved" and time.monotonic() - started >= 0.8
    assert torchrun.wait(timeout=5) == 0
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, RequeueableNodeTask) and delayed.function.run_dir == str(run_dir)
    record = read_json(RunPaths(run_dir).attempt(0, "worker-5"))
    assert record["requeue"] == "the ranks saved and exited" and record["requeued_at"] > 0
