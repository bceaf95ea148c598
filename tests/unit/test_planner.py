"""The planner: tables of (inventory, request) -> plan or error, on the seed cluster's real GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clusterkit import costmodel as cm
from clusterkit.errors import InvalidChoice, UserError
from clusterkit.inventory import load_inventory, parse_inventory
from clusterkit.planner import PlanRequest, choose, plan

ROOT = Path(__file__).resolve().parents[2]
SEED = load_inventory(ROOT / "nodes.yaml")
NODE_KEYS = {"name", "gpu_model", "feasible", "layout", "dtype", "attention", "t5", "vae_micro_batch", "predicted",
             "reasons", "alternatives", "estimate"}
PREDICTED_KEYS = {"peak_gib_per_gpu", "usable_gib_per_gpu", "seconds_per_video", "videos_per_hour"}


def inventory(*nodes: tuple) -> object:
    """An inventory of (name, gpu model, count[, interconnect]) nodes."""
    entries = []
    for name, model, count, *interconnect in nodes:
        entry = {"name": name, "gpu": {"model": model, "count": count}}
        if interconnect:
            entry["interconnect"] = interconnect[0]
        entries.append(entry)
    return parse_inventory(yaml.safe_dump({"version": 1, "nodes": entries}), path="test-nodes.yaml")


def node_plan(request: PlanRequest, inv=SEED):
    (only,) = plan(inv, request).nodes
    return only


# ---------------------------------------------------------------- the seed's four failure classes


@pytest.mark.parametrize("node", ["worker-1", "worker-2"])
@pytest.mark.parametrize("resolution, frames", [("360p", "4s"), ("480p", "4s"), ("720p", "2s"), ("720p", "4s"),
                                                ("720p", "16s")])
def test_rtx_8000_plans_fp16_with_unfused_attention_or_says_why_not(node, resolution, frames):
    verdict = node_plan(PlanRequest(resolution, frames, nodes=node))
    for candidate in verdict.candidates:  # nothing the GPU cannot do is ever tried
        assert (candidate.settings.dtype, candidate.settings.attention) == ("fp16", "unfused")
        assert candidate.settings.t5 != "gpu-bf16"
    if verdict.feasible:
        assert (verdict.chosen.settings.dtype, verdict.chosen.settings.attention) == ("fp16", "unfused")
        assert any("no bf16" in r for r in verdict.reasons)
        assert any("no FlashAttention-2" in r for r in verdict.reasons)
    else:
        assert verdict.reasons and all("GiB" in r for r in verdict.reasons)


@pytest.mark.parametrize("pins, words", [
    ({"dtype": "bf16"}, "has no bf16"),
    ({"t5": "gpu-bf16"}, "has no bf16"),
    ({"attention": "fused"}, "no FlashAttention-2 (needs sm_80+)"),
])
def test_rtx_8000_refuses_pinned_ampere_features_with_the_reason(pins, words):
    verdict = node_plan(PlanRequest("360p", "2s", nodes="worker-1", **pins))
    assert not verdict.feasible
    assert any(words in r for r in verdict.reasons), verdict.reasons
    assert verdict.candidates == ()


def test_rtx_3090_at_720p_4s_with_upstreams_fp32_t5_is_rejected_with_a_concrete_alternative():
    request = PlanRequest("720p", "4s", nodes="worker-3", t5="gpu-fp32")
    verdict = node_plan(request)
    assert not verdict.feasible
    (reason,) = verdict.reasons
    assert "T5 fp32 17.7" in reason and "23.65 usable" in reason
    assert verdict.alternatives
    for alternative in verdict.alternatives:  # every alternative is concrete: applying it makes the node feasible
        assert node_plan(request.with_changes(**alternative.changes)).feasible, alternative
        assert alternative.peak_gib_per_gpu < 23.65
    assert verdict.alternatives[0].changes["t5"] in ("gpu-bf16", "offload")
    # and the planner, left free, finds the fitting choice itself
    free = node_plan(PlanRequest("720p", "4s", nodes="worker-3"))
    assert free.feasible and free.chosen.settings.t5 != "gpu-fp32"


@pytest.mark.parametrize("name, model", [("worker-1", "quadro-rtx-8000"), ("six-a6000", "rtx-a6000")])
@pytest.mark.parametrize("objective, num_videos", [("latency", 1), ("throughput", 6), ("throughput", 100)])
def test_a_six_gpu_node_never_gets_sequence_parallel_degree_6(name, model, objective, num_videos):
    inv = inventory((name, model, 6))
    verdict = node_plan(PlanRequest("360p", "4s", objective=objective, num_videos=num_videos), inv)
    assert verdict.feasible
    for c in verdict.candidates:
        assert 16 % c.layout.sp == 0 and c.layout.gpus <= 6
        assert c.layout.gpus == c.layout.replicas * c.layout.sp * (2 if c.layout.cfg_parallel else 1)
    layout = verdict.chosen.layout
    if objective == "latency":
        assert layout.replicas == 1 and layout.gpus in (1, 2, 4)
    else:
        assert layout.gpus == 6 and layout.replicas in (3, 6)  # e.g. 3 replicas x 2 GPUs


def test_six_gpus_pinned_make_replicas_not_sp6():
    verdict = node_plan(PlanRequest("720p", "4s", nodes="worker-5", gpus=6, num_videos=3, t5="offload"))
    assert verdict.feasible
    assert {c.layout.sp for c in verdict.candidates} == {1, 2}
    assert verdict.chosen.layout.gpus == 6 and verdict.chosen.layout.replicas == 3


def test_sp_6_is_refused_before_planning_with_the_valid_degrees():
    with pytest.raises(InvalidChoice) as err:
        PlanRequest("720p", "4s", sp=6)
    assert "valid choices: 1, 2, 4, 8, 16" in err.value.message
    assert "16 attention heads" in err.value.hint


def test_64_frames_warns_that_it_is_not_a_trained_length():
    request = PlanRequest("720p", "64")
    assert request.num_frames == 64
    (warning,) = request.warnings
    assert "64 frames is not a length" in warning and "4s (102 frames)" in warning
    assert PlanRequest("720p", 64).warnings == request.warnings
    assert plan(SEED, request).warnings == request.warnings


@pytest.mark.parametrize("frames", ["3s", "8sec", "0", "-1", "", "4.5", "four", True])
def test_bad_frame_counts_are_errors_listing_the_valid_keys(frames):
    with pytest.raises(InvalidChoice) as err:
        PlanRequest("720p", frames)
    message = err.value.message
    assert repr(frames) in message
    for key in ("2s", "4s", "8s", "16s", "32s", "1x", "16x", "a positive integer"):
        assert key in message


@pytest.mark.parametrize("frames, warns", [("4s", False), ("2x", False), ("1", False), (102, False), ("32s", True),
                                           ("100", True)])
def test_trained_lengths_do_not_warn(frames, warns):
    assert bool(PlanRequest("360p", frames).warnings) is warns


def test_untrained_resolution_and_length_pairs_warn():
    (warning,) = PlanRequest("720p", "8s").warnings
    assert "720p 8s was never trained" in warning


# ---------------------------------------------------------------- calibration through the planner


def test_seed_4x_a6000_run_reproduced_by_pinning_upstreams_layout():
    request = PlanRequest("720p", "4s", nodes="worker-5", gpus=4, sp=4, cfg_parallel=False, t5="gpu-fp32",
                          vae_micro_batch=4)
    verdict = node_plan(request)
    assert verdict.feasible
    assert abs(verdict.chosen.seconds / 275 - 1) <= 0.30


# ---------------------------------------------------------------- request validation


@pytest.mark.parametrize("changes, what", [
    ({"task": "predict"}, "task"),
    ({"objective": "fast"}, "objective"),
    ({"resolution": "721p"}, "resolution"),
    ({"aspect_ratio": "16:10"}, "aspect ratio"),
    ({"num_videos": 0}, "num_videos"),
    ({"gpus": -1}, "gpus"),
    ({"dtype": "fp32"}, "--dtype"),
    ({"attention": "flash"}, "--attention"),
    ({"t5": "cpu"}, "--t5"),
    ({"vae_micro_batch": 0}, "vae_micro_batch"),
    ({"sp": 3}, "--sp"),
])
def test_bad_requests_name_the_value_and_the_choices(changes, what):
    with pytest.raises(InvalidChoice) as err:
        PlanRequest(**{"resolution": "720p", "frames": "4s", **changes})
    assert err.value.what.startswith(what)
    assert "valid choices" in err.value.message


@pytest.mark.parametrize("pins", [{"sp": 2}, {"cfg_parallel": True}])
def test_training_has_no_sequence_or_cfg_parallelism(pins):
    with pytest.raises(UserError, match="training has no sequence or CFG parallelism"):
        PlanRequest("360p", "4s", task="train", **pins)


def test_unknown_node_is_an_error_naming_the_nodes():
    with pytest.raises(InvalidChoice, match="worker-9"):
        plan(SEED, PlanRequest("720p", "4s", nodes="worker-9"))


# ---------------------------------------------------------------- pins that a node cannot honour


@pytest.mark.parametrize("pins, node, words", [
    ({"gpus": 4}, "worker-8", "--gpus 4: the node has 2 GPUs"),
    ({"gpus": 1, "cfg_parallel": True}, "worker-8", "no layout of exactly 1 GPUs fits --cfg-parallel True"),
    ({"gpus": 2, "sp": 1, "cfg_parallel": False}, "worker-8", "at most 1 replica(s)"),
])
def test_impossible_pins_make_the_node_infeasible_with_the_reason(pins, node, words):
    verdict = node_plan(PlanRequest("360p", "2s", nodes=node, **pins))
    assert not verdict.feasible
    assert any(words in r for r in verdict.reasons), verdict.reasons


def test_sp_beyond_the_patch_rows_is_fine_because_tokens_not_rows_are_sharded():
    # 144p has 9 patch rows; upstream's row padding would give 7 of 16 ranks nothing but padding.
    # Tokens are sharded here: 144 tokens per frame, 9 per rank, no padding at all.
    verdict = node_plan(PlanRequest("144p", "2s", nodes="big", sp=16, gpus=16, cfg_parallel=False),
                        inventory(("big", "rtx-a6000", 16)))
    assert verdict.feasible and verdict.chosen.layout.sp == 16
    assert cm.Workload.of("infer", 51, 144, 256).spatial_tokens(16) == 144


def test_every_rejected_candidate_carries_a_reason_and_every_feasible_one_fits():
    for verdict in plan(SEED, PlanRequest("720p", "8s", num_videos=4)).nodes:
        for c in verdict.candidates:
            if c.feasible:
                assert c.memory.peak <= c.budget_gib
            else:
                assert c.reason and ("GiB" in c.reason or "tokens of a frame" in c.reason)


# ---------------------------------------------------------------- choosing


def test_choose_picks_the_fastest_feasible_node():
    result = plan(SEED, PlanRequest("720p", "4s"))
    best = choose(result)
    assert best.feasible
    assert best.chosen.seconds == min(n.chosen.seconds for n in result.nodes if n.feasible)
    assert choose(result, "worker-7").name == "worker-7"


def test_choose_refuses_an_infeasible_node_naming_reasons_and_alternatives():
    result = plan(SEED, PlanRequest("720p", "4s", nodes="worker-3,worker-5", t5="gpu-fp32"))
    with pytest.raises(UserError) as err:
        choose(result, "worker-3")
    assert "worker-3 cannot run 720p 9:16 4s (102 frames)" in err.value.message
    assert "T5 fp32" in err.value.message
    assert err.value.hint.startswith("try --t5")
    assert choose(result).name == "worker-5"
    with pytest.raises(InvalidChoice):
        choose(result, "worker-1")


def test_choose_with_no_feasible_node_lists_every_nodes_reason():
    result = plan(SEED, PlanRequest("720p", "16s", nodes="worker-8", t5="gpu-fp32"))
    with pytest.raises(UserError, match="no node can run 720p 9:16 16s.*worker-8: needs") as err:
        choose(result)
    assert err.value.hint and "--t5" in err.value.hint


# ---------------------------------------------------------------- objectives, fabrics, training


def test_throughput_objective_uses_replicas_for_a_sweep():
    latency = node_plan(PlanRequest("360p", "4s", nodes="worker-5", num_videos=64))
    throughput = node_plan(PlanRequest("360p", "4s", nodes="worker-5", num_videos=64, objective="throughput"))
    assert throughput.chosen.videos_per_hour > latency.chosen.videos_per_hour
    assert throughput.chosen.layout.replicas > 1
    assert latency.chosen.seconds <= throughput.chosen.seconds


def test_replicas_never_exceed_the_number_of_videos():
    for verdict in plan(SEED, PlanRequest("360p", "4s", num_videos=3)).nodes:
        assert all(c.layout.replicas <= 3 for c in verdict.candidates)


def test_a_faster_fabric_never_slows_a_plan_down():
    inv = inventory(("shm", "rtx-a6000", 8, {"type": "pcie", "p2p": False}),
                    ("p2p", "rtx-a6000", 8, {"type": "pcie", "p2p": True}),
                    ("switch", "a100-80gb-sxm4", 8, {"type": "nvswitch"}))
    shm, p2p, switch = plan(inv, PlanRequest("720p", "8s")).nodes
    assert p2p.chosen.seconds <= shm.chosen.seconds
    assert not p2p.reasons and any("unknown" in r for r in node_plan(PlanRequest("720p", "8s", nodes="worker-5")).reasons)
    assert switch.chosen.layout.sp >= 4


def test_training_plans_are_data_parallel():
    verdict = node_plan(PlanRequest("360p", "4s", task="train", nodes="worker-5"))
    assert verdict.feasible
    layout = verdict.chosen.layout
    assert (layout.sp, layout.cfg_parallel, layout.replicas) == (1, False, layout.gpus)


def test_equal_nodes_get_equal_plans():
    first, second = plan(SEED, PlanRequest("720p", "4s", nodes="worker-5,worker-6")).nodes
    assert first.to_dict() | {"name": None} == second.to_dict() | {"name": None}


# ---------------------------------------------------------------- contract: JSON shape, purity


def test_json_fields_are_exactly_the_contract():
    data = plan(SEED, PlanRequest("720p", "4s", t5="gpu-fp32")).to_dict()
    json.dumps(data)  # serialisable as is
    assert [n["name"] for n in data["nodes"]] == [f"worker-{i}" for i in range(1, 9)]
    for node in data["nodes"]:
        assert set(node) == NODE_KEYS
        assert set(node["predicted"]) == PREDICTED_KEYS
        assert node["layout"] is None or set(node["layout"]) == {"gpus", "sp", "cfg_parallel", "replicas"}
        assert isinstance(node["reasons"], list) and isinstance(node["alternatives"], list)
        if not node["feasible"]:
            assert node["reasons"] and node["predicted"]["seconds_per_video"] is None
            assert node["predicted"]["peak_gib_per_gpu"] > node["predicted"]["usable_gib_per_gpu"] * 0.95


def test_planning_is_pure_and_never_imports_torch():
    code = (
        "import sys\n"
        "from clusterkit.inventory import load_inventory\n"
        "from clusterkit.planner import PlanRequest, plan\n"
        f"inv = load_inventory({str(ROOT / 'nodes.yaml')!r})\n"
        "result = plan(inv, PlanRequest('720p', '4s', num_videos=8, objective='throughput'))\n"
        "result.to_dict()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERKIT_")}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr


def test_plan_does_not_touch_the_environment(monkeypatch):
    before = plan(SEED, PlanRequest("720p", "4s")).to_dict()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("CLUSTERKIT_INVENTORY", "/nonexistent.yaml")
    assert plan(SEED, PlanRequest("720p", "4s")).to_dict() == before


# ---------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml"), "COLUMNS": "80"}
    env.pop("SLURM_CONF", None)
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_cli_plan_json_envelope():
    proc = run_cli("plan", "infer", "--res", "720p", "--frames", "4s", "--nodes", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "clusterkit/v1" and data["command"] == "plan" and data["ok"] is True
    assert [set(n) for n in data["result"]["nodes"]] == [NODE_KEYS] * 8


def test_cli_plan_table_fits_80_columns():
    proc = run_cli("plan", "infer", "--res", "720p", "--frames", "4s", "--nodes", "all", "--t5", "gpu-fp32")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in proc.stdout  # no column was squeezed
    for name in [f"worker-{i}" for i in range(1, 9)]:
        assert any(line.startswith(name) for line in lines)
    assert "worker-3 cannot run" in proc.stdout and "try: --t5" in proc.stdout


@pytest.mark.parametrize("args, code, words", [
    (("--frames", "3s"), 2, "valid choices: 1x, 2x"),
    (("--frames", "8sec"), 2, "a positive integer"),
    (("--frames", "4s", "--sp", "6"), 2, "16 attention heads"),
    (("--frames", "4s", "--node", "worker-3", "--nodes", "all"), 2, "either --node or --nodes"),
    (("--frames", "4s", "--node", "worker-3", "--t5", "gpu-fp32"), 1, "worker-3 cannot run"),
])
def test_cli_plan_errors_and_exit_codes(args, code, words):
    proc = run_cli("plan", "--res", "720p", *args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert words in proc.stdout + proc.stderr


def test_cli_plan_warns_on_64_frames():
    proc = run_cli("plan", "--res", "360p", "--frames", "64", "--node", "worker-5")
    assert proc.returncode == 0
    assert "warning:" in proc.stdout and "64 frames is not a length" in proc.stdout


def test_every_example_in_docs_planner_runs():
    text = (ROOT / "docs" / "planner.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.splitlines() if line.startswith("clusterkit ")]
    assert len(commands) >= 5
    for argv in commands:
        proc = run_cli(*argv[1:])
        assert proc.returncode in (0, 1), (argv, proc.stderr)
        assert proc.stdout.strip(), argv


def test_cli_plan_uses_a_6_gpu_node_without_a_6_way_split():
    # The seed's NCCL timeout: upstream splits the world 6 ways and 16 heads do not divide by 6.
    # A sweep uses all six GPUs as replicas of legal groups; one video uses at most 4, and says why.
    proc = run_cli("plan", "infer", "--res", "360p", "--frames", "4s", "--node", "worker-1", "--num-videos", "12",
                   "--objective", "throughput", "--json")
    assert proc.returncode == 0, proc.stderr
    (node,) = json.loads(proc.stdout)["result"]["nodes"]
    layout = node["layout"]
    assert node["feasible"] and layout["gpus"] == 6 and layout["sp"] in cm.SP_DEGREES
    assert layout["gpus"] == layout["replicas"] * layout["sp"] * (2 if layout["cfg_parallel"] else 1)
    single = node_plan(PlanRequest("360p", "4s", nodes="worker-1"))
    assert single.chosen.layout.gpus == 4 and any("2 of 6 GPUs idle" in r for r in single.reasons)
    assert all(c.layout.sp != 6 for c in single.candidates)


def test_the_communication_charged_is_that_of_the_sp_scheme_the_job_runs():
    # worker-5: 4x A6000 on PCIe, SP over all 4 GPUs; the same layout planned for each scheme
    pinned = dict(gpus=4, sp=4, cfg_parallel=False, dtype="bf16", attention="fused", t5="gpu-bf16", vae_micro_batch=1)
    by_scheme = {s: node_plan(PlanRequest("720p", "4s", nodes="worker-5", sp_scheme=s, **pinned)).chosen
                 for s in ("dsp", "ulysses")}
    dsp, ulysses = by_scheme["dsp"], by_scheme["ulysses"]
    assert dsp.settings.sp_scheme == "dsp" and ulysses.settings.sp_scheme == "ulysses"
    assert ulysses.timing.comm > dsp.timing.comm > 0  # Ulysses sends 4 hidden-sized all-to-alls per block, DSP 2
    assert ulysses.timing.dit == dsp.timing.dit and ulysses.memory.peak == dsp.memory.peak  # only the traffic differs
    with pytest.raises(InvalidChoice, match="--sp-scheme 'ring'"):
        PlanRequest("720p", "4s", sp_scheme="ring")


def test_training_plans_refuse_an_sp_scheme():
    with pytest.raises(UserError, match="training plans use data parallelism") as err:
        PlanRequest("240p", "2s", task="train", sp_scheme="ulysses")
    assert "--sp-scheme" in err.value.hint
    assert PlanRequest("240p", "2s").scheme == "dsp"  # unset: the default scheme is planned
