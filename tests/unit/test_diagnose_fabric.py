"""Pure parts of `diagnose nccl`: hang detection from heartbeats, bandwidth expectations,
recommendations, and the nodes.yaml edit that keeps every comment."""

import argparse
import shutil
from pathlib import Path

import pytest

from clusterkit.diagnose.expected import annotate, expected_busbw
from clusterkit.diagnose.hang import find_hang
from clusterkit.diagnose.recommend import (
    EnvRecommendation, apply_env_edits, recommend_from_inventory, recommend_from_timings, render_edits,
)
from clusterkit.diagnose.sizes import parse_sizes
from clusterkit.inventory import load_inventory, parse_inventory
from clusterkit.launch.envprofiles import load_profiles
from clusterkit.launch.render import render_env
from clusterkit.launch.spec import LaunchSpec, node_slots

ROOT = Path(__file__).resolve().parents[2]
NOW = 1000.0


def beat(rank, step, state, t, members=(0, 1, 2, 3), op="all_reduce", host="h", node="n"):
    return {"rank": rank, "step": step, "state": state, "t": t, "members": list(members), "op": op,
            "scope": "world", "bytes": 8192, "host": f"{host}{rank}", "node": f"{node}{rank // 2}"}


def test_no_hang_while_everyone_moves_or_before_the_timeout():
    beats = {r: beat(r, 3, "enter", NOW - 5) for r in range(4)}
    assert find_hang(beats, now=NOW, timeout=10, world_size=4) is None  # waiting 5s < 10s
    assert find_hang({}, now=NOW, timeout=10, world_size=4) is None  # nothing started yet
    done = {r: {**beat(r, 9, "finished", NOW - 100)} for r in range(4)}
    assert find_hang(done, now=NOW, timeout=10, world_size=4) is None


def test_names_the_rank_that_never_arrived():
    beats = {r: beat(r, 3, "enter", NOW - 30) for r in (0, 1, 2)}
    beats[3] = beat(3, 2, "done", NOW - 31)
    hang = find_hang(beats, now=NOW, timeout=10, world_size=4)
    assert hang["step"] == 3 and hang["waiting"] == [0, 1, 2]
    assert [m["rank"] for m in hang["missing"]] == [3]
    assert hang["missing"][0]["host"] == "h3" and hang["missing"][0]["node"] == "n1"
    assert hang["verdict"].startswith("rank 3 never arrived at step 3 (all_reduce, world)")


def test_a_rank_that_never_started():
    beats = {r: beat(r, 0, "enter", NOW - 60, op="init_process_group") for r in (0, 1, 2)}
    hang = find_hang(beats, now=NOW, timeout=10, world_size=4)
    assert hang["missing"] == [{"rank": 3, "host": None, "node": None, "last": "no heartbeat: never started"}]


def test_only_members_of_the_step_count():
    # an inter-node pair (ranks 0 and 2): idle ranks 1 and 3 are not missing
    beats = {0: beat(0, 5, "enter", NOW - 20, members=(0, 2)), 1: beat(1, 5, "idle", NOW - 20, members=(0, 2)),
             2: beat(2, 4, "done", NOW - 21, members=(0, 1, 2, 3)), 3: beat(3, 5, "idle", NOW - 20, members=(0, 2))}
    hang = find_hang(beats, now=NOW, timeout=10, world_size=4)
    assert [m["rank"] for m in hang["missing"]] == [2]


def test_everyone_arrived_but_nothing_completes_is_a_link_problem():
    beats = {r: beat(r, 2, "enter", NOW - 30) for r in range(4)}
    hang = find_hang(beats, now=NOW, timeout=10, world_size=4)
    assert hang["missing"] == [] and "link or transport problem" in hang["verdict"]


@pytest.mark.parametrize("text, sizes", [
    ("8K,1M", [8192, 1048576]), ("8K:64K", [8192, 16384, 32768, 65536]), ("4096", [4096]),
    ("1G:1G", [1073741824]),
])
def test_sizes(text, sizes):
    assert parse_sizes(text) == sizes


@pytest.mark.parametrize("text", ["", "8X", "0", "1M:8K", "-1", "8K:"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sizes(text)


@pytest.fixture(scope="module")
def inventory():
    return load_inventory(ROOT / "nodes.yaml")


def test_expected_busbw_follows_the_fabric(inventory):
    assert expected_busbw(inventory.node("worker-8"), 2, "gloo")[0] is None  # CPU: nothing to compare
    value, why = expected_busbw(inventory.node("worker-8"), 2, "nccl")
    assert value == 12.0 and "without P2P" in why  # RTX 4090: no P2P, shared memory
    assert expected_busbw(inventory.node("worker-1"), 2, "nccl")[0] == 8.0  # Turing board: PCIe Gen3
    nvswitch = parse_inventory("version: 1\nnodes:\n  - name: h\n    gpu: {model: h100-sxm, count: 8}\n"
                               "    interconnect: {type: nvswitch}\n")
    assert expected_busbw(nvswitch.node("h"), 8, "nccl")[0] == 350.0


def test_annotate_flags_links_far_below_expectation(inventory):
    rows = [{"scope": "intra:worker-5", "ranks": 4, "op": "all_reduce", "bytes": 256 * 1024**2, "busbw_gbs": 2.0},
            {"scope": "intra:worker-5", "ranks": 4, "op": "all_reduce", "bytes": 8192, "busbw_gbs": 0.01},
            {"scope": "inter:worker-5-worker-6", "ranks": 2, "op": "all_reduce", "bytes": 256 * 1024**2,
             "busbw_gbs": 0.5}]
    out = annotate(rows, inventory, "nccl")
    assert out[0]["flag"] and "below half" in out[0]["flag"]
    assert out[1]["flag"] is None  # small messages are latency-bound: never flagged
    assert out[2]["expected_busbw_gbs"] is None and out[2]["flag"] is None


def test_recommendations_from_inventory_and_timings():
    text = (ROOT / "nodes.yaml").read_text().replace('      NCCL_P2P_DISABLE: "1"', '      NCCL_DEBUG: "WARN"')
    inventory = parse_inventory(text)
    recs = recommend_from_inventory(inventory, ["worker-5", "worker-8"])
    assert [(r.node, r.key, r.value) for r in recs] == [("worker-8", "NCCL_P2P_DISABLE", "1")]
    # already set in the shipped inventory: nothing to recommend
    assert recommend_from_inventory(load_inventory(ROOT / "nodes.yaml"), ["worker-8"]) == []
    p2p = parse_inventory("version: 1\nnodes:\n  - name: a\n    gpu: {model: rtx-a6000, count: 4}\n"
                          "    interconnect: {type: pcie, p2p: true}\n")
    rows = annotate([{"scope": "intra:a", "ranks": 4, "op": "all_to_all", "bytes": 1024**3, "busbw_gbs": 2.0}],
                    p2p, "nccl")
    [rec] = recommend_from_timings(p2p, rows)
    assert (rec.node, rec.key, rec.value) == ("a", "NCCL_P2P_DISABLE", "1")
    assert "all_to_all" in rec.reason
    assert 'NCCL_P2P_DISABLE: "1"' in render_edits([rec])


def test_apply_round_trips_nodes_yaml_keeping_comments(tmp_path, inventory):
    path = tmp_path / "nodes.yaml"
    shutil.copy(ROOT / "nodes.yaml", path)
    (tmp_path / "env").mkdir()
    shutil.copy(ROOT / "env" / "nccl.yaml", tmp_path / "env" / "nccl.yaml")
    before = path.read_text()
    apply_env_edits(path, [EnvRecommendation("worker-5", "NCCL_SOCKET_IFNAME", "^lo,docker", "test"),
                           EnvRecommendation("worker-8", "NCCL_SOCKET_IFNAME", "eth,en", "test")])
    after = path.read_text()
    removed = [l for l in before.splitlines() if l not in after.splitlines()]
    assert removed == []  # nothing lost: every comment, order and quoting kept
    added = [l for l in after.splitlines() if l not in before.splitlines()]
    assert added == ['    nccl_env: {NCCL_SOCKET_IFNAME: "^lo,docker"}', '      NCCL_SOCKET_IFNAME: "eth,en"']
    new = load_inventory(path)
    assert new.node("worker-5").nccl_env == {"NCCL_SOCKET_IFNAME": "^lo,docker"}
    assert new.node("worker-8").nccl_env == {"NCCL_P2P_DISABLE": "1", "NCCL_SOCKET_IFNAME": "eth,en"}
    # the next launch on that node uses it
    spec = LaunchSpec(run_id="r1", kind="collective", nodes=node_slots(new, "worker-5,worker-8"), gpus_per_node=2,
                      entry="opensora_core.collective_check")
    env = render_env(spec, load_profiles(tmp_path / "env" / "nccl.yaml"), tmp_path / "runs" / "r1")
    assert env["worker-5"].env["NCCL_SOCKET_IFNAME"] == "^lo,docker"
    assert env["worker-5"].source["NCCL_SOCKET_IFNAME"] == "node:worker-5"
    # applying again changes nothing
    apply_env_edits(path, [EnvRecommendation("worker-5", "NCCL_SOCKET_IFNAME", "^lo,docker", "test")])
    assert path.read_text() == after


def test_apply_refuses_what_the_loader_rejects(tmp_path):
    path = tmp_path / "nodes.yaml"
    shutil.copy(ROOT / "nodes.yaml", path)
    before = path.read_text()
    from clusterkit.errors import UserError

    with pytest.raises(UserError):
        apply_env_edits(path, [EnvRecommendation("worker-5", "NCCL_BLOCKING_WAIT", "1", "deprecated")])
    assert path.read_text() == before  # untouched


def test_recovered_ipv6_bind_fallback_is_not_a_port_clash():
    from clusterkit.diagnose.logs import diagnose, logs_from_texts
    from clusterkit.diagnose.signatures import match_line

    line = ("[I1122 02:54:12.167919675 TCPStoreLibUvBackend.cpp:1266] [c10d] Failed to bind to ipv6 address, "
            "trying ipv4. Error: The server socket has failed to listen on any local network address. port: 28620, "
            "useIpv6: true, code: -98, name: EADDRINUSE, message: address already in use")
    assert match_line(line) is None
    assert diagnose(logs_from_texts({"logs/node-worker-8.log": line + "\n"})).ok
    real = line.replace("Failed to bind to ipv6 address, trying ipv4. Error: ", "")
    assert match_line(real)[0].id == "R1"  # the same error without the fallback still is one


@pytest.mark.parametrize("inventory_gpus, executor, here, ranks", [
    (8, "slurm", 0, 8),  # on Slurm each node runs all of its own GPUs, whatever this machine has
    (8, "local", 0, 2),  # local, no GPU here: a couple of gloo ranks per simulated node
    (1, "local", 0, 1),  # never more ranks than the node has GPUs
    (8, "local", 4, 4),  # local on a 4-GPU machine: its GPUs bound it
    (2, "local", 4, 2),
])
def test_default_ranks_per_node_follow_where_the_ranks_run(inventory_gpus, executor, here, ranks):
    from clusterkit.diagnose.collective import default_ranks_per_node

    assert default_ranks_per_node(inventory_gpus, executor, here) == ranks


def test_local_collective_check_without_gpus_runs_two_ranks_per_node(tmp_path, monkeypatch):
    from clusterkit.diagnose import collective
    from clusterkit.project import Project

    monkeypatch.setattr(collective, "local_gpu_count", lambda: 0)  # this machine: no NVIDIA driver
    project = Project.from_options(str(ROOT / "nodes.yaml"), {"CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs")})
    spec = collective.build_spec(project, nodes="worker-5,worker-8", gpus_per_node=None, executor="local",
                                 nccl_profile=None, env=None, timeout_s=30, sizes=None, ops=None)
    assert (spec.nproc_per_node, spec.world_size) == (2, 4)
    pinned = collective.build_spec(project, nodes="worker-5", gpus_per_node=3, executor="local",
                                   nccl_profile=None, env=None, timeout_s=30, sizes=None, ops=None)
    assert pinned.nproc_per_node == 3
