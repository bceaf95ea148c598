"""``clusterkit submit infer`` before anything runs: settings from the planner (or tiny's fixed
ones), refusal of layouts the planner rejects unless --force, every bad input refused before
anything is written, prompts travelling as files, and no torch on the submit path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.errors import InvalidChoice, NotFound, UserError
from clusterkit.planner import PlanRequest, choose, plan
from clusterkit.project import Project
from clusterkit.submit import submit_infer
from opensora_core.errors import CheckpointNotFound, LayoutError

ROOT = Path(__file__).resolve().parents[2]
README_ARGS = dict(model="tiny", frames="2s", resolution="144p", aspect_ratio="9:16",
                   prompts=("a beautiful waterfall",), executor="local")


@pytest.fixture()
def project(tmp_path):
    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})


@pytest.fixture()
def ckpt_dir(tmp_path):
    """A checkpoint folder with the official layout (empty files: submit only checks names)."""
    root = tmp_path / "ckpt"
    for name in ("dit/config.json", "dit/model.safetensors", "t5/config.json", "t5/model.safetensors",
                 "t5/spiece.model", "vae2d/vae/config.json", "vae3d/config.json", "vae3d/model.safetensors"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    return root


def test_tiny_dry_run(project):
    result = submit_infer(project, **README_ARGS, dry_run=True)
    assert result["dry_run"] and result["job_ids"] == [] and not project.runs_dir.exists()
    assert result["random_weights"] and "RANDOM weights" in result["warnings"][0]
    assert result["settings"]["dtype"] == "fp32" and result["settings"]["t5_dtype"] == "fp32"
    assert result["plan"] is None and "tiny runs fp32" in result["notes"][0]
    # tiny goes where the planner would put the full model, but is never blocked by it
    best = plan(project.inventory, PlanRequest(resolution="144p", frames="2s", gpus=1, sp=1, cfg_parallel=False))
    assert result["node"] == choose(best).name
    run_id = result["run_id"]
    assert result["expected_outputs"] == [str(project.runs_dir / run_id / "outputs" / f"{run_id}_0000.mp4")]
    argv = result["rendered"]["torchrun"]
    assert argv[argv.index("opensora_core.inference.run") + 1:] == [
        "--request", str(project.runs_dir / run_id / "request.json"),
        "--prompts", str(project.runs_dir / run_id / "prompts.json"),
        "--result", str(project.runs_dir / run_id / "result.json"),
    ]
    assert "a beautiful waterfall" not in json.dumps(result["rendered"])  # prompts never on a command line


def test_tiny_is_not_blocked_by_a_plan_no_node_fits(project):
    result = submit_infer(project, **{**README_ARGS, "resolution": "720p", "frames": "16s"}, dry_run=True)
    assert result["node"] == "worker-1" and "no node fits the full-size model" in result["notes"][0]
    assert submit_infer(project, **README_ARGS, node="worker-8", dry_run=True)["node"] == "worker-8"


def test_official_model_takes_node_and_settings_from_the_plan(project, ckpt_dir):
    result = submit_infer(project, model="opensora-v1.2", ckpt_dir=str(ckpt_dir), frames="4s", resolution="720p",
                          prompts=("a cat",), executor="local", dry_run=True)
    expected = choose(plan(project.inventory, PlanRequest(resolution="720p", frames="4s")))
    assert result["node"] == expected.name and result["plan"] == expected.to_dict()
    planned = expected.to_dict()["layout"]  # the planner's layout, e.g. cfg + sp4 on 8 GPUs
    assert {k: result["layout"][k] for k in ("sp", "replicas")} == {"sp": planned["sp"], "replicas": planned["replicas"]}
    assert result["layout"]["cfg"] == (2 if planned["cfg_parallel"] else 1)
    assert result["layout"]["world_size"] == planned["gpus"] > 1
    assert result["rendered"]["world_size"] == planned["gpus"]
    s = result["settings"]
    assert s["dtype"] == expected.to_dict()["dtype"] == "bf16"
    assert s["flash_attn"] is (expected.to_dict()["attention"] == "fused")
    assert s["vae_micro_batch"] == expected.to_dict()["vae_micro_batch"]
    # the job keeps T5 resident exactly where the planner charged its memory beside the DiT
    assert (s["t5_device"], s["t5_dtype"], s["t5_offload"]) == {
        "gpu-bf16": ("gpu", "bf16", False), "gpu-fp32": ("gpu", "fp32", False), "offload": ("gpu", "bf16", True),
    }[expected.to_dict()["t5"]]
    assert not result["random_weights"] and result["warnings"] == []


def test_turing_node_gets_fp16_and_no_flash_attention(project, ckpt_dir):
    result = submit_infer(project, model="opensora-v1.2", ckpt_dir=str(ckpt_dir), frames="2s", resolution="240p",
                          prompts=("a cat",), node="worker-1", executor="local", dry_run=True)
    s = result["settings"]
    assert result["node"] == "worker-1" and s["dtype"] == "fp16" and s["flash_attn"] is False
    assert any("no bf16" in note for note in result["notes"])


def test_a_layout_the_planner_rejects_is_refused_unless_forced(project, ckpt_dir):
    args = dict(model="opensora-v1.2", ckpt_dir=str(ckpt_dir), frames="4s", resolution="720p",
                prompts=("a cat",), node="worker-1", executor="local", dry_run=True, gpus=1)
    # unpinned, the planner splits it over 4 of worker-1's GPUs (cfg + sp2), which fits
    assert submit_infer(project, **{**args, "gpus": None})["layout"]["world_size"] == 4
    with pytest.raises(UserError, match="worker-1 cannot run 720p 9:16 4s") as info:
        submit_infer(project, **args)
    assert "--force runs it anyway" in info.value.hint
    forced = submit_infer(project, **args, force=True)
    assert forced["node"] == "worker-1" and forced["notes"][0].startswith("--force: the planner rejected")
    assert forced["settings"]["dtype"] == "fp16" and forced["layout"]["world_size"] == 1
    with pytest.raises(UserError, match="no node can run 720p 9:16 16s"):
        submit_infer(project, **{**args, "frames": "16s", "node": None})
    assert submit_infer(project, **{**args, "frames": "16s", "node": None}, force=True)["notes"][0].startswith("--force")


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (dict(frames="3s"), InvalidChoice, "--frames '3s' is not valid"),
        (dict(frames="0"), InvalidChoice, "--frames '0' is not valid"),
        (dict(frames="-1"), InvalidChoice, "--frames '-1' is not valid"),
        (dict(resolution="1440p"), InvalidChoice, "--res '1440p' is not valid; valid choices: 144p"),
        (dict(aspect_ratio="16:10"), InvalidChoice, "--aspect-ratio \\(at 144p\\) '16:10' is not valid"),
        (dict(prompts=("",)), UserError, "prompt 0 is empty"),
        (dict(prompts=()), UserError, "no prompt given"),
        (dict(gpus=6, sp=6), LayoutError, "--sp 6 is not valid: .* so --sp must divide 4; valid choices: 1, 2, 4"),
        (dict(gpus=3, sp=2), LayoutError, "--gpus 3 is not a multiple of the group size 2"),
        (dict(gpus=2, sp=2, cfg_parallel=True), LayoutError, "--gpus 2 is not a multiple of the group size 4"),
        (dict(sp_scheme="ring"), LayoutError, "--sp-scheme 'ring' is not valid; valid choices: dsp, ulysses"),
        (dict(gpus=4, node="worker-8"), UserError, "needs 4 GPUs; worker-8 has 2"),
        (dict(node="worker-9"), InvalidChoice, "node 'worker-9' is not valid"),
        (dict(model="opensora-v1.2"), UserError, "--model opensora-v1.2 needs --ckpt-dir"),
        (dict(ckpt_dir="/nonexistent/ckpt"), CheckpointNotFound, "checkpoint folder '/nonexistent/ckpt' does not exist"),
        (dict(prompts_file="/nonexistent/prompts.txt", prompts=()), NotFound, "prompts file"),
        (dict(prompts_file="x.txt"), UserError, "either --prompt .* or --prompts-file, not both"),
        (dict(executor="kubernetes"), InvalidChoice, "valid choices: auto, slurm, local"),
        (dict(steps=0), UserError, "--steps 0"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(project, changes, error, message):
    with pytest.raises(error, match=message):
        submit_infer(project, **{**README_ARGS, **changes})
    assert not project.runs_dir.exists()


def test_missing_checkpoint_components_are_named(project, ckpt_dir):
    (ckpt_dir / "vae3d" / "model.safetensors").unlink()
    import shutil

    shutil.rmtree(ckpt_dir / "t5")
    with pytest.raises(CheckpointNotFound, match="t5/ is missing .*vae3d/ has no weights") as info:
        submit_infer(project, **{**README_ARGS, "model": "opensora-v1.2", "ckpt_dir": str(ckpt_dir)})
    assert "expected layout" in info.value.hint and not project.runs_dir.exists()


class FakeExecutor:
    def submit(self, spec, paths):
        assert (paths.root / "prompts.json").is_file()  # the job's inputs are in place before it starts
        return ["fake-1"]


def test_prompts_and_settings_reach_the_job_as_files(project, tmp_path, monkeypatch):
    from clusterkit.launch import runs

    monkeypatch.setattr(runs, "get_executor", lambda name: FakeExecutor())
    hostile = "it's \"q\" $(touch /tmp/ck-pwned) `id`; ☃"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a beautiful waterfall\n\n{hostile}\n")
    result = submit_infer(project, **{**README_ARGS, "prompts": ()}, prompts_file=str(prompts), seed=7,
                          output=str(tmp_path / "videos"))
    assert result["job_ids"] == ["fake-1"] and result["num_videos"] == 2
    run_dir = Path(result["run_dir"])
    assert json.loads((run_dir / "prompts.json").read_text()) == ["a beautiful waterfall", hostile]
    settings = json.loads((run_dir / "request.json").read_text())
    assert settings["seed"] == 7 and settings["name"] == result["run_id"] and settings["model"] == "tiny"
    assert settings["output_dir"] == str(tmp_path / "videos")
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["entry"] == "opensora_core.inference.run" and spec["gpus_per_node"] == 1
    assert hostile not in json.dumps(spec)
    assert project.registry.get(result["run_id"]).kind == "infer"


def test_launch_refuses_input_files_that_would_overwrite_run_records(project):
    from clusterkit.errors import LaunchError
    from clusterkit.launch import runs
    from clusterkit.launch.spec import LaunchSpec, node_slots

    spec = LaunchSpec(run_id="r1", kind="infer", nodes=node_slots(project.inventory, "worker-5"), gpus_per_node=1,
                      entry="opensora_core.inference.run")
    for name in ("spec.json", "logs", "../x", ".hidden"):
        with pytest.raises(LaunchError, match="job input file name"):
            runs.launch(project, spec, files={name: "{}"})
    assert not project.runs_dir.exists()


def cli(*args, runs_dir):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


README = ["submit", "infer", "--model", "tiny", "--frames", "2s", "--res", "144p", "--aspect-ratio", "9:16",
          "--prompt", "a beautiful waterfall", "--executor", "local"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--frames", "3s"), "--frames '3s' is not valid"),
        (("--frames", "-1"), "--frames '-1' is not valid"),
        (("--res", "145p"), "--res '145p' is not valid"),
        (("--aspect-ratio", "9:15"), "'9:15' is not valid"),
        (("--prompt", ""), "prompt 0 is empty"),
    ],
)
def test_cli_bad_input_exits_2_with_the_message(tmp_path, change, message):
    args = list(README)
    args[args.index(change[0]) + 1] = change[1]
    proc = cli(*args, "--json", runs_dir=tmp_path / "runs")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert not out["ok"] and out["command"] == "submit infer" and message in out["error"]["message"]
    assert not (tmp_path / "runs").exists()


def test_cli_dry_run_says_random_weights_loudly_and_imports_no_torch(tmp_path):
    proc = cli(*README, "--dry-run", runs_dir=tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING:" in proc.stdout and "RANDOM weights" in proc.stdout
    assert "_0000.mp4" in proc.stdout and not (tmp_path / "runs").exists()
    code = (
        "import sys\n"
        "from clusterkit.cli import main\n"
        f"rc = main({[*README, '--dry-run', '--json']!r})\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'av', 'submitit') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs"), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True)


# --- one folder per component (--ckpt-path-dit/-t5/-vae2d/-vae3d) ---

V12_ARGS = dict(model="opensora-v1.2", frames="2s", resolution="240p", prompts=("a cat",), node="worker-1",
                executor="local", dry_run=True)


@pytest.fixture()
def downloads(ckpt_dir, tmp_path):
    """The components of ``ckpt_dir`` moved to folders named as their HuggingFace downloads."""
    import shutil

    names = {"dit": "OpenSora-STDiT-v3", "t5": "t5-v1_1-xxl", "vae2d": "pixart_sigma_sdxlvae_T5_diffusers",
             "vae3d": "OpenSora-VAE-v1.2"}
    (tmp_path / "hf").mkdir()
    return {name: shutil.move(ckpt_dir / name, tmp_path / "hf" / repo) for name, repo in names.items()}


def test_component_folders_reach_the_request_absolute(project, downloads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "hf")
    relative = {name: Path(path).name for name, path in downloads.items()}
    result = submit_infer(project, **V12_ARGS, ckpt_paths=relative)
    assert result["request"]["ckpt_paths"] == {name: str(path) for name, path in downloads.items()}
    assert result["request"]["ckpt_dir"] is None and not result["random_weights"]


def test_a_component_folder_beside_ckpt_dir_is_sent_with_it(project, ckpt_dir, tmp_path):
    import shutil

    t5 = shutil.copytree(ckpt_dir / "t5", tmp_path / "t5-v1_1-xxl")
    result = submit_infer(project, **V12_ARGS, ckpt_dir=str(ckpt_dir), ckpt_paths={"t5": str(t5)})
    assert result["request"]["ckpt_dir"] == str(ckpt_dir) and result["request"]["ckpt_paths"] == {"t5": str(t5)}
    (t5 / "spiece.model").unlink()
    with pytest.raises(CheckpointNotFound, match=r"^--ckpt-path-t5 '.*t5-v1_1-xxl' has no tokenizer"):
        submit_infer(project, **V12_ARGS, ckpt_dir=str(ckpt_dir), ckpt_paths={"t5": str(t5)})
    assert not project.runs_dir.exists()


@pytest.mark.parametrize("model", ["opensora-v1.2", "tiny"])
def test_a_component_without_folder_is_refused_naming_its_option(project, downloads, model):
    partial = {name: str(downloads[name]) for name in ("dit", "t5", "vae3d")}
    with pytest.raises(CheckpointNotFound, match="no folder for the vae2d component: give --ckpt-path-vae2d DIR, "
                                                 "or --ckpt-dir DIR"):
        submit_infer(project, **{**V12_ARGS, "model": model}, ckpt_paths=partial)
    assert not project.runs_dir.exists()


def test_cli_dry_run_shows_the_component_folders(tmp_path, downloads):
    flags = [arg for name, path in downloads.items() for arg in (f"--ckpt-path-{name}", str(path))]
    args = ["submit", "infer", "--model", "opensora-v1.2", "--frames", "2s", "--res", "240p", "--prompt", "a cat",
            "--node", "worker-1", "--executor", "local", "--dry-run", *flags]
    proc = cli(*args, "--json", runs_dir=tmp_path / "runs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    request = json.loads(proc.stdout)["result"]["request"]
    assert request["ckpt_paths"] == {name: str(path) for name, path in downloads.items()}
    proc = cli(*args, runs_dir=tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    shown = "".join(proc.stdout.split())  # rich wraps long paths anywhere
    assert "weights:" + ",".join(f"{name}{path}" for name, path in downloads.items()) in shown
    proc = cli(*args[:-2], "--json", runs_dir=tmp_path / "runs")  # no --ckpt-path-vae3d
    assert proc.returncode == 2 and "--ckpt-path-vae3d" in json.loads(proc.stdout)["error"]["message"]


def test_loop_clips_are_planned_as_that_many_samplings(project):
    from clusterkit.submit import choose_settings
    from opensora_core.inference.request import InferRequest

    one, three = (choose_settings(project, InferRequest(prompts=("a red ball",), frames="2s", resolution="144p",
                                                        model="tiny", loop=loop), node="worker-5", force=False)
                  for loop in (1, 3))
    assert one.node == three.node == "worker-5"
    assert three.seconds > 2 * one.seconds  # three clips sampled in full, not one
