import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def project(runs_dir):
    from clusterkit.project import Project

    return Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(runs_dir)})


@pytest.fixture
def cli(runs_dir):
    """Run the real `clusterkit` CLI in a subprocess; returns (exit code, parsed JSON or text, stderr)."""

    def run(*args, timeout=300, expect_json=True):
        env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
        argv = [sys.executable, "-m", "clusterkit", *args]
        if expect_json and "--json" not in args:
            argv.append("--json")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        out = json.loads(proc.stdout) if expect_json and proc.stdout.strip() else proc.stdout
        return proc.returncode, out, proc.stderr

    return run
