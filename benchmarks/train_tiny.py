"""The tiny training preset on this machine: samples/s with ``ddp`` against ``zero2`` (FSDP2), and
checkpoint save time, load time and size.

    python benchmarks/train_tiny.py [--rounds 2] [--steps 14] [--gpus 2]

Runs ``clusterkit train --config jobs/train-tiny.yaml`` on the local executor (two ranks on gloo by
default), alternating the plugins (zero2, ddp, zero2, ddp, ...) so that a busy shared machine
affects both alike, on a synthetic dataset written with PyAV (8 videos of 24 frames, 4 images, 144p).
Per run it reads ``metrics.jsonl`` (samples/s per step, the first 3 steps left out as warm-up) and
the checkpoints' ``train_state.json`` (``save_s``, the files' sizes); then each plugin's last
checkpoint is resumed for one more step, whose log gives the load time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(runs_dir: Path, *args: str) -> dict:
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    proc = subprocess.run([sys.executable, "-m", "clusterkit", *args, "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=1800)
    out = json.loads(proc.stdout)
    if not out["ok"]:
        raise SystemExit(f"clusterkit {' '.join(args)} failed: {out['error']}")
    return out["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--gpus", type=int, default=2, help="ranks (on CPU: gloo processes)")
    ns = parser.parse_args()
    from opensora_core.training.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        csv = write_synthetic_dataset(tmp / "data", videos=8, images=4, frames=24)
        runs_dir = tmp / "runs"
        rates: dict[str, list[float]] = {"zero2": [], "ddp": []}
        step_times: dict[str, list[float]] = {"zero2": [], "ddp": []}
        saves: dict[str, list[float]] = {"zero2": [], "ddp": []}
        sizes: dict[str, int] = {}
        last: dict[str, Path] = {}
        for round_ in range(ns.rounds):
            for plugin in ("zero2", "ddp"):
                result = cli(runs_dir, "train", "--config", "jobs/train-tiny.yaml", "--data", str(csv),
                             "--gpus", str(ns.gpus), "--plugin", plugin, "--max-steps", str(ns.steps),
                             "--set", "ckpt_every=5", "--set", "keep_last=null", "--executor", "local", "--wait")
                metrics = [json.loads(line) for line in Path(result["metrics"]).read_text().splitlines()]
                rates[plugin] += [m["samples_per_s"] for m in metrics[3:]]
                step_times[plugin] += [m["step_s"] for m in metrics[3:]]
                for path in result["checkpoints"]:
                    state = json.loads((Path(path) / "train_state.json").read_text())
                    saves[plugin].append(state["save_s"])
                    sizes[plugin] = sum(state["files"].values()) + (Path(path) / "train_state.json").stat().st_size
                last[plugin] = Path(result["checkpoints"][-1])
                print(f"round {round_ + 1} {plugin}: median {statistics.median(rates[plugin]):.2f} samples/s",
                      file=sys.stderr)
        loads = {}
        for plugin, checkpoint in last.items():
            result = cli(runs_dir, "train", "--resume", str(checkpoint), "--max-steps", str(ns.steps + 1),
                         "--executor", "local", "--wait")
            loads[plugin] = result["attempts"][-1]["load_s"]
        import torch

        print(f"\ntiny preset, {ns.gpus} ranks on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{ns.rounds} alternating rounds of {ns.steps} steps per plugin\n")
        print("| plugin | samples/s (median) | step time (median) | checkpoint save (median) | load | checkpoint size |")
        print("| --- | --- | --- | --- | --- | --- |")
        for plugin in ("zero2", "ddp"):
            rate = statistics.median(rates[plugin])
            per_step = statistics.median(step_times[plugin])
            print(f"| {plugin} | {rate:.2f} | {per_step:.3f} s | {statistics.median(saves[plugin]):.3f} s | "
                  f"{loads[plugin]:.3f} s | {sizes[plugin] / 2**20:.2f} MiB |")
        ratio = statistics.median(rates["zero2"]) / statistics.median(rates["ddp"])
        print(f"\nzero2 / ddp samples/s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
