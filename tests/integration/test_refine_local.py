"""``clusterkit submit infer --refine http --wait`` end to end on the local executor: the prompts
are refined by a real HTTP endpoint on 127.0.0.1 with an API key from the environment, the job
(real torchrun, tiny model, CPU) encodes the refined prompts, the index records both texts, and
the key appears nowhere: not in any file under the runs directory (run folder, logs, outputs,
registry) and not in the CLI's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_refine import KEY, ChatServer, http_config  # noqa: E402 - the unit tests' real server


@pytest.fixture()
def chat():
    server = ChatServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_refined_run_records_both_prompts_and_never_the_key(chat, tmp_path):
    runs_dir = tmp_path / "runs"
    config = http_config(tmp_path, chat.url())
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml"),
           "REFINE_TEST_KEY": KEY, "COLUMNS": "300"}
    argv = [sys.executable, "-m", "clusterkit", "submit", "infer", "--model", "tiny", "--frames", "1", "--res",
            "144p", "--steps", "2", "--prompt", "a cat", "--prompt", "a dog", "--executor", "local", "--wait",
            "--refine", "http", "--refine-config", str(config)]
    text = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert text.returncode == 0, text.stderr
    assert "0 prompt:  a cat" in text.stdout and "0 refined: A detailed shot of a cat." in text.stdout
    as_json = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)["result"]
    assert result["state"] == "COMPLETED" and len(chat.seen) == 4  # two prompts, two runs
    assert all(seen["auth"] == f"Bearer {KEY}" for seen in chat.seen)

    index = json.loads(Path(result["index"]).read_text())
    assert [(v["prompt"], v["refined_prompt"], v["refiner"]) for v in index["videos"]] == [
        ("a cat", "A detailed shot of a cat.", "http"), ("a dog", "A detailed shot of a dog.", "http")]
    assert index["videos"][0]["encoder_text"].startswith("a detailed shot of a cat.")
    assert [v["refined_prompt"] for v in result["videos"]] == ["A detailed shot of a cat.", "A detailed shot of a dog."]

    files = [p for p in runs_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("rank-") for p in files) and any(p.suffix == ".png" for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaked == []
    for out in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        assert KEY not in out
