"""``clusterkit submit infer`` end to end on the local executor: real torchrun, the tiny preset on
CPU, real h264 files decoded with PyAV, and checkpoint errors reported from the job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infer_testing import README_JOB, THREE_PROMPTS, check_readme_result, decode, write_prompts

pytestmark = pytest.mark.integration


def test_readme_job_writes_a_51_frame_144x256_mp4(cli):
    code, out, err = cli(*README_JOB, "--executor", "local", timeout=600)
    assert code == 0, (out, err)
    result = check_readme_result(out)
    assert result["executor"] == "local" and result["job_ids"][0].startswith("local-")
    index = json.loads(Path(result["index"]).read_text())
    [video] = index["videos"]
    assert video["prompt"] == "a beautiful waterfall" and video["seed"] == result["videos"][0]["seed"]
    assert index["random_weights"] is True and index["seed"] == 42


def test_three_prompts_three_videos_and_no_prompt_ghosting(cli, tmp_path):
    code, text, err = cli(*README_JOB, "--executor", "local", timeout=600, expect_json=False)
    assert code == 0, err
    assert "RANDOM weights" in text
    [alone] = [line for line in text.splitlines() if line.endswith("_0000.mp4")]  # --wait prints the paths
    prompts = write_prompts(tmp_path, THREE_PROMPTS)
    args = [a for a in README_JOB if a not in ("--prompt", "a beautiful waterfall")]
    code, out, err = cli(*args, "--prompts-file", str(prompts), "--executor", "local",
                         "--output", str(tmp_path / "videos"), timeout=600)
    assert code == 0, (out, err)
    outputs = out["result"]["outputs"]
    run_id = out["result"]["run_id"]
    assert [Path(p).name for p in outputs] == [f"{run_id}_{i:04d}.mp4" for i in range(3)]
    assert all(Path(p).parent == tmp_path / "videos" for p in outputs)
    frames = [decode(p) for p in outputs]
    assert all(f.shape == (51, 144, 256, 3) for f in frames)
    # the waterfall came second this time, after another prompt: the same video, frame for frame
    assert np.array_equal(frames[1], decode(alone))
    assert not np.array_equal(frames[0], frames[1])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from opensora_core.inference.models import save_random_checkpoint
    from opensora_core.presets import TINY

    return save_random_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), TINY)


@pytest.mark.parametrize("damage", ["wrong shape", "corrupt"])
def test_checkpoint_errors_come_back_typed_before_any_compute(cli, runs_dir, tiny_ckpt, tmp_path, damage):
    import shutil

    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    if damage == "wrong shape":  # tiny weights for the full-size model
        model, expected = "opensora-v1.2", "first mismatching key 'rope.freqs'"
    else:
        weights = ckpt / "vae3d" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4096])
        model, expected = "tiny", "vae3d/model.safetensors (corrupt"
    args = [model if a == "tiny" else a for a in README_JOB]
    code, out, err = cli(*args, "--ckpt-dir", str(ckpt), "--executor", "local", timeout=600)
    assert code == 2, (out, err)
    assert out["error"]["kind"] == "user_error"
    assert "stopped before generating" in out["error"]["message"] and expected in out["error"]["message"]
    [run_dir] = runs_dir.glob("*-infer-*")
    log = (run_dir / "logs" / "rank-000.log").read_text()
    assert expected in log and "step 1/30" not in log and not (run_dir / "outputs").exists()
