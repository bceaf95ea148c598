"""A training run's ``metrics.jsonl`` (one JSON object per step, written by rank 0) and its plot.

Each line: step, epoch, loss (mean over the step's valid samples, all ranks), lr, grad_norm,
step_s, samples, samples_per_s, bad_samples, memory_bytes (peak: GPU allocated, or the rank's RSS
on CPU), time, bucket [frames, height, width] of rank 0's micro-batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from clusterkit.errors import UserError

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    """Every step's record; a missing file is a UserError, a torn last line (a killed writer) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{path} does not exist: only training runs write metrics",
                        hint="clusterkit runs lists the runs; training runs have kind 'train'")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_metrics(records: list[dict], path: Path, title: str) -> Path:
    """Loss, step time, samples/s and memory against the step, as a PNG (written atomically)."""
    if not records:
        raise UserError(f"no steps recorded yet for {title}", hint="plot again once the run has trained a step")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    panels = [("loss", "loss", 1.0), ("step_s", "step time (s)", 1.0), ("samples_per_s", "samples/s", 1.0),
              ("memory_bytes", "peak memory (GiB)", 1 / 2**30)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, label, scale) in zip(axes.flat, panels):
        values = [r.get(key) for r in records]
        ax.plot(steps, [v * scale if v is not None else float("nan") for v in values], linewidth=1.0)
        if key == "loss" and len(values) >= 10:  # a moving average makes the trend readable
            window = max(5, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, linewidth=1.6, label=f"mean of {window}")
            ax.legend(fontsize=7)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
