"""Planning one request over a synthetic 10,000-node inventory, against the 8-node seed inventory.

Both are planned in the same process, alternating (seed, 10k, seed, 10k, ...) so machine noise
hits both alike; the report is each median and their ratio. Two synthetic inventories:

* ``seed x1250``: the eight seed nodes repeated (a real cluster has few node types);
* ``diverse``: every node draws a GPU model from the whole catalog, a GPU count of 1-16 and an
  interconnect at random (seeded), the worst case for the planner, which plans each distinct
  (GPU, count, fabric) once.

Inventory parsing (nodes.yaml validation) is timed separately: it is not planning. Usage:

    python benchmarks/plan_10k_nodes.py [--runs 7] [--res 720p --frames 4s] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

from clusterkit.gpus import all_gpus
from clusterkit.inventory import load_inventory, parse_inventory
from clusterkit.planner import PlanRequest, node_facts, plan

ROOT = Path(__file__).resolve().parents[1]

INTERCONNECTS = [None, {"type": "pcie", "p2p": False}, {"type": "pcie", "p2p": True}, {"type": "nvswitch"}]


def seed_like(count: int) -> list[dict]:
    seed = yaml.safe_load((ROOT / "nodes.yaml").read_text())["nodes"]
    out = []
    for i in range(count):
        node = dict(seed[i % len(seed)])
        node["name"] = f"{node['name']}-{i:05d}"
        out.append(node)
    return out


def diverse(count: int, rng: random.Random) -> list[dict]:
    specs = [spec for spec in all_gpus() if spec.variant_known]
    out = []
    for i in range(count):
        spec = rng.choice(specs)
        node = {"name": f"node-{i:05d}", "gpu": {"model": spec.key, "count": rng.randint(1, 16)}}
        interconnect = rng.choice(INTERCONNECTS if spec.nvlink else INTERCONNECTS[:3])
        if interconnect:
            node["interconnect"] = interconnect
        out.append(node)
    return out


def build(nodes: list[dict]):
    start = time.perf_counter()
    inventory = parse_inventory(yaml.safe_dump({"version": 1, "nodes": nodes}), path="synthetic.yaml")
    return inventory, time.perf_counter() - start


def timed(inventory, request) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, plan): CPU time is what a loaded machine distorts least."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = plan(inventory, request)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--res", default="720p")
    parser.add_argument("--frames", default="4s")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    request = PlanRequest(ns.res, ns.frames)
    seed = load_inventory(ROOT / "nodes.yaml")
    synthetic = {"seed x1250": build(seed_like(ns.nodes)), "diverse": build(diverse(ns.nodes, random.Random(0)))}
    report = {"request": request.describe(), "runs": ns.runs, "nodes": ns.nodes, "python": sys.version.split()[0],
              "results": {}}
    for name, (inventory, parse_s) in synthetic.items():
        timed(seed, request), timed(inventory, request)  # warm up (imports, caches of pure helpers)
        small, large, small_cpu, large_cpu = [], [], [], []
        for _ in range(ns.runs):
            wall, cpu, _ = timed(seed, request)
            small.append(wall)
            small_cpu.append(cpu)
            wall, cpu, result = timed(inventory, request)
            large.append(wall)
            large_cpu.append(cpu)
        start = time.perf_counter()
        result.to_dict()
        to_dict_s = time.perf_counter() - start
        kinds = len({node_facts(node) for node in inventory.nodes})  # (GPU model, count, fabric) planned once each
        entry = {
            "seed_8_nodes_ms": round(statistics.median(small) * 1000, 2),
            "synthetic_ms": round(statistics.median(large) * 1000, 1),
            "ratio": round(statistics.median(large) / statistics.median(small), 1),
            "seed_8_nodes_cpu_ms": round(statistics.median(small_cpu) * 1000, 2),
            "synthetic_cpu_ms": round(statistics.median(large_cpu) * 1000, 1),
            "cpu_ratio": round(statistics.median(large_cpu) / statistics.median(small_cpu), 1),
            "feasible_nodes": sum(n.feasible for n in result.nodes),
            "distinct_node_kinds": kinds,
            "to_dict_ms": round(to_dict_s * 1000, 1),
            "parse_inventory_s": round(parse_s, 2),
        }
        report["results"][name] = entry
        print(f"{name:11s} seed(8) {entry['seed_8_nodes_ms']:6.2f} ms (cpu {entry['seed_8_nodes_cpu_ms']:6.2f}) | "
              f"{ns.nodes} nodes {entry['synthetic_ms']:6.1f} ms (cpu {entry['synthetic_cpu_ms']:6.1f}) | "
              f"ratio x{entry['ratio']:.0f} (cpu x{entry['cpu_ratio']:.0f}) | kinds {kinds} | "
              f"to_dict {entry['to_dict_ms']:.0f} ms | parse {parse_s:.1f} s")
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
