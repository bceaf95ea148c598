"""Every worked example of docs/inference-modes.md is a test: its command goes through the real CLI
(``--dry-run --json``: every check of the submit host, references opened) and the request it
would send is checked against what the doc promises (``infer_testing.check_mode``). The same
commands run as written, on the tiny model through the local executor, in
tests/integration/test_inference_modes_local.py; the sampling itself (fixed frames, loops,
edit ratios) is tested in test_inference_conditioning.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opensora_core.inference.request import InferRequest

ROOT = Path(__file__).resolve().parents[3]


def _infer_testing():
    spec = importlib.util.spec_from_file_location("infer_testing", ROOT / "tests" / "integration" / "infer_testing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


testing = _infer_testing()
EXAMPLES = testing.mode_examples()


def test_every_mode_has_one_example():
    assert sorted(EXAMPLES) == sorted(testing.MODES)


@pytest.mark.parametrize("mode", testing.MODES)
def test_doc_example_request(mode, tmp_path):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs"),
           "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *EXAMPLES[mode], "--dry-run", "--json"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["ok"], out.get("error") or proc.stderr
    request = InferRequest.from_dict(out["result"]["request"])
    assert [Path(p).name for p in out["result"]["expected_outputs"]] == [v.filename for v in request.videos()]
    testing.check_mode(mode, request)


def test_doc_says_what_its_tests_run():
    """The doc's sentence about these tests: this file runs the commands with --dry-run --json (no
    video is made), the integration file runs them as written; both files exist."""
    text = " ".join((ROOT / "docs" / "inference-modes.md").read_text().split())
    unit = "tests/unit/opensora/test_inference_modes_doc.py"
    integration = "tests/integration/test_inference_modes_local.py"
    assert f"`{unit}` runs each command with `--dry-run --json`" in text
    assert f"`{integration}` runs each command as written, on the tiny model" in text
    assert (ROOT / unit).is_file() and (ROOT / integration).is_file()
    assert "runs each command's request on the tiny model" not in text
