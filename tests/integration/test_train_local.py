"""``clusterkit train`` end to end on the local executor: real torchrun with two gloo ranks on CPU, the
tiny preset, small videos written with PyAV. A run killed at a random step, or in the middle of a
checkpoint write, and resumed with ``clusterkit train --resume`` ends bitwise equal to a run that
was never interrupted: losses, weights, EMA, optimizer state, sampler and LR schedule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from train_testing import (assert_identical, final_state, losses, make_cli, sigkill_local_job, tiny_args,
                           tiny_dataset, wait_for_step)

pytestmark = pytest.mark.integration

STEPS = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A runs folder, a dataset and the uninterrupted zero2 baseline of STEPS steps."""
    root = tmp_path_factory.mktemp("train")
    cli = make_cli(root / "runs")
    csv = tiny_dataset(root / "data")
    code, out, err = cli(*tiny_args(csv, STEPS), "--executor", "local", "--wait")
    assert code == 0, (out, err)
    return {"root": root, "cli": cli, "csv": csv, "baseline": out["result"]}


def test_baseline_reports_steps_checkpoints_and_skipped_files(world):
    result = world["baseline"]
    assert result["state"] == "COMPLETED" and result["step"] == STEPS and result["stopped"] == "max_steps"
    assert {"run_id", "run_dir", "job_ids"} <= set(result) and result["job_ids"][0].startswith("local-")
    run_dir = Path(result["run_dir"])
    # ckpt_every 3 and the end; keep_last 2 keeps the newest two
    assert [Path(p).name for p in result["checkpoints"]] == ["step-9", "step-10"]
    assert all(Path(p).is_dir() for p in result["checkpoints"])
    assert [s for s, _ in losses(run_dir)] == list(range(1, STEPS + 1))
    skipped = {Path(path).name: why for _, path, why in result["data"]["skipped"]}
    assert set(skipped) == {"corrupt_000.mp4", "missing_000.mp4"}  # skipped and counted, never a crash
    log = (run_dir / "logs" / "rank-000.log").read_text()
    assert "8/10 rows usable" in log and "skipped 2" in log and "samples/s" in log and "GiB" in log
    export = Path(result["export"])
    assert (export / "dit" / "model.safetensors").is_file() and (export / "t5").is_dir()


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(world, tmp_path):
    cli, csv = world["cli"], world["csv"]
    seed = random.randrange(10**6)
    # any step once the first checkpoint (step 3) is safely written; the kill lands wherever the job
    # is then: a forward, a backward, the data loader, or a later save
    kill_at = random.Random(seed).randint(4, STEPS - 1)
    print(f"killing at step {kill_at} (seed {seed})")
    code, out, err = cli(*tiny_args(csv, STEPS), "--executor", "local")
    assert code == 0, (out, err)
    victim = Path(out["result"]["run_dir"])
    wait_for_step(victim, kill_at)
    assert sigkill_local_job(victim)
    code, out, _ = cli("status", out["result"]["run_id"])
    assert out["result"]["runs"][0]["state"] == "FAILED"

    code, out, err = cli("train", "--resume", "--executor", "local", "--wait")  # the newest run, its newest checkpoint
    assert code == 0, (out, err)
    resumed = out["result"]
    assert resumed["step"] == STEPS and resumed["resume"]["run_dir"] == str(victim)
    assert resumed["resume"]["step"] in (3, 6, 9) and resumed["resume"]["step"] <= kill_at
    baseline_dir, resumed_dir = Path(world["baseline"]["run_dir"]), Path(resumed["run_dir"])
    assert losses(resumed_dir) == losses(baseline_dir)  # every step's loss, bit for bit
    assert_identical(final_state(resumed_dir / "checkpoints" / f"step-{STEPS}", tmp_path),
                     final_state(baseline_dir / "checkpoints" / f"step-{STEPS}", tmp_path))


def test_killed_during_a_checkpoint_write_then_resumed_with_ddp(world, tmp_path):
    cli, csv = world["cli"], world["csv"]
    steps = 8
    code, out, err = cli(*tiny_args(csv, steps, "--plugin", "ddp"), "--executor", "local", "--wait")
    assert code == 0, (out, err)
    baseline = Path(out["result"]["run_dir"])
    # rank 0 SIGKILLs itself half-way through writing step 6: torchrun then stops rank 1
    code, out, err = cli(*tiny_args(csv, steps, "--plugin", "ddp", "--fault", "kill-in-save@6"),
                         "--executor", "local", "--wait")
    assert code == 1, (out, err)
    victim = next(p for p in (world["root"] / "runs").iterdir() if p.name == out["error"]["message"].split()[1])
    checkpoints = sorted(p.name for p in (victim / "checkpoints").iterdir())
    assert checkpoints == [".step-6.tmp-0", "step-3"]  # half a save, never published
    assert "fault injection: SIGKILL during the save of step 6" in (victim / "logs" / "rank-000.log").read_text()

    code, out, err = cli("train", "--resume", victim.name, "--executor", "local", "--wait")
    assert code == 0, (out, err)
    resumed = out["result"]
    assert resumed["resume"]["step"] == 3 and any("never finished" in n for n in resumed["notes"])
    assert losses(Path(resumed["run_dir"])) == losses(baseline)
    assert_identical(final_state(Path(resumed["run_dir"]) / "checkpoints" / f"step-{steps}", tmp_path),
                     final_state(baseline / "checkpoints" / f"step-{steps}", tmp_path))


def test_resume_on_one_rank_needs_allow_dp_change_and_then_restarts_the_epoch(world):
    cli = world["cli"]
    baseline = world["baseline"]
    step_dir = Path(baseline["run_dir"]) / "checkpoints" / "step-9"
    code, out, _ = cli("train", "--resume", str(step_dir), "--gpus", "1", "--executor", "local")
    assert code == 2 and "--allow-dp-change" in out["error"]["hint"]
    code, out, err = cli("train", "--resume", str(step_dir), "--gpus", "1", "--allow-dp-change", "--max-steps", "11",
                         "--executor", "local", "--wait")
    assert code == 0, (out, err)
    result = out["result"]
    assert result["world_size"] == 1 and result["step"] == 11
    assert any("DATA-PARALLEL SIZE CHANGED 2 -> 1" in n for n in result["job_notes"])
    log = (Path(result["run_dir"]) / "logs" / "rank-000.log").read_text()
    assert "WARNING: DATA-PARALLEL SIZE CHANGED" in log


def test_runs_plot_and_attempts(world):
    cli = world["cli"]
    run_id = world["baseline"]["run_id"]
    code, out, err = cli("runs", "plot", run_id)
    assert code == 0, (out, err)
    png = Path(out["result"]["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["result"]["steps"] == STEPS
    code, out, _ = cli("runs")
    [run] = [r for r in out["result"]["runs"] if r["run_id"] == run_id]
    assert [a["attempt"] for a in run["attempts"]] == [0] and run["attempts"][0]["exit_codes"] == {"worker-1": 0}


def test_short_videos_and_lying_metadata(world, tmp_path):
    from opensora_core.training.synthetic import write_synthetic_dataset

    cli = world["cli"]
    short = write_synthetic_dataset(tmp_path / "short", videos=3, frames=12)
    code, out, err = cli("train", "--config", "train-tiny", "--data", str(short), "--gpus", "2", "--executor", "local",
                         "--wait")
    assert code == 2, (out, err)
    message = out["error"]["message"]
    assert "no batch can be made" in message and "3 too short (the smallest video bucket needs more than 17 frames)" \
        in message
    # a CSV whose files are all missing: nothing to train on, said before any model is built
    gone = tmp_path / "gone.csv"
    gone.write_text("path,text\nnope_1.mp4,a\nnope_2.mp4,b\n")
    code, out, err = cli("train", "--config", "train-tiny", "--data", str(gone), "--executor", "local", "--wait")
    assert code == 2, (out, err)
    assert "no usable sample" in out["error"]["message"] and "nope_1.mp4: file does not exist" in \
        out["error"]["message"]
    # a CSV that claims 48 frames for a 12-frame file: that sample is skipped at decode time, training goes on
    mixed = write_synthetic_dataset(tmp_path / "mixed", videos=4, frames=24, metadata=True)
    rows = mixed.read_text().splitlines()
    from opensora_core.inference.video_io import write_video
    from opensora_core.training.synthetic import pattern

    write_video(mixed.parent / "video_000.mp4", pattern(12, 144, 256, 0))
    mixed.write_text("\n".join(rows) + "\n")
    code, out, err = cli("train", "--config", "train-tiny", "--data", str(mixed), "--gpus", "2", "--max-steps", "4",
                         "--executor", "local", "--wait")
    assert code == 0, (out, err)
    assert out["result"]["bad_samples"] >= 1 and out["result"]["step"] == 4
    logs = "".join(p.read_text() for p in (Path(out["result"]["run_dir"]) / "logs").glob("rank-*.log"))
    assert "skipped a sample" in logs and "has 12 frames but the window needs frame" in logs
