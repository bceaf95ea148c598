"""Wall time of `clusterkit nodes` against `python -c pass`, measured side by side.

The two commands alternate (A B A B ...) so machine noise hits both alike; the report is
the ratio of medians. Usage:

    python benchmarks/cli_startup.py [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    env = {**os.environ, "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "clusterkit nodes": [sys.executable, "-m", "clusterkit", "nodes"],
        "clusterkit nodes --json": [sys.executable, "-m", "clusterkit", "nodes", "--json"],
    }
    for argv in commands.values():  # warm the page cache
        time_once(argv, env)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(ns.runs):
        for name, argv in commands.items():
            samples[name].append(time_once(argv, env))
    base = statistics.median(samples["python -c pass"])
    report = {
        "runs": ns.runs, "python": sys.version.split()[0],
        "results": {name: {"median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4),
                           "ratio_to_python": round(statistics.median(t) / base, 2)} for name, t in samples.items()},
    }
    for name, r in report["results"].items():
        print(f"{name:26s} median {r['median_s'] * 1000:7.1f} ms  min {r['min_s'] * 1000:7.1f} ms  "
              f"x{r['ratio_to_python']:.2f} python -c pass")
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
