"""Golden-file tests of everything a submission renders, including hostile user strings.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/unit/test_render.py``
and review the diff.
"""

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from clusterkit.errors import LaunchError, UserError
from clusterkit.launch.envprofiles import load_profiles
from clusterkit.launch.records import check_runs_root
from clusterkit.launch.render import render_sbatch, render_slurm_params, render_submission, render_torchrun_argv
from clusterkit.launch.spec import LaunchSpec, NodeSlot

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
PYTHON = "/opt/venv/bin/python"
HOSTILE = "it's \"quoted\" $(touch /tmp/pwned) `id`; rm -rf / && echo ☃ 日本 \\ $HOME"
HOSTILE_DIR = Path("/shared/my runs/it's $(touch pwned) `id`; ☃/20261122-000000-collective-abcd")


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(ROOT / "env" / "nccl.yaml")


def two_node_spec(**overrides) -> LaunchSpec:
    fields = dict(
        run_id="20261122-000000-collective-abcd", kind="collective",
        nodes=(NodeSlot("worker-5", "worker-5", 8, partition="gpu"),
               NodeSlot("worker-8", "worker-8", 2, partition="gpu", nccl_env={"NCCL_P2P_DISABLE": "1"})),
        gpus_per_node=2, entry="opensora_core.collective_check",
        args=("--prompt", HOSTILE, "--sizes", "8K,1M", "multi\nline"),
        executor="slurm", base_profile="debug", env={"MY_VAR": HOSTILE, "OTHER": "a\nb"},
    )
    fields.update(overrides)
    return LaunchSpec(**fields)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; if intended, regenerate with UPDATE_GOLDEN=1"


def test_two_node_slurm_golden(profiles):
    rendered = render_submission(two_node_spec(), profiles, HOSTILE_DIR, python=PYTHON)
    check_golden("two_node_slurm.sbatch", rendered["slurm"]["sbatch"])
    check_golden("two_node_slurm.json", json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")


def test_single_node_local_golden(profiles):
    spec = two_node_spec(nodes=(NodeSlot("worker-3", "worker-3", 8),), executor="local", base_profile="default",
                         gpus_per_node=8, args=(), env={})
    rendered = render_submission(spec, profiles, Path("/runs/r"), python=PYTHON)
    assert "slurm" not in rendered
    check_golden("single_node_local.json", json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")


def test_torchrun_argv_shapes():
    single = two_node_spec(nodes=(NodeSlot("worker-3", "worker-3", 8),), gpus_per_node=4)
    argv = render_torchrun_argv(single, Path("/r"), python=PYTHON)
    assert argv[:5] == [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nnodes"]
    assert "--rdzv-endpoint" not in argv
    multi = render_torchrun_argv(two_node_spec(), Path("/r"), python=PYTHON, endpoint="h:20001", rdzv_id="77.0")
    joined = " ".join(multi)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint h:20001 --rdzv-id 77.0" in joined
    assert "--nproc-per-node 2" in joined and "--max-restarts 0" in joined
    # user args are list items, verbatim: no shell ever splits or expands them
    assert multi[-5:] == ["--prompt", HOSTILE, "--sizes", "8K,1M", "multi\nline"]
    with pytest.raises(LaunchError, match="endpoint"):
        render_torchrun_argv(two_node_spec(), Path("/r"), python=PYTHON)


def test_slurm_params():
    params = render_slurm_params(two_node_spec())
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 1
    assert params["gpus_per_node"] == 2 and "gres" not in params
    assert params["nodelist"] == "worker-5,worker-8" and params["partition"] == "gpu"
    typed = two_node_spec(nodes=(NodeSlot("worker-5", "worker-5", 8, gres_type="RTX_A6000"),))
    assert render_slurm_params(typed)["gres"] == "gpu:RTX_A6000:2"  # verbatim: Slurm is case-sensitive


def test_hostile_strings_never_reach_the_job_script(profiles):
    script = render_submission(two_node_spec(), profiles, HOSTILE_DIR, python=PYTHON)["slurm"]["sbatch"]
    assert "pwned) `id`" in script  # the run dir is there, quoted ...
    assert HOSTILE not in script and "MY_VAR" not in script  # ... args and env travel in files


def test_job_script_passes_paths_verbatim_through_bash(tmp_path, profiles):
    """Run the rendered script with bash and a fake srun: the folder must arrive byte-identical."""
    folder = tmp_path / "it's $(touch PWNED) `touch PWNED2`; ☃ dir"
    script = render_sbatch(render_slurm_params(two_node_spec()), folder, python=PYTHON)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_srun = bin_dir / "srun"
    fake_srun.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout.strip().splitlines()[-1])
    assert argv[-1] == str(folder)
    assert argv[-4:-1] == ["-u", "-m", "submitit.core._submit"]
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.parametrize("path", ["/runs/with\nnewline", "/runs/100%done", "/runs/tab\there"])
def test_runs_root_refuses_what_would_break_sbatch(path):
    with pytest.raises(UserError, match="runs directory"):
        check_runs_root(Path(path))


@pytest.mark.parametrize("field, value, message", [
    ("run_id", "bad id; rm", "run id"),
    ("kind", "x\ny", "job kind"),
    ("executor", "kubernetes", "executor 'kubernetes' is not valid"),
    ("gpus_per_node", 3, "more than worker-8 has"),
    ("gpus_per_node", 0, "positive integer"),
    ("entry", "os; rm -rf /", "not a python module"),
    ("nodes", (), "at least one node"),
])
def test_spec_validation(field, value, message):
    with pytest.raises(UserError, match=message):
        two_node_spec(**{field: value})


def test_spec_refuses_mixed_partitions_on_slurm():
    nodes = (NodeSlot("a", "a", 2, partition="p1"), NodeSlot("b", "b", 2, partition="p2"))
    with pytest.raises(UserError, match="different Slurm partitions"):
        two_node_spec(nodes=nodes)
    two_node_spec(nodes=nodes, executor="local")  # fine locally


def test_spec_json_round_trip(tmp_path):
    spec = two_node_spec()
    spec.write(tmp_path / "spec.json")
    assert LaunchSpec.read(tmp_path / "spec.json") == spec
