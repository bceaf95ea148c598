"""``clusterkit submit infer`` with parallel layouts on the local executor (real torchrun, gloo, the tiny
preset on CPU): every layout writes the same videos as one process, frame for frame.

The image table's 144 x 432 size ("--res 256 --aspect-ratio 0.33") has 9 x 27 = 243 tokens per
frame, which 2 and 4 ranks do not divide (padded to 244, and masked); DSP also pads 15 latent
frames to 16. The decode is shared by the ranks of a group and the text is encoded once per
group, so these runs exercise every parallel path of the pipeline; the pixel digests in the
index and the decoded mp4 frames must equal the one-process run's. (Both sides are multiples of
16 on purpose: libx264 fed a width that is not, such as 240p's 424, writes files that differ
from run to run for the same pixels, parallel or not; the pixel digests still agree there.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ck_testing import ROOT
from infer_testing import decode

pytestmark = pytest.mark.integration

PROMPTS = ["a cat on a sofa", "a red car at night"]
#: One intra-op thread everywhere: torchrun already sets it for several ranks per node, and CPU
#: kernels round differently with another thread count (the same one-process run does too).
BASE = ["submit", "infer", "--model", "tiny", "--frames", "2s", "--res", "256", "--aspect-ratio", "0.33",
        "--steps", "3", "--node", "worker-5",
        "--executor", "local", "--wait", "--env", "OMP_NUM_THREADS=1",
        *[arg for p in PROMPTS for arg in ("--prompt", p)]]
LAYOUTS = {  # name: (flags, expected layout (world, replicas, cfg, sp, scheme))
    "sp2": (["--gpus", "2", "--sp", "2"], (2, 1, 1, 2, "dsp")),
    "sp4-padded-ulysses": (["--gpus", "4", "--sp", "4", "--sp-scheme", "ulysses"], (4, 1, 1, 4, "ulysses")),
    "cfg2": (["--gpus", "2", "--cfg-parallel"], (2, 1, 2, 1, "dsp")),
    "cfg2-x-sp2": (["--gpus", "4", "--sp", "2", "--cfg-parallel"], (4, 1, 2, 2, "dsp")),
    "2-replicas": (["--gpus", "2"], (2, 2, 1, 1, "dsp")),
}


def _run(cli, flags, output: Path) -> dict:
    code, out, err = cli(*BASE, *flags, "--output", str(output), timeout=900)
    assert code == 0, (out, err)
    return out["result"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-GPU run (module-scoped: the ``cli`` fixture is per test, so the CLI is run here)."""
    folder = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(folder / "runs"), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *BASE, "--gpus", "1", "--output", str(folder / "out"),
                           "--json"], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["result"]
    return {v["prompt_index"]: v for v in result["videos"]}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_writes_the_one_process_videos_frame_for_frame(cli, tmp_path, reference, name):
    flags, (world, replicas, cfg, sp, scheme) = LAYOUTS[name]
    result = _run(cli, flags, tmp_path / name)
    layout = result["layout"]
    assert (layout["world_size"], layout["replicas"], layout["cfg"], layout["sp"], layout["sp_scheme"]) == (
        world, replicas, cfg, sp, scheme)
    videos = {v["prompt_index"]: v for v in result["videos"]}
    assert sorted(videos) == [0, 1]
    for index, video in videos.items():
        ref = reference[index]
        assert video["seed"] == ref["seed"] and video["layout"]["world_size"] == world
        assert video["pixels_sha256"] == ref["pixels_sha256"], (name, index)
        frames, ref_frames = decode(video["path"]), decode(ref["path"])
        assert frames.shape == ref_frames.shape == (51, 144, 432, 3)
        assert np.array_equal(frames, ref_frames), (name, index)
    if replicas > 1:  # each replica group made one of the two videos
        assert sorted(v["replica"] for v in videos.values()) == [0, 1]
    run_dir = Path(result["run_dir"])
    report = json.loads((run_dir / "result.json").read_text())
    sent = report["communication"]["bytes"]
    if sp > 1:
        assert sent["attention"] > 0 and sent["gather"] > 0
    if cfg > 1:
        assert sent["cfg"] > 0
    if replicas == 1:
        assert sent["text"] > 0 and sent["decode"] > 0  # text broadcast and the shared decode
    else:
        assert "attention" not in sent and "cfg" not in sent
    logs = sorted((run_dir / "logs").glob("rank-*.log"))
    assert len(logs) == world
    # only the first rank of each group loads T5 and writes videos
    writers = [log for log in logs if "(writes its videos)" in log.read_text()]
    assert len(writers) == replicas
