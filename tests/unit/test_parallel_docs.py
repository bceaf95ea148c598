"""Every command in docs/parallelism.md's first example block runs (as a dry run, with a checkpoint
folder of the official layout and a prompts file), and the documented refusal is the real one."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "parallelism.md"


def _fake_checkpoint(root: Path) -> Path:
    for name in ("dit/config.json", "dit/model.safetensors", "t5/config.json", "t5/model.safetensors",
                 "t5/spiece.model", "vae2d/vae/config.json", "vae3d/config.json", "vae3d/model.safetensors"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    return root


def _run(argv: list[str], runs: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml"),
           "COLUMNS": "100"}
    env.pop("SLURM_CONF", None)
    return subprocess.run([sys.executable, "-m", "clusterkit", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_documented_examples_run_and_the_6_gpu_refusal_reads_as_documented(tmp_path):
    text = DOC.read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("clusterkit ")]
    assert len(commands) == 4
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\na red car\n")
    refused = 0
    for argv in commands:
        argv = [str(ckpt) if a == "CKPT" else a for a in argv[1:]]
        proc = _run([*argv, "--dry-run", "--json"], tmp_path / "runs", tmp_path)
        out = json.loads(proc.stdout)
        if "6" in argv and argv[argv.index("--sp") + 1] == "6":
            refused += 1
            assert proc.returncode == 2 and out["error"]["kind"] == "user_error"
            shown = text.split("$ clusterkit submit infer", 1)[1].split("```", 1)[0]
            error = " ".join(re.search(r"error: (.*?)\nhint:", shown, re.S).group(1).split())
            hint = " ".join(re.search(r"hint: (.*)", shown, re.S).group(1).split())
            assert out["error"]["message"] == error and out["error"]["hint"] == hint
        else:
            assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
            assert out["result"]["dry_run"] is True
    assert refused == 1
    assert not (tmp_path / "runs").exists()
