"""Preflight checks, table-driven over facts of real nodes (tests/unit/data/preflight/*.json):
RTX 8000 (Turing, CUDA 12.2 and 12.4 drivers), RTX 3090, RTX A6000, A100 80GB SXM4, RTX 4090.
No GPU needed: the facts are data, the checks are pure."""

import json
from pathlib import Path

import pytest

from clusterkit.inventory import load_inventory, parse_inventory
from clusterkit.preflight.checks import (
    FAIL,
    PASS,
    WARN,
    CheckResult,
    nccl_default_interfaces,
    nccl_ifname_matches,
    run_checks,
    run_job_checks,
    summarize,
)

from preflight_fakes import FIXTURES, NODE_OF, load_facts

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = load_inventory(ROOT / "nodes.yaml")
GIB = 1024**3


def checks_of(facts, node="worker-5", plan=None, inventory=INVENTORY):
    return {c.name: c for c in run_checks(facts, inventory.node(node), plan, inventory=inventory)}


def one_node_inventory(body: str):
    """An inventory with one node, for checks that depend on nodes.yaml contents."""
    return parse_inventory("version: 1\nnodes:\n" + body, path="test-nodes.yaml")


# ---------------------------------------------------------------------------- every fixture, as measured


EXPECTED = {
    # Turing on a CUDA 12.2 driver with upstream's cu121 stack: healthy, but Open-Sora's bf16 /
    # flash-attn defaults cannot run (the seed's "Version Error").
    "rtx8000_cuda122": {"nvidia-driver": PASS, "torch": PASS, "driver-cuda": PASS, "nvcc": PASS,
                        "precision": WARN, "attention": PASS, "p2p": PASS, "inventory-gpu-model": PASS,
                        "inventory-gpu-count": PASS, "inventory-cuda": PASS, "inventory-driver": WARN},
    # Turing on a CUDA 12.4 driver: the driver is fine for cu121; the system nvcc 12.4 is what breaks
    # extension builds (the seed's "CUDA 12.4"), and a flash-attn wheel that cannot load is flagged.
    "rtx8000_cuda124": {"driver-cuda": PASS, "nvcc": WARN, "precision": WARN, "attention": WARN,
                        "inventory-cuda": PASS, "packages": PASS},
    # GeForce 3090: cu124 torch on a 12.2 driver (minor-version compatibility only), no nvcc, no ECC,
    # no P2P, persistence off.
    "rtx3090": {"driver-cuda": WARN, "nvcc": WARN, "gpu-health": WARN, "precision": PASS, "attention": PASS,
                "p2p": PASS, "inventory-p2p": WARN, "inventory-gpu-memory": PASS},
    "a6000": {"nvidia-driver": PASS, "gpu-health": PASS, "torch": PASS, "driver-cuda": PASS, "nvcc": PASS,
              "precision": PASS, "attention": PASS, "p2p": PASS, "inventory-gpu-model": PASS,
              "inventory-gpu-count": PASS, "inventory-gpu-memory": PASS, "inventory-cuda": PASS,
              "inventory-nccl": WARN, "inventory-p2p": WARN, "inventory-nics": WARN, "dev-shm": PASS, "disk": PASS,
              "host-resources": PASS, "nccl-socket-ifname": PASS, "rendezvous-port": PASS},
    # nodes.yaml says only "a100" (variant unknown): the exact variant is a warning with the edit.
    "a100": {"inventory-gpu-model": WARN, "inventory-cuda": WARN, "precision": PASS, "gpu-health": PASS},
    # 4090: no P2P and NCCL_P2P_DISABLE=1 set, as nodes.yaml records.
    "rtx4090": {"p2p": PASS, "inventory-p2p": PASS, "precision": PASS, "torch": PASS},
}


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_checks(fixture):
    facts = load_facts(fixture)
    node = NODE_OF[fixture]
    results = run_checks(facts, INVENTORY.node(node), inventory=INVENTORY)
    by_name = {c.name: c for c in results}
    for name, status in EXPECTED[fixture].items():
        assert by_name[name].status == status, (name, by_name[name])
    for c in results:
        assert c.node == node and c.status in (PASS, WARN, FAIL) and c.detail
        assert c.checked, c  # every fact is there: nothing is left unchecked
        if c.status != PASS:
            assert c.remedy, c
    assert not [c for c in results if c.status == FAIL]  # these nodes are usable as measured
    json.dumps([c.to_dict() for c in results])


def test_seed_cuda_124_complaint_is_nvcc_not_the_driver():
    c = checks_of(load_facts("rtx8000_cuda124"), "worker-2")
    assert c["driver-cuda"].status == PASS and "12.4 >= torch's CUDA 12.1" in c["driver-cuda"].detail
    assert "nvcc 12.4" in c["nvcc"].detail and "Open-Sora #134" in c["nvcc"].detail
    assert "CUDA_HOME=/usr/local/cuda-12.1" in c["nvcc"].remedy
    assert "env/requirements-cu124.txt" in c["nvcc"].remedy  # the driver supports 12.4, so torch can follow nvcc
    assert "Version Error" in c["precision"].detail and "fp16" in c["precision"].remedy
    assert "undefined symbol" in c["attention"].detail and "Open-Sora #338" in c["attention"].detail


def test_inventory_edits_point_at_nodes_yaml_lines():
    c = checks_of(load_facts("a100"), "worker-4")
    model = c["inventory-gpu-model"]
    assert model.edit["key"] == "gpu.model" and model.edit["value"] == "a100-80gb-sxm4"
    assert model.edit["line"] == INVENTORY.line_of("worker-4", "gpu.model")
    assert f"nodes.yaml:{model.edit['line']}: set model: a100-80gb-sxm4" in model.remedy
    cuda = c["inventory-cuda"]
    assert cuda.edit["value"] == "12.4" and cuda.edit["yaml"] == '"12.4"'
    assert f":{INVENTORY.line_of('worker-4', 'cuda')}: set cuda: \"12.4\"" in cuda.remedy
    nics = c["inventory-nics"]
    assert nics.edit["value"] == ["eno1", "ib0"] and nics.edit["yaml"] == "[eno1, ib0]"  # no docker0, no lo


# ---------------------------------------------------------------------------- one change at a time


def _set(path, value):
    def mutate(facts):
        target = facts
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _each_gpu(key, value):
    def mutate(facts):
        for g in facts["nvidia"]["gpus"]:
            g[key] = value
    return mutate


def _first_gpu(key, value):
    def mutate(facts):
        facts["nvidia"]["gpus"][0][key] = value
    return mutate


def _drop_gpu(facts):
    facts["nvidia"]["gpus"].pop()


def _interface_down(name):
    def mutate(facts):
        for i in facts["network"]["interfaces"]:
            if i["name"] == name:
                i["up"] = False
    return mutate


def _partial_p2p(facts):
    m = facts["p2p"]["matrix"]
    m[0][4] = m[4][0] = False


def _cpu_torch(facts):
    facts["torch"].update(version="2.3.0+cpu", cuda=None, cuda_available=False, device_count=0, nccl=None,
                          capabilities=[], arch_list=[], p2p_matrix=None)


MUTATIONS = [
    # (fixture, node, change, check, status, text in detail or remedy)
    ("a6000", "worker-5", _set(("shm", "free_bytes"), 60 * 1024**2), "dev-shm", FAIL, "N10"),
    ("a6000", "worker-5", _set(("shm", "free_bytes"), 700 * 1024**2), "dev-shm", WARN, "under 1 GiB"),
    ("a6000", "worker-5", _set(("shm", "nccl_segments"), 3), "dev-shm", WARN, "rm /dev/shm/nccl-*"),
    ("a6000", "worker-5", _set(("disk", "free_bytes"), 500 * 1024**2), "disk", FAIL, "under 1 GiB"),
    ("a6000", "worker-5", _set(("disk", "free_bytes"), 10 * GIB), "disk", WARN, "training checkpoint"),
    ("a6000", "worker-5", _set(("host", "memory_available_bytes"), 16 * GIB), "host-resources", WARN, "T5-XXL"),
    ("a6000", "worker-5", _set(("host", "cpus_logical"), 4), "host-resources", WARN, "4 CPUs for 8 ranks"),
    ("a6000", "worker-5", _set(("env", "NCCL_SOCKET_IFNAME"), "eth2"), "nccl-socket-ifname", FAIL, "N11"),
    ("a6000", "worker-5", _set(("env", "NCCL_SOCKET_IFNAME"), "=eno"), "nccl-socket-ifname", FAIL, "matches no"),
    ("a6000", "worker-5", _set(("env", "NCCL_SOCKET_IFNAME"), "^docker,lo"), "nccl-socket-ifname", PASS,
     "selects eno1, ib0"),
    ("a6000", "worker-5", _set(("env", "NCCL_SOCKET_IFNAME"), "=eno1"), "nccl-socket-ifname", PASS, "selects eno1"),
    ("a6000", "worker-5", _set(("env", "NCCL_SOCKET_IFNAME"), "lo"), "nccl-socket-ifname", WARN, "loopback"),
    ("a6000", "worker-5", lambda f: (_set(("env", "NCCL_SOCKET_IFNAME"), "ib")(f), _interface_down("ib0")(f)),
     "nccl-socket-ifname", FAIL, "none is up"),
    ("a6000", "worker-5", _set(("ports", "checked"), [{"port": 24000, "why": "requested", "free": False,
                                                       "error": None}]), "rendezvous-port", FAIL, "R1"),
    ("a6000", "worker-5", _set(("ports", "checked"), [{"port": 29500, "why": "torch default", "free": False,
                                                       "error": None}]), "rendezvous-port", WARN, "29500"),
    ("a6000", "worker-5", _first_gpu("ecc", {"enabled": True, "pending": False, "uncorrected_volatile": 2}),
     "gpu-health", FAIL, "uncorrected ECC"),
    ("a6000", "worker-5", _first_gpu("remapped_rows", {"correctable": 0, "uncorrectable": 3, "pending": False,
                                                       "failure": True}), "gpu-health", FAIL, "row remapping failed"),
    ("a6000", "worker-5", _first_gpu("remapped_rows", {"correctable": 0, "uncorrectable": 1, "pending": True,
                                                       "failure": False}), "gpu-health", WARN, "nvidia-smi -r"),
    ("a6000", "worker-5", _first_gpu("retired_pages", {"double_bit": 1, "single_bit": 0, "pending": True}),
     "gpu-health", WARN, "page retirement pending"),
    ("a6000", "worker-5", lambda f: (_first_gpu("memory_used_mib", 20000)(f), _first_gpu("compute_processes", 1)(f)),
     "gpu-health", WARN, "in use by 1 process"),
    ("a6000", "worker-5", _drop_gpu, "inventory-gpu-count", FAIL, "set count: 7"),
    ("a6000", "worker-7", lambda f: None, "inventory-gpu-model", FAIL, "set model: rtx-a6000"),
    ("rtx8000_cuda124", "worker-1", lambda f: None, "inventory-cuda", FAIL, 'set cuda: "12.4"'),
    ("a6000", "worker-5", _cpu_torch, "torch", FAIL, "env/requirements-cu121.txt"),
    ("a6000", "worker-5", _set(("torch", "error"), "CUDA initialisation failed: RuntimeError: CUDA driver version is "
                                                    "insufficient"), "torch", FAIL, "insufficient"),
    ("a6000", "worker-5", _set(("torch", "device_count"), 4), "torch", WARN, "CUDA_VISIBLE_DEVICES lists 8"),
    ("a100", "worker-4", _each_gpu("compute_capability", [12, 0]), "torch", FAIL, "no kernels for sm_120"),
    ("a6000", "worker-5", _set(("nvidia", "cuda_version"), "11.8"), "driver-cuda", FAIL, "another major"),
    ("a6000", "worker-5", _set(("nvcc", "version"), "11.8"), "nvcc", FAIL, "another major version"),
    ("a6000", "worker-5", _partial_p2p, "p2p", WARN, "0-4"),
    ("a6000", "worker-5", _partial_p2p, "inventory-p2p", PASS, "some GPU pairs only"),
    ("rtx8000_cuda122", "worker-1", _set(("packages", "flash_attn"), {"installed": True, "version": "2.5.8",
                                                                      "importable": True, "import_error": None}),
     "attention", WARN, "never used"),
    ("a6000", "worker-5", _set(("packages", "apex"), {"installed": True, "version": "0.1", "importable": False,
                                                      "import_error": "ModuleNotFoundError: No module named 'torch._six'"}),
     "packages", WARN, "torch._six"),
    ("a6000", "worker-5", lambda f: f["nvidia"]["gpus"][7].update(name="NVIDIA A40"), "inventory-gpu-model", FAIL,
     "mixed GPU models"),
    ("a6000", "worker-5", _each_gpu("name", "NVIDIA A10G"), "inventory-gpu-model", WARN, "does not know"),
    ("a6000", "worker-5", _each_gpu("memory_total_mib", 40000), "inventory-gpu-memory", WARN, "planner budgets"),
    ("a6000", "worker-5", _each_gpu("persistence_mode", False), "gpu-health", WARN, "nvidia-smi -pm 1"),
]


@pytest.mark.parametrize("fixture,node,change,check,status,text", MUTATIONS,
                         ids=[f"{m[3]}-{m[4]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_one_change(fixture, node, change, check, status, text):
    facts = load_facts(fixture)
    change(facts)
    result = checks_of(facts, node)[check]
    assert result.status == status, result
    assert text in result.detail + " " + result.remedy, result


def test_inventory_disagreements_carry_the_edit():
    inventory = one_node_inventory(
        "  - name: gpu9\n    gpu: {model: rtx-a6000, count: 8}\n    cuda: \"12.2\"\n    driver: \"535.86.10\"\n"
        "    nccl: \"2.18\"\n    interconnect: {p2p: false}\n    nics: [eth0]\n")
    facts = load_facts("a6000")
    c = checks_of(facts, "gpu9", inventory=inventory)
    assert c["inventory-driver"].status == FAIL and c["inventory-driver"].edit["value"] == "535.104.05"
    assert c["inventory-driver"].edit["line"] == 6 and "test-nodes.yaml:6: set driver: \"535.104.05\"" in \
        c["inventory-driver"].remedy
    assert c["inventory-nccl"].status == FAIL and c["inventory-nccl"].edit["line"] == 7  # 2.18 vs 2.20.5
    assert c["inventory-p2p"].status == FAIL and c["inventory-p2p"].edit["value"] is True
    assert c["inventory-nics"].status == FAIL and "eth0 does not exist" in c["inventory-nics"].detail
    assert c["inventory-nics"].edit["value"] == ["eno1", "ib0"]
    facts["torch"]["nccl"] = "2.18.1"  # a shorter version in nodes.yaml is a prefix
    assert checks_of(facts, "gpu9", inventory=inventory)["inventory-nccl"].status == PASS


def test_a_key_the_node_lacks_is_added_under_the_node():
    inventory = one_node_inventory("  - name: gpu9\n    gpu: {model: rtx-a6000, count: 8}\n")
    c = checks_of(load_facts("a6000"), "gpu9", inventory=inventory)
    assert c["inventory-cuda"].status == WARN
    assert c["inventory-cuda"].remedy.startswith('test-nodes.yaml:3: add cuda: "12.2" to node gpu9')


def test_nccl_socket_ifname_from_nodes_yaml_wins_over_the_environment():
    inventory = one_node_inventory("  - name: gpu9\n    gpu: {model: rtx-a6000, count: 8}\n"
                                   "    nccl_env: {NCCL_SOCKET_IFNAME: eth}\n")
    facts = load_facts("a6000")
    facts["env"]["NCCL_SOCKET_IFNAME"] = "ib"  # would be fine, but the job gets nodes.yaml's value
    c = checks_of(facts, "gpu9", inventory=inventory)["nccl-socket-ifname"]
    assert c.status == FAIL and "from nodes.yaml nccl_env" in c.detail and "nccl_env for gpu9" in c.remedy


def test_geforce_p2p_reported_without_p2p_disable_warns_with_the_edit():
    inventory = one_node_inventory("  - name: g8\n    gpu: {model: rtx-4090, count: 2}\n")
    facts = load_facts("rtx4090")
    facts["env"].pop("NCCL_P2P_DISABLE")
    facts["p2p"]["matrix"] = [[None, True], [True, None]]
    c = checks_of(facts, "g8", inventory=inventory)
    assert c["p2p"].status == WARN and "N8" in c["p2p"].detail
    assert c["p2p"].edit["key"] == "nccl_env.NCCL_P2P_DISABLE" and c["p2p"].edit["yaml"] == '"1"'


# ---------------------------------------------------------------------------- with a plan


def _plan(name="worker-5", *, feasible=True, gpus=4, peak=30.0, dtype="bf16", attention="fused", reasons=(),
          alternatives=()):
    return {"name": name, "gpu_model": "rtx-a6000", "feasible": feasible,
            "layout": {"gpus": gpus, "sp": gpus, "cfg_parallel": False, "replicas": 1}, "dtype": dtype,
            "attention": attention, "t5": "gpu-bf16", "vae_micro_batch": 2,
            "predicted": {"peak_gib_per_gpu": peak, "usable_gib_per_gpu": 44.56, "seconds_per_video": 300.0,
                          "videos_per_hour": 12.0},
            "reasons": list(reasons), "alternatives": list(alternatives)}


def _busy(n_gpus, used_mib):
    def mutate(facts):
        for g in facts["nvidia"]["gpus"][:n_gpus]:
            g["memory_used_mib"] = used_mib
            g["memory_free_mib"] = g["memory_total_mib"] - used_mib
    return mutate


PLAN_CASES = [
    # (fixture, node, plan, change, check, status, text)
    ("a6000", "worker-5", _plan(peak=30.0), None, "plan-memory", PASS, "fits: 4 GPU(s)"),
    ("a6000", "worker-5", _plan(peak=47.0), None, "plan-memory", WARN, "within 5%"),
    ("a6000", "worker-5", _plan(peak=49.0), None, "plan-memory", FAIL, "> free memory"),
    ("a6000", "worker-5", _plan(gpus=8, peak=30.0), _busy(3, 40000), "plan-memory", FAIL, "only 5 GPU(s)"),
    ("a6000", "worker-5", _plan(gpus=4, peak=30.0), _busy(3, 40000), "plan-memory", PASS, "fits"),
    ("a6000", "worker-5", _plan(gpus=16), None, "plan-memory", FAIL, "the node has 8"),
    ("rtx3090", "worker-3", _plan("worker-3", feasible=False, peak=27.0, reasons=[
        "needs 27.0 GiB/GPU, over the 22.5 GiB budget of a GeForce RTX 3090"],
        alternatives=[{"summary": "--t5 offload --vae-micro-batch 2 (13.6 GiB/GPU, 303 s/video on 8 GPUs)"}]),
     None, "plan-memory", FAIL, "--t5 offload"),
    ("rtx8000_cuda122", "worker-1", _plan("worker-1", dtype="bf16", attention="unfused"), None, "precision", FAIL,
     "Version Error"),
    ("rtx8000_cuda122", "worker-1", _plan("worker-1", dtype="fp16", attention="fused"), None, "attention", FAIL,
     "FlashAttention-2 needs sm80+"),
    ("rtx8000_cuda122", "worker-1", _plan("worker-1", dtype="fp16", attention="unfused", peak=35.0), None,
     "precision", PASS, "fp16 runs"),
    ("rtx8000_cuda122", "worker-1", _plan("worker-1", dtype="fp16", attention="unfused", peak=35.0), None,
     "attention", PASS, "as planned"),
    ("a6000", "worker-5", {"nodes": [_plan("worker-5", peak=49.0)]}, None, "plan-memory", FAIL, "> free memory"),
    ("a6000", "worker-5", {"nodes": [_plan("worker-6")]}, None, "plan-memory", WARN, "no entry for worker-5"),
]


@pytest.mark.parametrize("fixture,node,plan,change,check,status,text", PLAN_CASES,
                         ids=[f"{c[4]}-{c[5]}-{i}" for i, c in enumerate(PLAN_CASES)])
def test_with_a_plan(fixture, node, plan, change, check, status, text):
    facts = load_facts(fixture)
    if change:
        change(facts)
    result = checks_of(facts, node, plan)[check]
    assert result.status == status, result
    assert text in result.detail + " " + result.remedy, result


def test_without_a_plan_there_is_no_plan_check():
    assert "plan-memory" not in checks_of(load_facts("a6000"))


def test_the_real_planner_plan_feeds_the_checks():
    api = pytest.importorskip("clusterkit.preflight.api")
    plan = api.make_plan(INVENTORY, ["worker-1", "worker-3"], "720p", "4s")
    if plan is None:
        pytest.skip("clusterkit.planner is not available")
    turing = checks_of(load_facts("rtx8000_cuda122"), "worker-1", plan)
    assert turing["precision"].status != FAIL and turing["attention"].status != FAIL  # the planner chose fp16/unfused
    assert turing["plan-memory"].status in (PASS, WARN, FAIL)
    assert checks_of(load_facts("rtx3090"), "worker-3", plan)["plan-memory"].detail


# ---------------------------------------------------------------------------- missing facts are plain, never a crash


def _no_driver():
    facts = load_facts("a6000")
    facts["nvidia"] = {"available": False, "error": "no NVIDIA driver: NVML not found", "driver_version": None,
                       "cuda_version": None, "nvml_version": None, "gpus": [], "p2p_matrix": None}
    _cpu_torch(facts)
    facts["p2p"] = {"source": None, "matrix": None, "gpus": 0, "reason": "no NVIDIA driver: NVML not found"}
    return facts


def test_no_driver_fails_plainly_and_leaves_gpu_checks_unchecked():
    results = run_checks(_no_driver(), INVENTORY.node("worker-5"), _plan(), inventory=INVENTORY)
    c = {r.name: r for r in results}
    assert c["nvidia-driver"].status == FAIL and c["nvidia-driver"].detail == "no NVIDIA driver: NVML not found"
    assert c["torch"].status == FAIL and "CPU-only build" in c["torch"].detail
    for name in ("gpu-health", "driver-cuda", "nvcc", "p2p", "inventory-gpu-model", "inventory-gpu-count",
                 "inventory-cuda", "inventory-driver", "inventory-nccl", "inventory-p2p", "plan-memory"):
        assert c[name].status == WARN and not c[name].checked and c[name].detail.startswith("not checked"), c[name]
    assert c["precision"].status == PASS and "not measured" in c["precision"].detail  # falls back to the catalog
    assert summarize(results)["ok"] is False


@pytest.mark.parametrize("section", ["nvidia", "torch", "p2p", "nvcc", "packages", "shm", "disk", "network",
                                     "ports", "host", "env"])
def test_a_crashed_probe_section_is_reported_not_raised(section):
    facts = load_facts("a6000")
    facts[section] = {"error": f"probe {section!r} failed: RuntimeError: boom"}
    results = run_checks(facts, INVENTORY.node("worker-5"), _plan(), inventory=INVENTORY)
    assert all(isinstance(r, CheckResult) and r.detail for r in results)


def test_empty_facts_still_give_a_full_report():
    results = run_checks({}, INVENTORY.node("worker-5"), inventory=INVENTORY)
    assert len(results) > 15
    passed = [r for r in results if r.status == PASS]
    # only what nodes.yaml's GPU model answers by itself, and it says so
    assert {r.name for r in passed} == {"precision", "attention"}
    assert all("not measured" in r.detail for r in passed)


# ---------------------------------------------------------------------------- across the nodes of a job


def test_mixed_nccl_versions_fail_the_job():
    [check] = run_job_checks({"worker-5": load_facts("a6000"), "worker-8": load_facts("rtx4090")})
    assert check.name == "nccl-versions" and check.status == FAIL
    assert "worker-5: 2.20.5" in check.detail and "worker-8: 2.21.5" in check.detail and "N14" in check.detail


def test_matching_nccl_versions_pass():
    [check] = run_job_checks({"worker-5": load_facts("a6000"), "worker-1": load_facts("rtx8000_cuda122")})
    assert check.status == PASS and "2.20.5" in check.detail


def test_unknown_nccl_version_is_not_checked():
    [check] = run_job_checks({"worker-5": load_facts("a6000"), "worker-6": _no_driver()})
    assert check.status == WARN and not check.checked and "worker-6" in check.detail


def test_one_node_has_no_job_checks():
    assert run_job_checks({"worker-5": load_facts("a6000")}) == []


# ---------------------------------------------------------------------------- NCCL_SOCKET_IFNAME semantics


NAMES = ["docker0", "eno1", "eno2", "ib0", "ib1", "lo", "veth12ab"]


@pytest.mark.parametrize("spec,expected", [
    ("eno", ["eno1", "eno2"]),                       # a prefix
    ("eno,ib", ["eno1", "eno2", "ib0", "ib1"]),      # a list of prefixes
    ("=eno1", ["eno1"]),                             # exact
    ("=eno", []),                                    # exact: no interface is called "eno"
    ("^docker,lo,veth", ["eno1", "eno2", "ib0", "ib1"]),  # exclusion
    ("^=eno1", ["docker0", "eno2", "ib0", "ib1", "lo", "veth12ab"]),  # exact exclusion
    ("eth", []),
    (" ib0 , eno2 ", ["eno2", "ib0"]),
])
def test_nccl_ifname_semantics(spec, expected):
    assert nccl_ifname_matches(spec, NAMES) == expected


def test_nccl_default_choice_prefers_ib_then_anything_but_docker_and_lo():
    def iface(name, up=True):
        return {"name": name, "up": up, "ipv4": ["10.0.0.1"], "ipv6": []}

    assert nccl_default_interfaces([iface("docker0"), iface("eno1"), iface("ib0"), iface("lo")]) == ["ib0"]
    assert nccl_default_interfaces([iface("docker0"), iface("eno1"), iface("ib0", up=False), iface("lo")]) == ["eno1"]
    assert nccl_default_interfaces([iface("docker0"), iface("lo")]) == ["docker0"]
    assert nccl_default_interfaces([iface("lo")]) == ["lo"]
