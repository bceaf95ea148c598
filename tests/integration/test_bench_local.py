"""``clusterkit bench infer`` end to end on the local executor: real torchrun, the tiny preset,
warm-up + timed iterations of the real pipeline, the JSON report, and the calibration that a second
``clusterkit plan`` of a local run shows and uses (and a Slurm plan leaves out: the job ran here,
not on the node)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NODE, SAME_GPU_NODE = "worker-5", "worker-6"  # both rtx-a6000 in nodes.yaml
BENCH = ["bench", "infer", "--node", NODE, "--model", "tiny", "--res", "144p", "--frames", "17", "--steps", "4",
         "--warmup", "1", "--eval", "2", "--executor", "local"]
STAGES = ("text_encoding", "denoising", "decode", "write")
REPORT_KEYS = {"schema", "run_id", "node", "host", "executor", "request", "layout", "iterations", "load_s", "stages",
               "memory", "gpu", "versions", "timestamps", "outputs", "calibration"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One bench run shared by the tests below: (CLI JSON result, report dict, cli runner, tmp folder)."""
    import os
    import subprocess
    import sys

    from ck_testing import ROOT

    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp / "runs"), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml"),
           "COLUMNS": "200"}
    env.pop("SLURM_CONF", None)

    def cli(*args, expect_json=True):
        argv = [sys.executable, "-m", "clusterkit", *args] + (["--json"] if expect_json else [])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        return proc.returncode, json.loads(proc.stdout) if expect_json else proc.stdout, proc.stderr

    code, out, err = cli(*BENCH, "--report", str(tmp / "out" / "report.json"))
    assert code == 0, (out, err)
    result = out["result"]
    report = json.loads(Path(result["report"]).read_text())
    return result, report, cli, tmp


def _check_stats(stat: dict, count: int) -> None:
    assert len(stat["values"]) == count
    assert all(v > 0 for v in stat["values"])
    assert stat["min"] == min(stat["values"]) and stat["max"] == max(stat["values"])
    assert stat["min"] <= stat["mean"] <= stat["max"]
    assert stat["mean"] == pytest.approx(sum(stat["values"]) / count, abs=1e-6)


def test_bench_writes_a_report_with_every_field(bench):
    result, report, _, tmp = bench
    assert result["state"] == "COMPLETED" and result["executor"] == "local" and result["node"] == NODE
    assert result["report"] == str(tmp / "out" / "report.json")
    in_run = Path(result["run_dir"]) / "bench-report.json"
    assert result["report_paths"] == [str(in_run), result["report"]]
    assert json.loads(in_run.read_text()) == report  # the same report in the run folder
    for path in (in_run, Path(result["report"])):  # shareable like every output, not mkstemp's 0600
        assert path.stat().st_mode & 0o044 == 0o044

    assert set(report) == REPORT_KEYS
    assert report["schema"] == "clusterkit/bench-infer/v1" and report["run_id"] == result["run_id"]
    assert report["node"] == NODE and report["executor"] == "local" and report["host"]
    asked = report["request"]
    assert (asked["model"], asked["resolution"], asked["frames"], asked["steps"]) == ("tiny", "144p", "17", 4)
    assert (asked["num_frames"], asked["height"], asked["width"]) == (17, 144, 256)
    assert asked["random_weights"] is True and asked["dtype"] == "fp32"
    assert asked["video_tokens"] > 0 and "tokens" not in asked
    assert report["layout"]["world_size"] == 1 and report["layout"]["replicas"] == 1
    assert set(report["layout"]) == {"world_size", "replicas", "cfg", "sp", "sp_scheme", "num_heads"}
    assert report["iterations"]["warmup"] == 1 and report["iterations"]["eval"] == 2
    assert len(report["iterations"]["warmup_total_s"]) == 1
    assert report["load_s"] > 0

    stages = report["stages"]
    assert set(stages) == {*STAGES, "total", "denoising_step", "denoising_steps"}
    for key in (*STAGES, "total", "denoising_step"):
        _check_stats(stages[key], 2)
    assert [s["step"] for s in stages["denoising_steps"]] == [1, 2, 3, 4]
    for step in stages["denoising_steps"]:
        _check_stats(step, 2)
    for i in range(2):  # per iteration: the stages lie inside the total, the steps inside denoising
        assert sum(stages[s]["values"][i] for s in STAGES) <= stages["total"]["values"][i] + 1e-6
        assert sum(step["values"][i] for step in stages["denoising_steps"]) <= stages["denoising"]["values"][i] + 1e-6
        per_step = sum(step["values"][i] for step in stages["denoising_steps"]) / 4
        assert stages["denoising_step"]["values"][i] == pytest.approx(per_step, abs=1e-5)

    memory = report["memory"]
    assert memory["kind"] in ("cpu_rss", "cuda_max_memory_allocated") and memory["peak_bytes"] > 0
    assert set(memory["by_stage_bytes"]) == set(STAGES) and memory["measures"]
    assert max(memory["by_stage_bytes"].values()) <= memory["peak_bytes"]

    gpu = report["gpu"]
    assert gpu["inventory_model"] == "rtx-a6000" and gpu["inventory_name"] == "NVIDIA RTX A6000"
    assert gpu["inventory_count"] == 8 and gpu["device"] in ("cpu", "cuda:0")
    if gpu["device"] == "cpu":  # this machine: no GPU, so the job computed on the CPU and says so
        assert gpu["device_gpu_model"] is None and gpu["matches_inventory"] is False
        assert gpu["device_name"].startswith("cpu") and memory["kind"] == "cpu_rss"
    versions = report["versions"]
    assert {"clusterkit", "python", "torch", "cuda", "cudnn", "pyav", "platform"} == set(versions)
    assert versions["torch"].startswith("2.") and versions["python"].startswith("3.")
    times = report["timestamps"]
    assert times["started_at"] <= times["finished_at"] and times["started"] and times["report_written"]
    [video] = report["outputs"]
    assert Path(video).is_file() and video.endswith(f"{result['run_id']}_0000.mp4")

    calibration = report["calibration"]
    assert calibration["stored"] is True and calibration["why_not"] is None
    record = calibration["record"]
    assert record["preset"] == "tiny" and record["node"] == NODE and record["run_id"] == result["run_id"]
    assert record["executor"] == "local" and record["host"] == report["host"]
    assert record["measured_at"] == "144p 9:16 17f, 1 GPU"
    on_node_gpu = gpu["device"] != "cpu" and gpu["matches_inventory"]
    assert record["scope"] == ("gpu-model" if on_node_gpu else "node")
    assert record["measured"] == {"text_s": stages["text_encoding"]["mean"], "step_s": stages["denoising_step"]["mean"],
                                  "decode_s": stages["decode"]["mean"], "write_s": stages["write"]["mean"]}
    assert all(v > 0 for v in record["predicted"].values())

    summary = result["summary"]  # --json: the headline numbers next to the report path
    assert summary["stages_s"]["denoising_step"] == {k: stages["denoising_step"][k] for k in ("mean", "min", "max")}
    assert summary["peak_memory"]["peak_bytes"] == memory["peak_bytes"]
    assert summary["gpu"]["device"] == gpu["device"] and summary["calibration"]["record"] == record


def test_a_second_plan_shows_and_uses_the_calibrated_figure(bench):
    result, report, cli, _ = bench
    record = report["calibration"]["record"]
    measured = record["measured"]
    args = ["plan", "--res", "144p", "--frames", "17", "--nodes", f"{NODE},{SAME_GPU_NODE}", "--gpus", "1",
            "--executor", "local"]  # the bench ran here, so it calibrates runs here

    code, out, err = cli(*args, "--model", "tiny")
    assert code == 0, (out, err)
    assert out["result"]["calibration_preset"] == "tiny" and out["result"]["executor"] == "local"
    nodes = {n["name"]: n for n in out["result"]["nodes"]}
    estimate = nodes[NODE]["estimate"]
    assert estimate["source"] == "calibrated"
    assert estimate["calibration"]["run_id"] == result["run_id"]
    assert estimate["calibration"]["device"] == report["gpu"]["device"]
    assert estimate["calibration"]["when"] and estimate["calibration"]["source"].startswith(
        f"bench run {result['run_id']}")
    assert estimate["calibration"]["same_configuration"] is True
    # The plan's video: the same size and settings as the bench's, 30 steps: the estimate is the
    # measured stages (30 of the measured step) instead of the model's.
    expected = measured["text_s"] + 30 * measured["step_s"] + measured["decode_s"] + measured["write_s"]
    assert estimate["seconds_per_video"] == pytest.approx(expected, abs=0.051)
    assert nodes[NODE]["predicted"]["seconds_per_video"] != estimate["seconds_per_video"]  # the model's stays
    # every local job runs on this host, whatever node it names: the figure is the other node's too
    other = nodes[SAME_GPU_NODE]["estimate"]
    assert other["source"] == "calibrated" and other["calibration"]["run_id"] == result["run_id"]
    # the planner ranks by the estimate
    best = min(nodes.values(), key=lambda n: n["estimate"]["seconds_per_video"])["name"]
    assert out["result"]["best"] == best

    code, text, err = cli(*args, "--model", "tiny", expect_json=False)
    assert code == 0, err
    assert f"{NODE}*" in text and f"{SAME_GPU_NODE}*" in text
    assert f"* {NODE} calibrated: {estimate['seconds_per_video']:.1f} s/video" in text
    assert f"bench run {result['run_id']}" in text and f"measured on {report['gpu']['device_name']}" in text

    code, out, err = cli(*args)  # opensora-v1.2: a tiny bench does not calibrate it
    assert code == 0, (out, err)
    assert all(n["estimate"]["source"] == "model" for n in out["result"]["nodes"])

    slurm = [*args[:-1], "slurm", "--model", "tiny"]  # through Slurm the job runs on the node, not here
    code, out, err = cli(*slurm)
    assert code == 0, (out, err)
    nodes = {n["name"]: n for n in out["result"]["nodes"]}
    assert nodes[NODE]["estimate"]["source"] == "model"
    [note] = nodes[NODE]["estimate"]["notes"]
    assert result["run_id"] in note and f"measured locally on host {report['host']}; not used for slurm plans" in note


def test_docs_bench_first_example_is_this_test():
    from ck_testing import ROOT

    block = (ROOT / "docs" / "bench.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    first = next(line for line in block.splitlines() if line.startswith("clusterkit "))
    assert first.split() == ["clusterkit", *BENCH]
