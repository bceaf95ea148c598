"""``clusterkit submit infer`` through the real Slurm test cluster: sbatch via submitit, torchrun on
the node, the tiny preset on CPU, h264 files decoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infer_testing import README_JOB, THREE_PROMPTS, check_readme_result, decode, write_prompts

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def test_readme_job_three_prompts_and_no_ghosting_on_slurm(slurm_cluster, cli, tmp_path):
    code, out, err = cli(*README_JOB, timeout=600)  # --executor auto finds the controller
    assert code == 0, (out, err)
    result = check_readme_result(out)
    assert result["executor"] == "slurm" and result["job_ids"][0].isdigit()
    script = (Path(result["run_dir"]) / "submission.sh").read_text()
    assert f"#SBATCH --nodelist={result['node']}" in script and "a beautiful waterfall" not in script
    [alone] = result["outputs"]

    prompts = write_prompts(tmp_path, THREE_PROMPTS)
    args = [a for a in README_JOB if a not in ("--prompt", "a beautiful waterfall")]
    code, out, err = cli(*args, "--prompts-file", str(prompts), "--node", "worker-6", timeout=600)
    assert code == 0, (out, err)
    result = out["result"]
    assert result["executor"] == "slurm" and result["node"] == "worker-6"
    frames = [decode(p) for p in result["outputs"]]
    assert len(frames) == 3 and all(f.shape == (51, 144, 256, 3) for f in frames)
    assert np.array_equal(frames[1], decode(alone))  # same prompt, second in the file, other node
    assert not np.array_equal(frames[0], frames[2])
