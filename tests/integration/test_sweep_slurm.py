"""A prompt sweep through the real Slurm test cluster: 12 prompts over three simulated nodes (the
tiny preset on CPU), one node's job killed mid-way, and the same command run again makes exactly
the missing videos; a partial video file is never counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clusterkit.launch import runs
from infer_testing import decode, write_prompts

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

NODES = ["worker-5", "worker-6", "worker-7"]
PROMPTS = [f"a lighthouse in a storm, shot {i}" for i in range(12)]


def _sweep_args(prompts: Path, output: Path) -> list[str]:
    return ["submit", "infer", "--model", "tiny", "--frames", "2s", "--res", "144p", "--steps", "8",
            "--prompts-file", str(prompts), "--nodes", ",".join(NODES), "--output", str(output)]


def _records(output: Path) -> set[str]:
    folder = output / "records"
    return {p.name.removesuffix(".json") for p in folder.glob("*.json")} if folder.is_dir() else set()


def test_sweep_over_three_nodes_resumes_after_a_killed_job(slurm_cluster, cli, project, tmp_path):
    prompts, output = write_prompts(tmp_path, PROMPTS), tmp_path / "videos"
    code, out, err = cli(*_sweep_args(prompts, output), timeout=300)  # no --wait: submit and return
    assert code == 0, (out, err)
    first = out["result"]
    assert first["to_make"] == 12 and {r["node"] for r in first["runs"]} == set(NODES)
    assert all(r["executor"] == "slurm" and r["job_ids"][0].isdigit() for r in first["runs"])
    shares = {r["node"]: set(r["videos"]) for r in first["runs"]}
    assert sum(len(v) for v in shares.values()) == 12 and all(len(v) >= 2 for v in shares.values())

    victim = next(r for r in first["runs"] if r["node"] == "worker-6")
    deadline = time.monotonic() + 400
    while not (_records(output) & shares["worker-6"]):  # kill worker-6's job once it finished a video
        assert time.monotonic() < deadline, "worker-6 made no video in time"
        time.sleep(0.2)
    code, out, err = cli("cancel", victim["run_id"])
    assert code == 0, (out, err)
    for run in first["runs"]:
        record = runs.wait(project, run["run_id"], timeout=400)
        assert record.state == ("CANCELLED" if run is victim else "COMPLETED"), (run, record.state)

    made = _records(output)
    lost = shares["worker-6"] - made
    assert made | lost == {f"{first['sweep']}_{i:04d}.mp4" for i in range(12)}
    assert 1 <= len(shares["worker-6"] & made) and lost, "the killed job must have left videos undone"
    before = {name: (output / name).stat() for name in made}
    # a partial file under a missing video's name (say, copied by hand): it has no record, so it does not count
    partial = sorted(lost)[0]
    (output / partial).write_bytes((output / sorted(made)[0]).read_bytes()[:2000])

    code, out, err = cli(*_sweep_args(prompts, output), "--wait", timeout=600)  # the same command again
    assert code == 0, (out, err)
    again = out["result"]
    assert again["sweep"] == first["sweep"] and again["already_done"] == len(made) and again["to_make"] == len(lost)
    assert {v for r in again["runs"] for v in r["videos"]} == lost  # exactly the missing ones
    assert again["done"] == again["expected"] == 12 and again["missing"] == []
    for name, stat in before.items():  # nothing made twice: finished files were not touched
        now = (output / name).stat()
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size), name
    assert decode(output / partial).shape == (51, 144, 256, 3)  # the partial file was replaced by a whole video

    index = json.loads((output / "index.json").read_text())
    assert index["done"] == 12 and [v["prompt_index"] for v in index["videos"]] == list(range(12))
    for video in index["videos"]:
        assert video["prompt"] == PROMPTS[video["prompt_index"]] and video["node"] in NODES
        assert video["layout"]["world_size"] == 1 and video["seconds"] > 0 and video["seed"] > 0
        assert (output / video["file"]).stat().st_size == video["bytes"]
    assert {v["node"] for v in index["videos"] if v["file"] in lost} <= set(NODES)

    code, out, err = cli(*_sweep_args(prompts, output), timeout=120)  # a third time: nothing to do
    assert code == 0 and out["result"]["to_make"] == 0 and out["result"]["runs"] == []
