"""Shared pytest fixtures.

``slurm_cluster`` (session): a real Slurm cluster on this machine with the inventory's
nodes simulated (tests/integration/slurm_harness.py). Tests using it are marked
``@pytest.mark.slurm``. Without root or slurm-wlm it skips -- or fails when
``CLUSTERKIT_REQUIRE_SLURM=1`` (CI), so a missing Slurm can never pass silently.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_slurm_harness():
    # tests/ is not a package; load the helper by path (works with any --import-mode) and
    # register it so `import slurm_harness` in tests gets this same module object.
    if "slurm_harness" not in sys.modules:
        path = Path(__file__).parent / "integration" / "slurm_harness.py"
        spec = importlib.util.spec_from_file_location("slurm_harness", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["slurm_harness"] = module
        spec.loader.exec_module(module)
    return sys.modules["slurm_harness"]


slurm_harness = _load_slurm_harness()
SimNode = slurm_harness.SimNode

# The seed cluster, used when the repo has no nodes.yaml yet.
SEED_NODES = [
    SimNode("worker-1", 6, "rtx8000"),
    SimNode("worker-2", 8, "rtx8000"),
    SimNode("worker-3", 8, "rtx3090"),
    SimNode("worker-4", 4, "a100"),
    SimNode("worker-5", 8, "rtx_a6000"),
    SimNode("worker-6", 8, "rtx_a6000"),
    SimNode("worker-7", 4, "a40"),
    SimNode("worker-8", 2, "rtx4090"),
]


def sim_nodes_from_inventory(path: Path) -> list:
    """SimNodes for the nodes in ``path`` (nodes.yaml); the seed cluster if it does not exist."""
    if not path.exists():
        return list(SEED_NODES)
    try:
        from clusterkit.inventory import load_inventory
    except ModuleNotFoundError as e:
        if e.name not in ("clusterkit.inventory", "clusterkit"):
            raise
        return _sim_nodes_from_yaml(path)
    inventory = load_inventory(path)
    return [SimNode(n.name, n.gpu.count, n.gres_type, n.slurm.partition) for n in inventory.nodes]


def _sim_nodes_from_yaml(path: Path) -> list:
    # TODO(remove): stop-gap until clusterkit.inventory.load_inventory exists.
    import yaml

    nodes = []
    for n in yaml.safe_load(path.read_text())["nodes"]:
        slurm = n.get("slurm") or {}
        gres = slurm.get("gres_type") or str(n["gpu"]["model"]).lower().replace(" ", "_").replace("-", "_")
        nodes.append(SimNode(n["name"], int(n["gpu"]["count"]), gres, slurm.get("partition")))
    return nodes


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started SlurmTestCluster; SLURM_CONF points at it for the whole session."""
    ok, reason = slurm_harness.slurm_available()
    if not ok:
        if os.environ.get("CLUSTERKIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"CLUSTERKIT_REQUIRE_SLURM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    nodes = sim_nodes_from_inventory(REPO_ROOT / "nodes.yaml")
    cluster = slurm_harness.SlurmTestCluster(nodes, tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (RuntimeError, ValueError, OSError) as e:
        pytest.fail(f"could not start the Slurm test cluster: {e}", pytrace=False)
    mp = pytest.MonkeyPatch()
    try:
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        yield cluster
    finally:
        mp.undo()
        cluster.stop()
