"""Prompt sweeps before anything runs: the proportional split, the sweep's identity, completion
records (partial files never count), and resume/refusal logic with a fake executor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from clusterkit.errors import UserError
from clusterkit.project import Project
from clusterkit.sweep import Group, split_videos, submit_sweep, sweep_id
from opensora_core.errors import LayoutError
from opensora_core.inference import records
from opensora_core.inference.request import InferRequest

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = tuple(f"prompt {i}" for i in range(12))
ARGS = dict(model="tiny", frames="2s", resolution="144p", prompts=PROMPTS, executor="local", steps=3)


@pytest.fixture()
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


@pytest.mark.parametrize("groups, videos, expected", [
    ([("a", 1.0), ("b", 1.0), ("c", 1.0)], 12, {"a": 4, "b": 4, "c": 4}),
    ([("a", 1.0), ("b", 2.0), ("c", 4.0)], 14, {"a": 8, "b": 4, "c": 2}),  # in proportion to 1/seconds
    ([("a", 1.0), ("a", 1.0), ("b", 1.0)], 9, {"a": 6, "b": 3}),  # a node with two replica groups
    ([("a", 1.0), ("b", 10.0)], 3, {"a": 3}),  # b would finish its first video after a's tenth
    ([("a", 2.0), ("b", 2.0)], 1, {"a": 1}),  # ties go to the earlier group
])
def test_split_is_proportional_to_predicted_throughput(groups, videos, expected):
    shares = split_videos(list(range(videos)), [Group(n, s) for n, s in groups])
    assert {node: len(v) for node, v in shares.items()} == expected
    assert sorted(v for share in shares.values() for v in share) == list(range(videos))  # each video once


def test_split_needs_a_group():
    with pytest.raises(ValueError):
        split_videos([1], [])


def test_sweep_id_depends_on_what_the_videos_look_like_only():
    base = InferRequest(prompts=PROMPTS, frames="2s", resolution="144p", model="tiny")
    same = InferRequest(prompts=PROMPTS, frames="2s", resolution="144p", model="tiny", sp=2, node="worker-5")
    assert sweep_id(base) == sweep_id(same) and sweep_id(base).startswith("sweep-")
    assert sweep_id(base) != sweep_id(InferRequest(**{**base.to_dict(), "seed": 43, "prompts": PROMPTS}))
    assert sweep_id(base) != sweep_id(InferRequest(**{**base.to_dict(), "prompts": PROMPTS[::-1]}))


def _fake_video(folder: Path, name: str, size: int = 1000, *, record: bool = True, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x" * size)
    if record:
        records.write_record(folder / records.RECORDS, {"file": name, "prompt_index": int(name[-8:-4]), "sample": 0,
                                                        "prompt": "p", "seed": 1, "node": "n", **extra})


def test_only_videos_with_an_agreeing_record_count_as_done(tmp_path):
    _fake_video(tmp_path, "s_0000.mp4")  # done
    _fake_video(tmp_path, "s_0001.mp4", record=False)  # a file without a record (killed after the rename)
    _fake_video(tmp_path, "s_0002.mp4")
    (tmp_path / "s_0002.mp4").write_bytes(b"x" * 10)  # overwritten by a partial write: sizes disagree
    _fake_video(tmp_path, "s_0003.mp4")
    (tmp_path / "s_0003.mp4").unlink()  # a record whose file is gone
    (tmp_path / ".s_0004.mp4.tmp").write_bytes(b"partial")  # what a killed writer leaves
    (tmp_path / records.RECORDS / "garbage.json").write_text("{not json")
    assert list(records.completed(tmp_path)) == ["s_0000.mp4"]
    index = records.write_sweep_index(tmp_path)
    assert index["done"] == 1 and index["videos"][0]["file"] == "s_0000.mp4" and index["videos"][0]["bytes"] == 1000


class FakeExecutor:
    """Accepts every job; reports the states it is told."""

    def __init__(self) -> None:
        self.submitted = []
        self.state = "RUNNING"

    def submit(self, spec, paths):
        self.submitted.append((spec, json.loads((paths.root / "request.json").read_text())))
        return [f"fake-{len(self.submitted)}"]

    def states(self, runs):
        return {record.run_id: self.state for record, _ in runs}


@pytest.fixture()
def fake(monkeypatch):
    from clusterkit.launch import runs

    executor = FakeExecutor()
    monkeypatch.setattr(runs, "get_executor", lambda name: executor)
    return executor


def test_dry_run_splits_over_the_nodes_and_writes_nothing(project):
    result = submit_sweep(project, nodes="worker-5,worker-6,worker-7", **ARGS, dry_run=True)
    assert result["to_make"] == 12 and result["already_done"] == 0 and result["skipped"] == {}
    shares = {run["node"]: run["videos"] for run in result["runs"]}
    assert set(shares) == {"worker-5", "worker-6", "worker-7"}
    assert sorted(v for share in shares.values() for v in share) == sorted(
        f"{result['sweep']}_{i:04d}.mp4" for i in range(12))
    assert not project.runs_dir.exists()


def test_a_sweep_submits_one_job_per_node_and_resumes_only_the_missing_videos(project, fake, tmp_path):
    out = tmp_path / "sweep"
    first = submit_sweep(project, nodes="worker-5,worker-6,worker-7", **ARGS, output=str(out))
    assert len(fake.submitted) == 3 and first["to_make"] == 12
    for spec, request in fake.submitted:
        assert spec.nnodes == 1 and spec.gpus_per_node == 1
        assert request["sweep"] == first["sweep"] == request["name"] and request["node"] == spec.node_names[0]
        assert request["output_dir"] == str(out) and request["run_id"] == spec.run_id
    items = sorted(tuple(i) for _, r in fake.submitted for i in r["items"])
    assert items == [(i, 0) for i in range(12)]
    manifest = json.loads((out / records.MANIFEST).read_text())
    assert [r["run_id"] for r in manifest["runs"]] == [r["run_id"] for r in first["runs"]]

    with pytest.raises(UserError, match="still has jobs queued or running"):  # never two jobs on one video
        submit_sweep(project, nodes="worker-5,worker-6,worker-7", **ARGS, output=str(out))

    fake.state = "CANCELLED"  # say worker-6's job was killed after two videos; the others finished
    done = [f"{first['sweep']}_{i:04d}.mp4" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9, 11)]
    for name in done:
        _fake_video(out, name)
    (out / f"{first['sweep']}_0007.mp4").write_bytes(b"half a video, no record")
    again = submit_sweep(project, nodes="worker-5,worker-6,worker-7", **ARGS, output=str(out))
    assert again["already_done"] == 10 and again["to_make"] == 2
    remade = sorted(v for run in again["runs"] for v in run["videos"])
    assert remade == [f"{first['sweep']}_0007.mp4", f"{first['sweep']}_0010.mp4"]
    assert len(fake.submitted) == 3 + len(again["runs"])

    fake.state = "COMPLETED"
    for name in remade:
        _fake_video(out, name)
    last = submit_sweep(project, nodes="worker-5,worker-6,worker-7", **ARGS, output=str(out))
    assert last["to_make"] == 0 and last["runs"] == [] and last["done"] == 12 and last["missing"] == []
    assert json.loads((out / records.INDEX).read_text())["done"] == 12


def test_a_folder_of_another_sweep_or_other_files_is_refused(project, fake, tmp_path):
    out = tmp_path / "sweep"
    submit_sweep(project, nodes="worker-5", **ARGS, output=str(out))
    fake.state = "COMPLETED"
    with pytest.raises(UserError, match="made with other settings \\(seed differ\\)"):
        submit_sweep(project, nodes="worker-5", **{**ARGS, "seed": 7}, output=str(out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no sweep"):
        submit_sweep(project, nodes="worker-5", **ARGS, output=str(other))


def test_sweep_layout_errors_come_first(project):
    with pytest.raises(LayoutError, match="--sp 6 is not valid"):
        submit_sweep(project, nodes="all", **{**ARGS, "model": "opensora-v1.2"}, sp=6, gpus=6)
    result = submit_sweep(project, nodes="worker-5,worker-8", **ARGS, gpus=4, dry_run=True)
    assert "needs 4 GPUs; worker-8 has 2" in result["skipped"]["worker-8"]  # skipped, and said why
    assert {r["node"] for r in result["runs"]} == {"worker-5"}
    with pytest.raises(UserError, match="no node of worker-8 can run this sweep"):
        submit_sweep(project, nodes="worker-8", **ARGS, gpus=4, dry_run=True)


def test_every_node_of_the_sweep_is_accounted_for(project):
    result = submit_sweep(project, nodes="all", **ARGS, gpus=2, dry_run=True)
    used = {run["node"] for run in result["runs"]}
    names = {node.name for node in project.inventory.nodes}
    assert used | set(result["unused"]) | set(result["skipped"]) == names
    assert not used & set(result["unused"])
    # the planner's predictions order the nodes: the slowest (Turing, fp16, unfused) get the fewest videos
    shares = {run["node"]: len(run["videos"]) for run in result["runs"]}
    seconds = {run["node"]: run["seconds_per_video"] for run in result["runs"]}
    fastest, slowest = min(seconds, key=seconds.get), max(seconds, key=seconds.get)
    assert shares[fastest] >= shares[slowest] and sum(shares.values()) == 12


def _component_folders(root: Path) -> dict[str, str]:
    """Four component folders (empty files: the sweep checks names only)."""
    files = {"dit": ("config.json", "model.safetensors"), "t5": ("config.json", "model.safetensors", "spiece.model"),
             "vae2d": ("vae/config.json",), "vae3d": ("config.json", "model.safetensors")}
    for name, names in files.items():
        for file in names:
            (root / name / file).parent.mkdir(parents=True, exist_ok=True)
            (root / name / file).write_text("{}")
    return {name: str(root / name) for name in files}


def test_the_sweep_identity_includes_the_component_folders(project, fake, tmp_path):
    base = InferRequest(prompts=PROMPTS, frames="2s", resolution="144p", model="tiny")
    # a sweep without them keeps the id it had before the options existed
    old_identity = {k: getattr(base, k) for k in ("model", "ckpt_dir", "frames", "resolution", "aspect_ratio", "seed",
                                                  "steps", "cfg_scale", "fps", "num_samples", "aes")}
    digest = hashlib.sha256(json.dumps({**old_identity, "prompts": list(PROMPTS)}, sort_keys=True).encode())
    assert sweep_id(base) == f"sweep-{digest.hexdigest()[:12]}"
    folders = _component_folders(tmp_path / "a")
    other_dit = _component_folders(tmp_path / "b")["dit"]
    first = submit_sweep(project, nodes="worker-5", **ARGS, ckpt_paths=folders, output=str(tmp_path / "out"))
    assert fake.submitted[0][1]["ckpt_paths"] == folders and not first["random_weights"]
    again = submit_sweep(project, nodes="worker-5", **ARGS, ckpt_paths=folders, dry_run=True)
    moved = submit_sweep(project, nodes="worker-5", **ARGS, ckpt_paths={**folders, "dit": other_dit}, dry_run=True)
    assert again["sweep"] == first["sweep"] != moved["sweep"] != sweep_id(base)
    with pytest.raises(UserError, match=r"made with other settings \(.*ckpt_paths differ\)"):
        submit_sweep(project, nodes="worker-5", **ARGS, ckpt_paths={**folders, "dit": other_dit},
                     output=str(tmp_path / "out"))
    # the same folders named either way are the same sweep: --ckpt-dir D == the four D/<name>
    whole = submit_sweep(project, nodes="worker-5", **ARGS, ckpt_dir=str(tmp_path / "a"), dry_run=True)
    assert whole["sweep"] == first["sweep"]
    mixed = submit_sweep(project, nodes="worker-5", **ARGS, ckpt_dir=str(tmp_path / "a"),
                         ckpt_paths={"dit": other_dit}, dry_run=True)
    assert mixed["sweep"] == moved["sweep"]
