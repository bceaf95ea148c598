"""``clusterkit bench infer`` without a job: the report statistics, the calibration record and where
it applies, its SQLite store, the planner's use of it, and every bad input refused before launching."""

from __future__ import annotations

import json
import socket
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import costmodel as cm
from clusterkit.bench import BenchCounts, Prediction, calibrate, check_report_path, summarise, write_report
from clusterkit.bench_report import build_report
from clusterkit.calibration import STAGES, Calibration, CalibrationStore, Configuration, pick
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


def report_of(raw: dict, executor: str = "local") -> dict:
    return build_report(raw, run_id="20260101-000000-bench-abcd", executor=executor,
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
    # the latent token count the DiT attends over, named so (not the prompt's tokens); no stray keys
    assert report["request"]["video_tokens"] == 720 and "tokens" not in report["request"]
    assert report["layout"] == {"world_size": 1, "replicas": 1, "cfg": 1, "sp": 1, "sp_scheme": "dsp", "num_heads": 4}


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
    report = report_of(raw_result(device=device, gpu_model=gpu_model), executor="slurm")
    calibration, why_not = calibrate(report, prediction())
    assert why_not is None and calibration.scope == scope and calibration.executor == "slurm"
    assert calibration.measured == {"text_s": 0.25, "step_s": pytest.approx(0.05), "decode_s": 0.5, "write_s": 0.75}
    assert calibration.predicted["write_s"] == cm.FIXED_SECONDS
    # measured on the node: speaks for it in Slurm plans; a local plan's ranks run on this host instead
    assert calibration.applies_to("worker-5", "rtx-a6000", "slurm")
    assert calibration.applies_to("worker-6", "rtx-a6000", "slurm") is (scope == "gpu-model")
    assert not calibration.applies_to("worker-8", "rtx-4090", "slurm")
    assert not calibration.applies_to("worker-5", "rtx-a6000", "local")
    assert calibration.configuration == Configuration(144, 256, 17, 1, False, "dsp")
    assert calibration.measured_at == "144p 9:16 17f, 1 GPU"


def test_a_local_bench_describes_this_host_not_the_node():
    """The local executor ran the job here, whatever node was asked for: its calibration speaks only
    for plans whose ranks run here too, never for the node through Slurm."""
    report = report_of(raw_result(device="cuda:0", gpu_model="rtx-a6000"), executor="local")
    calibration, _ = calibrate(report, prediction())
    assert calibration.executor == "local" and calibration.host == "vm"
    # every local job runs on host vm, whatever node it names: the figure is vm's, for every node
    assert calibration.applies_to("worker-5", "rtx-a6000", "local", host="vm")
    assert calibration.applies_to("worker-8", "rtx-4090", "local", host="vm")
    assert not calibration.applies_to("worker-5", "rtx-a6000", "local", host="other-login-node")
    assert not calibration.applies_to("worker-5", "rtx-a6000", "slurm", host="vm")
    assert "(local executor)" in calibration.source and "of host vm" in calibration.source


def test_no_calibration_without_a_model_candidate():
    calibration, why_not = calibrate(report_of(raw_result()), None)
    assert calibration is None and "no candidate" in why_not


def bench_config(resolution: str = "144p", num_frames: int = 17, sp: int = 1, cfg: int = 1) -> dict:
    """``Calibration.bench`` of a bench of ``resolution`` 9:16 x ``num_frames`` on one group of cfg x sp."""
    from opensora_core.geometry import get_image_size

    height, width = get_image_size(resolution, "9:16")
    return {"resolution": resolution, "frames": str(num_frames), "num_frames": num_frames, "height": height,
            "width": width, "aspect_ratio": "9:16", "steps": 2, "dtype": "fp32",
            "layout": {"world_size": sp * cfg, "replicas": 1, "cfg": cfg, "sp": sp, "sp_scheme": "dsp"}}


HOST = socket.gethostname()  # a local bench's figure is this machine's


def calibration(run_id: str, *, node: str = "worker-5", scope: str = "node", created_at: float = 1000.0,
                preset: str = "tiny", gpu_model: str = "rtx-a6000", factor: float = 2.0, executor: str = "slurm",
                bench: dict | None = None) -> Calibration:
    predicted = {"text_s": 0.1, "step_s": 0.2, "decode_s": 0.3, "write_s": 1.0}
    return Calibration(preset=preset, node=node, gpu_model=gpu_model, scope=scope, device="cpu",
                       device_name="cpu (x86_64)", run_id=run_id, created_at=created_at,
                       measured={k: v * factor for k, v in predicted.items()}, predicted=predicted, host=HOST,
                       executor=executor, bench=bench_config() if bench is None else bench)


@pytest.mark.parametrize("change, message", [
    ({"scope": "cluster"}, "scope 'cluster' is not valid; valid choices: gpu-model, node"),
    ({"measured": {"text_s": 1, "step_s": 0, "decode_s": 1, "write_s": 1}}, "measured step_s 0 must be > 0"),
    ({"predicted": {"text_s": 1}}, "predicted has stages"),
    ({"created_at": float("nan")}, "created_at nan must be a finite number"),
    ({"executor": ""}, "executor '' is not valid; valid choices: slurm, local"),
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


def test_store_skips_rows_it_cannot_read_with_a_note(tmp_path):
    import sqlite3

    store = CalibrationStore(tmp_path / "runs")
    good = calibration("good")
    store.add(good)
    bad_scope = {**good.to_dict(), "run_id": "bad-scope", "scope": "cluster"}
    missing = {k: v for k, v in good.to_dict().items() if k != "measured"}
    with sqlite3.connect(store.path) as conn:
        for run_id, record in (("not-json", "{oops"), ("bad-scope", json.dumps(bad_scope)),
                               ("missing", json.dumps({**missing, "run_id": "missing"})), ("a-list", "[1]")):
            conn.execute("INSERT INTO calibrations VALUES (?,?,?,?,?,?,?)",
                         (run_id, "tiny", "node", "rtx-a6000", "worker-5", 5.0, record))
    records, notes = store.read("tiny")
    assert records == [good] and store.all("tiny") == [good]
    assert len(notes) == 4 and all(" skipped: " in note and str(store.path) in note for note in notes)
    by_run = {note.split()[4]: note for note in notes}  # "calibration of bench run RUN in ..."
    assert "scope 'cluster' is not valid" in by_run["bad-scope"] and "measured" in by_run["missing"]
    assert set(by_run) == {"not-json", "bad-scope", "missing", "a-list"}

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "registry.sqlite").write_bytes(b"this is not a database at all" * 100)
    records, [note] = CalibrationStore(tmp_path / "broken").read()
    assert records == [] and "cannot be read" in note and "cost model alone" in note


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


def test_a_local_bench_calibrates_only_local_plans_and_slurm_plans_say_so():
    request = PlanRequest("144p", "17", nodes="worker-5,worker-6", gpus=1)
    local = calibration("local-bench", node="worker-5", factor=0.01, executor="local")
    model = {n.name: n.chosen.seconds for n in plan(SEED, request).nodes}
    on_slurm = {n.name: n for n in plan(SEED, request, [local], executor="slurm").nodes}
    five = on_slurm["worker-5"]
    assert five.calibration is None and five.seconds == model["worker-5"]
    estimate = five.to_dict()["estimate"]
    assert estimate["source"] == "model"
    [note] = estimate["notes"]
    assert "bench run local-bench" in note and f"measured locally on host {HOST}; not used for slurm plans" in note
    assert on_slurm["worker-6"].to_dict()["estimate"]["notes"] == []  # the note goes on the node it named
    here = {n.name: n for n in plan(SEED, request, [local], executor="local").nodes}
    for name in ("worker-5", "worker-6"):  # both nodes' local jobs run on this host: the figure is for both
        assert here[name].calibration == local and here[name].calibration_notes == ()
        assert here[name].seconds == pytest.approx(model[name] * 0.01)
    assert plan(SEED, request, [local], executor="local").to_dict()["executor"] == "local"
    slurm_bench = calibration("slurm-bench", node="worker-5", factor=3.0)  # measured on the node, not here
    assert plan(SEED, request, [slurm_bench], executor="local").nodes[0].calibration is None
    assert plan(SEED, request, [slurm_bench], executor="slurm").nodes[0].calibration == slurm_bench
    with pytest.raises(InvalidChoice, match="executor 'k8s' is not valid; valid choices: slurm, local"):
        plan(SEED, request, [], executor="k8s")


def test_the_calibration_nearest_the_planned_configuration_wins():
    request = PlanRequest("240p", "17", nodes="worker-5", gpus=1)
    same = calibration("older-240p", created_at=1.0, factor=2.0, bench=bench_config("240p"))
    other = calibration("newer-144p", created_at=9.0, factor=5.0)
    [node] = plan(SEED, request, [other, same]).nodes
    assert node.calibration == same and node.calibration_differs == ()
    cal = node.to_dict()["estimate"]["calibration"]
    assert cal["same_configuration"] is True and cal["differs"] == [] and cal["measured_at"] == "240p 9:16 17f, 1 GPU"
    [node] = plan(SEED, request, [other]).nodes  # only one at another size: used, and said so
    assert node.calibration == other and node.calibration_differs == ("resolution",)
    cal = node.to_dict()["estimate"]["calibration"]
    assert cal["same_configuration"] is False and cal["measured_at"] == "144p 9:16 17f, 1 GPU"
    unknown = calibration("no-config", bench={})
    assert unknown.differences(Configuration(144, 256, 17, 1, False)) == ("resolution", "frames", "layout")
    assert pick([unknown, other], "worker-5", "rtx-a6000", "slurm", Configuration(144, 256, 17, 1, False)) == other


def test_a_bench_of_another_layout_leaves_communication_to_the_model():
    request = PlanRequest("144p", "17", nodes="worker-5", gpus=2, sp=2, cfg_parallel=False)
    [model] = plan(SEED, request).nodes
    assert model.chosen.timing.comm > 0
    one_gpu = calibration("one-gpu", factor=4.0)
    [node] = plan(SEED, request, [one_gpu]).nodes
    assert node.calibration_differs == ("layout",)
    t, c = model.chosen.timing, node.timing
    assert c.comm == t.comm and c.dit == pytest.approx(4 * t.dit)  # the step ratio scales compute only
    assert node.seconds == pytest.approx(4 * t.total - 3 * t.comm)
    assert node.to_dict()["estimate"]["calibration"]["communication_scaled"] is False
    sp2 = calibration("sp2", factor=4.0, bench=bench_config(sp=2))
    [node] = plan(SEED, request, [sp2]).nodes
    assert node.calibration_differs == () and node.timing.comm == pytest.approx(4 * t.comm)


def test_training_plans_ignore_inference_calibrations():
    request = PlanRequest("144p", "2s", task="train", nodes="worker-5")
    [node] = plan(SEED, request, [calibration("x", factor=9.0)]).nodes
    assert node.calibration is None and node.to_dict()["estimate"]["source"] == "model"


# ---------------------------------------------------------------- inputs, CLI


def test_the_report_file_is_readable_like_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        write_report(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


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
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--ckpt-path-t5", "/nonexistent/t5"),
     "no folder for the dit, vae2d, vae3d components: give --ckpt-path-dit DIR"),
    (("--node", "worker-5", "--res", "144p", "--frames", "17", "--ckpt-dir", str(ROOT), "--ckpt-path-t5",
      "/nonexistent/t5"), "--ckpt-path-t5 '/nonexistent/t5' does not exist (DeepFloyd/t5-v1_1-xxl)"),
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
    args = ("plan", "--res", "144p", "--frames", "17", "--nodes", "worker-5,worker-6", "--gpus", "1",
            "--executor", "slurm")  # a bench through Slurm speaks for Slurm plans
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


def test_plan_executor_decides_whether_a_local_bench_applies(tmp_path):
    runs = tmp_path / "runs"
    CalibrationStore(runs).add(calibration("20260101-120000-bench-10ca", node="worker-5", factor=3.0,
                                           executor="local"))
    args = ("plan", "--res", "144p", "--frames", "17", "--nodes", "worker-5,worker-6", "--gpus", "1", "--model", "tiny")
    local = json.loads(cli(*args, "--executor", "local", "--json", runs_dir=runs).stdout)["result"]
    assert local["executor"] == "local" and local["nodes"][0]["estimate"]["source"] == "calibrated"
    slurm = json.loads(cli(*args, "--executor", "slurm", "--json", runs_dir=runs).stdout)["result"]
    assert slurm["executor"] == "slurm" and slurm["nodes"][0]["estimate"]["source"] == "model"
    text = cli(*args, "--executor", "slurm", runs_dir=runs).stdout
    assert "worker-5*" not in text
    assert "worker-5: bench run 20260101-120000-bench-10ca" in text and "not used for slurm plans" in text
    proc = cli(*args, "--executor", "k8s", "--json", runs_dir=runs)
    assert proc.returncode == 2 and "valid choices: auto, slurm, local" in json.loads(proc.stdout)["error"]["message"]


def test_plan_and_submit_survive_a_bad_calibration_row(tmp_path):
    import sqlite3

    runs = tmp_path / "runs"
    CalibrationStore(runs).add(calibration("20260101-120000-bench-900d", node="worker-5", factor=3.0))
    with sqlite3.connect(runs / "registry.sqlite") as conn:
        conn.execute("INSERT INTO calibrations VALUES ('broken','tiny','node','rtx-a6000','worker-5',1.0,'{}')")
    args = ("plan", "--res", "144p", "--frames", "17", "--nodes", "worker-5", "--gpus", "1", "--model", "tiny")
    proc = cli(*args, "--executor", "slurm", "--json", runs_dir=runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)["result"]
    assert data["nodes"][0]["estimate"]["source"] == "calibrated"  # the good row still applies
    [note] = data["calibration_notes"]
    assert "bench run broken" in note and "skipped" in note
    assert "calibration of bench run broken" in cli(*args, "--executor", "slurm", runs_dir=runs).stdout
    proc = cli(*SUBMIT, "--executor", "slurm", runs_dir=runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any("bench run broken" in n for n in json.loads(proc.stdout)["result"]["notes"])


SUBMIT = ("submit", "infer", "--model", "tiny", "--res", "144p", "--frames", "17", "--prompt", "p", "--dry-run",
          "--json")


def test_a_local_bench_does_not_change_where_slurm_submits(tmp_path):
    """The reviewed defect: a local bench of worker-5 (this VM's CPU) made `submit --executor slurm`
    pick worker-5. It may steer a local run only."""
    empty, runs = tmp_path / "empty", tmp_path / "runs"

    def node_of(*args, runs_dir):
        proc = cli(*SUBMIT, *args, runs_dir=runs_dir)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)["result"]["node"]

    baseline = node_of("--executor", "slurm", runs_dir=empty)
    assert baseline != "worker-5"
    CalibrationStore(runs).add(calibration("20260101-120000-bench-fa57", node="worker-5", factor=0.01,
                                           executor="local"))
    assert node_of("--executor", "slurm", runs_dir=runs) == baseline
    # local: the figure is this host's, for every node alike, so it favours none (not the one it named)
    assert node_of("--executor", "local", runs_dir=runs) == node_of("--executor", "local", runs_dir=empty)


def test_summary_keeps_the_headline_numbers():
    report = report_of(raw_result())
    report["calibration"] = {"stored": False, "why_not": "x", "model_prediction": None, "record": None}
    summary = summarise(report)
    assert summary["stages_s"]["total"] == {"mean": 2.5, "min": 2.0, "max": 3.0}
    assert list(summary["stages_s"]) == ["text_encoding", "denoising", "denoising_step", "decode", "write", "total"]
    assert summary["peak_memory"]["peak_bytes"] == 3000 and summary["gpu"]["device"] == "cpu"


def test_a_sweep_ranks_with_the_calibrations_of_where_its_jobs_run(tmp_path):
    """A sweep plans like one run: a local bench's figure counts for local jobs (all on this host, so
    for every node alike), never for Slurm ones."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    runs = tmp_path / "runs"
    CalibrationStore(runs).add(calibration("20260101-120000-bench-fa57", node="worker-5", factor=50.0,
                                           executor="local"))

    def seconds(executor):
        proc = cli("submit", "infer", "--model", "tiny", "--res", "144p", "--frames", "17", "--prompts-file",
                   str(prompts), "--nodes", "worker-5,worker-6", "--executor", executor, "--dry-run", "--json",
                   runs_dir=runs)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)["result"]
        assert result["unused"] == []
        return {r["node"]: r["seconds_per_video"] for r in result["runs"]}

    slurm, local = seconds("slurm"), seconds("local")
    assert set(slurm) == set(local) == {"worker-5", "worker-6"}  # equal nodes, equal figures: a video each
    for node in ("worker-5", "worker-6"):
        assert local[node] == pytest.approx(50 * slurm[node], rel=0.01)


def test_bench_takes_component_folders_and_refuses_a_missing_one(tmp_path, monkeypatch):
    from clusterkit.bench import bench_infer
    from clusterkit.launch import runs
    from clusterkit.project import Project

    folders = {}
    for name, files in {"dit": ("config.json", "model.safetensors"), "vae2d": ("vae/config.json",),
                        "t5": ("config.json", "model.safetensors", "spiece.model"),
                        "vae3d": ("config.json", "model.safetensors")}.items():
        for file in files:
            (tmp_path / "hf" / name / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "hf" / name / file).write_text("{}")
        folders[name] = str(tmp_path / "hf" / name)

    class Done:  # the job "ran": its raw result is in place when submitted
        def submit(self, spec, paths):
            self.request = json.loads((paths.root / "request.json").read_text())
            paths.result.write_text(json.dumps(raw_result()))
            return ["fake-1"]

        def states(self, runs_):
            return {record.run_id: "COMPLETED" for record, _ in runs_}

    done = Done()
    monkeypatch.setattr(runs, "get_executor", lambda name: done)
    project = Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})
    args = dict(node="worker-5", frames="17", resolution="144p", model="tiny", executor="local", steps=2, warmup=1,
                evals=2)
    result = bench_infer(project, **args, ckpt_paths=folders)
    assert done.request["ckpt_paths"] == folders and not result["random_weights"]
    assert json.loads(Path(result["report"]).read_text())["request"]["ckpt_paths"] == folders
    runs_before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    with pytest.raises(UserError, match="no folder for the vae3d component: give --ckpt-path-vae3d DIR"):
        bench_infer(project, **args, ckpt_paths={k: v for k, v in folders.items() if k != "vae3d"})
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs_before


def test_another_sp_scheme_is_another_layout_only_with_sp():
    # the communication term depends on the scheme since the planner charges the one the job runs
    bench_sp4 = calibration("dsp-sp4", bench=bench_config(sp=4))
    assert bench_sp4.differences(Configuration(144, 256, 17, 4, False, "dsp")) == ()
    assert bench_sp4.differences(Configuration(144, 256, 17, 4, False, "ulysses")) == ("layout",)
    one_gpu = calibration("one-gpu")  # no SP: no all-to-alls, whatever the scheme
    assert one_gpu.differences(Configuration(144, 256, 17, 1, False, "ulysses")) == ()
