"""Where the time of one tiny end-to-end run goes: the README's main job
(`clusterkit submit infer --model tiny --frames 2s --res 144p --aspect-ratio 9:16 --prompt ...
--executor local --wait --json`), run as a user runs it, in a throwaway runs folder.

Per run: the CLI's wall time, the job's own stage timings from result.json (load = building the
random checkpoint and loading it, text encoding, denoising = 30 steps, decode, write) and what
the job did not time (launch overhead: the CLI, torchrun, Python and torch imports, polling).
The report gives each stage's median over the runs and its share of the median wall time. Usage:

    python benchmarks/infer_tiny_breakdown.py [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["submit", "infer", "--model", "tiny", "--frames", "2s", "--res", "144p", "--aspect-ratio", "9:16",
           "--prompt", "a beautiful waterfall", "--executor", "local", "--wait", "--json"]
STAGES = ("load_s", "text_encoding_s", "denoising_s", "decode_s", "write_s")


def run_once(runs_dir: Path) -> dict:
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *COMMAND], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the job failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    timings = json.loads(proc.stdout)["result"]["timings"]
    steps = timings["denoising_steps_s"]
    return {
        "wall_s": wall, **{k: timings[k] for k in STAGES}, "job_total_s": timings["total_s"],
        "launch_overhead_s": wall - timings["total_s"], "step_median_s": statistics.median(steps),
        "first_step_s": steps[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        samples = [run_once(Path(tmp) / "runs") for _ in range(ns.runs)]
    keys = ["wall_s", "launch_overhead_s", *STAGES, "job_total_s", "step_median_s", "first_step_s"]
    medians = {k: statistics.median(s[k] for s in samples) for k in keys}
    wall = medians["wall_s"]
    report = {"runs": ns.runs, "command": "clusterkit " + " ".join(COMMAND), "samples": samples,
              "median": {k: round(v, 3) for k, v in medians.items()},
              "share_of_wall": {k: round(medians[k] / wall, 3) for k in ["launch_overhead_s", *STAGES]}}
    print(f"tiny end-to-end, {ns.runs} runs, medians (share of the CLI's wall time)")
    for k in ["wall_s", "launch_overhead_s", *STAGES, "job_total_s"]:
        share = f"{medians[k] / wall:6.1%}" if k in report["share_of_wall"] else "      "
        print(f"  {k:18s} {medians[k]:7.2f} s  {share}")
    print(f"  denoising step: median {medians['step_median_s'] * 1000:.1f} ms, "
          f"first {medians['first_step_s'] * 1000:.1f} ms")
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
