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

def sim_nodes_from_inventory(path: Path) -> list:
    """One simulated Slurm node per node of nodes.yaml, with its GPU count and GRES type."""
    from clusterkit.inventory import load_inventory

    return [SimNode(n.name, n.gpu.count, n.gres_type, n.slurm.partition) for n in load_inventory(path).nodes]


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
