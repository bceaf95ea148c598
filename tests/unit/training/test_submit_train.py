"""``submit_train`` before anything runs: the planner's node and GPU count for the full model, its
refusals, the checkpoint folder's layout, multi-node jobs and the preset's requeue settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.errors import UserError
from clusterkit.project import Project
from clusterkit.train import submit_train
from opensora_core.errors import CheckpointNotFound

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


@pytest.fixture()
def inputs(tmp_path):
    """A data CSV and a checkpoint folder with the official layout (names only: nothing is loaded)."""
    csv = tmp_path / "data.csv"
    csv.write_text("path,text\nclip.mp4,a clip\n")
    root = tmp_path / "ckpt"
    for name in ("dit/config.json", "dit/model.safetensors", "t5/config.json", "t5/model.safetensors",
                 "t5/spiece.model", "vae2d/vae/config.json", "vae3d/config.json", "vae3d/model.safetensors"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    return {"data": str(csv), "ckpt_dir": str(root)}


def test_full_model_takes_node_and_gpus_from_the_plan(project, inputs):
    result = submit_train(project, config="train-stage3", overrides=inputs, executor="local", dry_run=True)
    assert result["plan"] is not None and result["plan"]["feasible"]
    assert result["nodes"] == [result["plan"]["name"]]
    assert result["gpus_per_node"] == result["plan"]["layout"]["gpus"]
    assert result["world_size"] == result["gpus_per_node"]
    assert "planned for the largest bucket, 512 x 408 frames" in result["notes"][0]
    assert result["config"]["init"] == "pretrained" and result["warnings"] == []
    assert not project.runs_dir.exists()


def test_bf16_training_is_refused_on_a_gpu_without_bf16(project, inputs):
    with pytest.raises(UserError) as err:  # worker-1: Quadro RTX 8000 (Turing)
        submit_train(project, config="train-stage1", overrides=inputs, node="worker-1", executor="local",
                     dry_run=True)
    assert "no bf16" in err.value.message and "--force" in err.value.hint


def test_checkpoint_folder_layout_is_checked_before_launch(project, inputs):
    Path(inputs["ckpt_dir"], "vae3d", "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFound, match="vae3d/ has no weights"):
        submit_train(project, config="train-stage2", overrides=inputs, executor="local", dry_run=True)


def test_multi_node_and_the_presets_slurm_settings(project, inputs):
    result = submit_train(project, config="jobs/train-stage1.yaml", overrides=inputs, nodes="worker-5,worker-6",
                          gpus=4, executor="slurm", dry_run=True)
    assert result["nodes"] == ["worker-5", "worker-6"] and result["world_size"] == 8
    sbatch = result["rendered"]["slurm"]["sbatch"]
    assert "#SBATCH --signal=USR2@600" in sbatch and "#SBATCH --time=1440" in sbatch and "#SBATCH --nodes=2" in sbatch
    assert "--rdzv-backend" in result["rendered"]["torchrun"]


def test_tiny_goes_to_the_named_or_first_node_with_one_rank(project, inputs):
    result = submit_train(project, config="tiny", overrides={"data": inputs["data"]}, executor="local", dry_run=True)
    assert result["nodes"] == ["worker-1"] and result["gpus_per_node"] == 1 and result["plan"] is None
    result = submit_train(project, config="tiny", overrides={"data": inputs["data"]}, node="worker-8", gpus=2,
                          executor="local", dry_run=True)
    assert result["nodes"] == ["worker-8"] and result["world_size"] == 2
