"""``clusterkit bench infer`` without a job: the report statistics, the calibration record and where
it applies, its SQLite store, the planner's use of it, and every bad input refused before launching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import costmodel as cm
from clusterkit.bench import BenchCounts, Prediction, calibrate, check_report_path, summarise
from clusterkit.bench_report import build_report
from clusterkit.calibration import STAGES, Calibration, CalibrationStore, pick
from clusterkit.errors import InvalidChoice, JobFailed, UserError
from clusterkit.inventory import load_inventory
from clusterkit.planner import PlanRequest, plan

ROOT = Path(__file__).resolve().parents[2]
SEED = load_inventory(ROOT / "nodes.yaml")


# ---------------------------------------------------------------- the report


def raw_result(*, device: str = "cpu", gpu_model: str | None = None, warmup: int = 1, evals: int = 2) -> dict:
    """What the job's rank 0 writes (opensora_core.inference.bench): iteration k takes k+1 units."""
    iterations = []
    for k in range(warmup + evals):
        unit = float(k + 1)
        steps = [0.01 * unit, 0.03 * unit]
        iterations.append({
            "iteration": k + 1, "phase": "warmup" if k < warmup else "eval", "total_s": 1.0 * unit,
            "timings": {"text_encoding_s": 0.1 * unit, "denoising_s": 0.05 * unit, "decode_s": 0.2 * unit,
                        "write_s": 0.3 * unit, "denoising_steps_s": steps, "denoising_step_mean_s": sum(steps) / 2},
            "peak_memory": {"kind": "cpu_rss", "peak_bytes": 1000 * (k + 1),
                            "by_stage_bytes": {"text_encoding": 10 * unit, "denoising": 20 * unit,
                                               "decode": 30 * unit, "write": 5 * unit}},
        })
    cuda = device != "cpu"
    return {
        "ok": True, "node": "worker-5", "host": "vm", "model": "tiny", "random_weights": True, "dtype": "fp32",
        "t5": {"device": device, "dtype": "fp32"}, "vae_micro_batch": 4, "flash_attn": False,
        "layout": {"world_size": 1, "replicas": 1, "cfg": 1, "sp": 1, "sp_scheme": "dsp", "num_heads": 4},
        "geometry": {"frames": 17, "height": 144, "width": 256, "latent": [5, 18, 32], "tokens": 720},
        "device": {"device": device, "type": "cuda" if cuda else "cpu",
                   "name": "NVIDIA RTX A6000" if cuda else "cpu (x86_64)", "torch_name": None, "nvml_name": None,
                   "driver": None, "gpu_model": gpu_model, "memory_bytes": None, "compute_capability": None,
                   "cpu_threads": 2},
        "versions": {"clusterkit": "0.1.0", "python": "3.11", "torch": "2.13.0", "cuda": None, "cudnn": None,
                     "pyav": "18", "platform": "linux"},
        "load_s": 2.5, "warmup": warmup, "eval": evals, "iterations": iterations, "outputs": ["/x/video.mp4"],
        "started_at": 100.0, "finished_at": 200.0,
    }


def report_of(raw: dict) -> dict:
    return build_report(raw, run_id="20260101-000000-bench-abcd", executor="local",
                        inventory_gpu={"model": "rtx-a6000", "name": "NVIDIA RTX A6000", "count": 8},
                        request={"model": "tiny", "resolution": "144p", "frames": "17", "aspect_ratio": "9:16",
                                 "steps": 2, "prompt": "p", "seed": 42}, written_at=300.0)


def test_report_statistics_cover_the_eval_iterations_only():
    report = report_of(raw_result(warmup=1, evals=2))
    stages = report["stages"]
    text = stages["text_encoding"]  # iterations 2 and 3: 0.1 s per unit
    assert text["values"] == pytest.approx([0.2, 0.3]) and text["mean"] == pytest.approx(0.25)
    assert (text["min"], text["max"]) == (min(text["values"]), max(text["values"]))
    assert stages["total"]["values"] == [2.0, 3.0] and stages["total"]["mean"] == 2.5
    assert stages["denoising_step"]["values"] == [pytest.approx(0.04), pytest.approx(0.06)]
    assert [s["step"] for s in stages["denoising_steps"]] == [1, 2]
    assert stages["denoising_steps"][1]["values"] == [pytest.approx(0.06), pytest.approx(0.09)]
    assert report["iterations"] == {"warmup": 1, "eval": 2, "warmup_total_s": [1.0]}
    assert report["memory"]["peak_bytes"] == 3000 and report["memory"]["by_stage_bytes"]["decode"] == 90.0
    assert report["gpu"]["device"] == "cpu" and report["gpu"]["matches_inventory"] is False
    assert report["request"]["num_frames"] == 17 and report["timestamps"]["finished_at"] == 200.0


def test_report_refuses_a_result_missing_iterations():
    raw = raw_result(evals=2)
    raw["iterations"] = raw["iterations"][:-1]
    with pytest.raises(JobFailed, match="1 eval iteration"):
        report_of(raw)


@pytest.mark.parametrize("warmup, evals, flag", [(0, 0, "--eval"), (-1, 5, "--warmup"), (3, True, "--eval"),
                                                 (3, 2.5, "--eval")])
def test_bench_counts_name_the_flag(warmup, evals, flag):
    with pytest.raises(InvalidChoice, match=f"{flag} .* valid choices: an integer >="):
        BenchCounts(warmup, evals)


# ---------------------------------------------------------------- calibration


def prediction(node: str = "worker-5", steps: int = 2) -> Prediction:
    [node_plan] = plan(SEED, PlanRequest("144p", "17", nodes=(node,), gpus=1, steps=steps)).nodes
    return Prediction(node_plan.chosen.timing, steps, {"gpu_model": node_plan.gpu.key})


@pytest.mark.parametrize("device, gpu_model, scope", [
    ("cpu", None, "node"),                       # no GPU: a CPU figure, for the benched node alone
    ("cuda:0", "rtx-a6000", "gpu-model"),        # the node's own GPU model: every A6000 node
    ("cuda:0", "h100-sxm", "node"),              # another GPU than nodes.yaml says: this node only
])
def test_calibration_scope_follows_what_was_measured(device, gpu_model, scope):
    report = report_of(raw_result(device=device, gpu_model=gpu_model))
    calibration, why_not = calibrate(report, prediction())
    assert why_not is None and calibration.scope == scope
    assert calibration.measured == {"text_s": 0.25, "step_s": pytest.approx(0.05), "decode_s": 0.5, "write_s": 0.75}
    assert calibration.predicted["write_s"] == cm.FIXED_SECONDS
    assert calibration.applies_to("worker-5", "rtx-a6000")
    assert calibration.applies_to("worker-6", "rtx-a6000") is (scope == "gpu-model")
    assert not calibration.applies_to("worker-8", "rtx-4090")


def test_no_calibration_without_a_model_candidate():
    calibration, why_not = calibrate(report_of(raw_result()), None)
    assert calibration is None and "no candidate" in why_not


def calibration(run_id: str, *, node: str = "worker-5", scope: str = "node", created_at: float = 1000.0,
                preset: str = "tiny", gpu_model: str = "rtx-a6000", factor: float = 2.0) -> Calibration:
    predicted = {"text_s": 0.1, "step_s": 0.2, "decode_s": 0.3, "write_s": 1.0}
    return Calibration(preset=preset, node=node, gpu_model=gpu_model, scope=scope, device="cpu",
                       device_name="cpu (x86_64)", run_id=run_id, created_at=created_at,
                       measured={k: v * factor for k, v in predicted.items()}, predicted=predicted, host="vm")


@pytest.mark.parametrize("change, message", [
    ({"scope": "cluster"}, "scope 'cluster' is not valid; valid choices: gpu-model, node"),
    ({"measured": {"text_s": 1, "step_s": 0, "decode_s": 1, "write_s": 1}}, "measured step_s 0 must be > 0"),
    ({"predicted": {"text_s": 1}}, "predicted has stages"),
    ({"created_at": float("nan")}, "created_at nan must be a finite number"),
])
def test_calibration_rejects_bad_records(change, message):
    fields = {**calibration("r").__dict__, **change}
    with pytest.raises(UserError, match=message):
        Calibration(**fields)


def test_store_round_trip_newest_first_and_pick(tmp_path):
    store = CalibrationStore(tmp_path / "runs")
    assert store.all() == [] and not (tmp_path / "runs").exists()  # reading never creates the registry
    records = [calibration("a", created_at=1.0), calibration("b", created_at=3.0, node="worker-6", scope="gpu-model"),
               calibration("c", created_at=2.0, node="worker-6", scope="gpu-model"),
               calibration("d", created_at=9.0, preset="opensora-v1.2", scope="gpu-model")]
    for record in records:
        store.add(record)
    assert [c.run_id for c in store.all("tiny")] == ["b", "c", "a"]
    assert store.all("tiny")[0] == records[1]  # every field survives the JSON round trip
    tiny = store.all("tiny")
    assert pick(tiny, "worker-5", "rtx-a6000").run_id == "a"  # its own bench beats a newer one of its model
    assert pick(tiny, "worker-6", "rtx-a6000").run_id == "b"  # the newest of its own
    assert pick(tiny, "worker-7", "rtx-a6000").run_id == "b"  # another A6000 node: the newest gpu-model one
    assert pick(tiny, "worker-8", "rtx-4090") is None
    assert {r[0] for r in _runs_tables(tmp_path / "runs" / "registry.sqlite")} >= {"calibrations"}


def _runs_tables(path: Path) -> list:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()


# ---------------------------------------------------------------- the planner


def test_timing_calibrated_scales_each_term_by_its_stage():
    t = cm.Timing(text=1.0, dit=2.0, attention=3.0, comm=4.0, vae=5.0, fixed=6.0)
    assert t.calibrated({stage: 1.0 for stage in STAGES}) == t
    c = t.calibrated({"text_s": 2.0, "step_s": 10.0, "decode_s": 0.5, "write_s": 0.1})
    assert (c.text, c.dit, c.attention, c.comm, c.vae, c.fixed) == (2.0, 20.0, 30.0, 40.0, 2.5, pytest.approx(0.6))
    assert t.denoising == 9.0


def test_planner_estimate_uses_the_calibration_that_speaks_for_the_node():
    request = PlanRequest("144p", "17", nodes="worker-5,worker-6,worker-8", gpus=1)
    model = {n.name: n for n in plan(SEED, request).nodes}
    slow_cpu = calibration("cpu-bench", node="worker-5", factor=50.0)
    fast_4090 = calibration("gpu-bench", node="worker-8", scope="gpu-model", gpu_model="rtx-4090", factor=0.5)
    planned = {n.name: n for n in plan(SEED, request, [slow_cpu, fast_4090]).nodes}
    for name, ratio, record in (("worker-5", 50.0, slow_cpu), ("worker-8", 0.5, fast_4090)):
        node = planned[name]
        assert node.calibration == record
        assert node.seconds == pytest.approx(model[name].chosen.seconds * ratio)
        estimate = node.to_dict()["estimate"]
        assert estimate["source"] == "calibrated" and estimate["calibration"]["run_id"] == record.run_id
        assert estimate["seconds_per_video"] == round(node.seconds, 1)
        assert node.to_dict()["predicted"] == model[name].to_dict()["predicted"]  # the model's figure stays
    assert planned["worker-6"].calibration is None  # a CPU bench of worker-5 says nothing about worker-6
    assert planned["worker-6"].to_dict()["estimate"]["source"] == "model"
    assert planned["worker-6"].seconds == model["worker-6"].chosen.seconds
    # ranking follows the estimates: a 50x slower worker-5 is never best; a 2x faster 4090 is
    ranked = plan(SEED, request, [slow_cpu, fast_4090])
    assert ranked.best().name == "worker-8"
    slow_4090 = calibration("gpu-bench-2", node="worker-8", scope="gpu-model", gpu_model="rtx-4090", factor=50.0)
    assert plan(SEED, request, [slow_4090]).best().name in ("worker-5", "worker-6")


def test_training_plans_ignore_inference_calibrations():
    request = PlanRequest("144p", "2s", task="train", nodes="worker-5")
    [node] = plan(SEED, request, [calibration("x", factor=9.0)]).nodes
    assert node.calibration is None and node.to_dict()["estimate"]["source"] == "model"


# ---------------------------------------------------------------- inputs, CLI


def test_check_report_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a folder"):
        check_report_path(str(tmp_path))
    with pytest.raises(UserError, match="is not writable: .* is a file, not a folder"):
        check_report_path(str(tmp_path / "file" / "report.json"))
    with pytest.raises(UserError, match="is not writable: cannot create a file in '/proc'"):
        check_report_path("/proc/bench-report.json")
    target = tmp_path / "new" / "deeper" / "report.json"
    assert check_report_path(str(target)) == target and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe file is gone


def cli(*args: str, runs_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml"),
           "COLUMNS": "200"}
    env.pop("SLURM_CONF", None)
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


BENCH = ("bench", "infer", "--model", "tiny", "--executor", "local")


@pytest.mark.parametrize("args, words", [
    (("--node", "worker-9", "--res", "144p", "--frames", "17"),
     "node 'worker-9' is not valid; valid choices: worker-1, worker-2"),
    (("--node", "worker-5", "--res", "100p", "--frames", "17"), "--res '100p' is not valid; valid choices: 144p"),
    (("--node", "worker-5", "--res", "144p", "--frames", "3s"), "--frames '3s' is not valid; valid choices: 1x"),
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--eval", "0"),
     "--eval 0 is not valid; valid choices: an integer >= 1"),
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--report", "/proc/r.json"),
     "--report '/proc/r.json' is not writable"),
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--executor", "k8s"),
     "--executor 'k8s' is not valid; valid choices: auto, slurm, local"),
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--gpus", "2"), "2 replicas"),
])
def test_bad_input_is_refused_before_launching(tmp_path, args, words):
    runs = tmp_path / "runs"
    proc = cli(*BENCH, *args, "--json", runs_dir=runs)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)["error"]
    assert error["kind"] == "user_error" and words in error["message"], error
    assert not runs.exists()  # nothing launched, no run folder, no registry


def test_bench_cli_refusing_input_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from clusterkit.cli import main\n"
        "rc = main(['bench', 'infer', '--node', 'worker-5', '--res', '144p', '--frames', '17', '--eval', '0'])\n"
        "assert rc == 2, rc\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr


def test_plan_shows_a_stored_calibration_in_text_and_json(tmp_path):
    runs = tmp_path / "runs"
    record = calibration("20260101-120000-bench-beef", node="worker-5", factor=3.0)
    CalibrationStore(runs).add(record)
    args = ("plan", "--res", "144p", "--frames", "17", "--nodes", "worker-5,worker-6", "--gpus", "1")
    data = json.loads(cli(*args, "--model", "tiny", "--json", runs_dir=runs).stdout)["result"]
    five, six = data["nodes"]
    assert five["estimate"]["source"] == "calibrated" and six["estimate"]["source"] == "model"
    assert five["estimate"]["calibration"]["when"] == record.when
    assert five["estimate"]["seconds_per_video"] == pytest.approx(3 * five["predicted"]["seconds_per_video"], abs=0.2)
    assert data["best"] == "worker-6" and data["calibration_preset"] == "tiny"
    text = cli(*args, "--model", "tiny", runs_dir=runs).stdout
    assert "worker-5*" in text and "worker-6*" not in text
    assert f"* worker-5 calibrated: {five['estimate']['seconds_per_video']:.1f} s/video (model " in text
    assert f"bench run {record.run_id} ({record.when}) on worker-5, tiny, measured on cpu (x86_64)" in text
    default = json.loads(cli(*args, "--json", runs_dir=runs).stdout)["result"]  # opensora-v1.2: not calibrated
    assert [n["estimate"]["source"] for n in default["nodes"]] == ["model", "model"]


def test_summary_keeps_the_headline_numbers():
    report = report_of(raw_result())
    report["calibration"] = {"stored": False, "why_not": "x", "model_prediction": None, "record": None}
    summary = summarise(report)
    assert summary["stages_s"]["total"] == {"mean": 2.5, "min": 2.0, "max": 3.0}
    assert list(summary["stages_s"]) == ["text_encoding", "denoising", "denoising_step", "decode", "write", "total"]
    assert summary["peak_memory"]["peak_bytes"] == 3000 and summary["gpu"]["device"] == "cpu"
