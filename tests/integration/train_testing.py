"""Helpers for the training integration tests (local executor and Slurm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_cli(runs_dir: Path):
    """Run the real CLI in a subprocess: (exit code, parsed --json envelope, stderr)."""

    def run(*args, timeout=600):
        env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(runs_dir), "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
        proc = subprocess.run([sys.executable, "-m", "clusterkit", *args, "--json"], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr

    return run


def tiny_dataset(folder: Path, **kwargs) -> Path:
    """Six 24-frame 144x256 videos, two images, one corrupt file and one missing file."""
    from opensora_core.training.synthetic import write_synthetic_dataset

    options = {"videos": 6, "images": 2, "corrupt": 1, "missing": 1, "frames": 24, **kwargs}
    return write_synthetic_dataset(folder, **options)


def tiny_args(csv: Path, steps: int, *extra: str) -> list[str]:
    """The tiny preset on two CPU ranks (gloo), a checkpoint every 3 steps."""
    return ["train", "--config", "jobs/train-tiny.yaml", "--data", str(csv), "--gpus", "2", "--max-steps", str(steps),
            "--set", "ckpt_every=3", *extra]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())]


def wait_for_step(run_dir: Path, step: int, timeout: float = 300) -> None:
    """Block until metrics.jsonl has reached ``step``."""
    deadline = time.monotonic() + timeout
    path = Path(run_dir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} never reached step {step}")


def sigkill_local_job(run_dir: Path) -> list[int]:
    """SIGKILL every process of a local run at once (node agents, torchrun, ranks): no handler runs."""
    import psutil

    info = json.loads((Path(run_dir) / "local.json").read_text())
    victims = []
    for entry in info["processes"]:
        try:
            agent = psutil.Process(entry["pid"])
            victims += [agent, *agent.children(recursive=True)]
        except psutil.Error:
            pass
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def final_state(step_dir: Path, tmp: Path) -> dict:
    """Model, optimizer (from the DCP files), EMA, sampler and LR state of one checkpoint."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{step_dir.parent.parent.name}-{step_dir.name}.pt"
    dcp_to_torch_save(str(step_dir / "dcp"), str(out))
    state = torch.load(out, weights_only=False)
    return {"model": state["model"], "optimizer": state["optimizer"], "ema": load_file(str(step_dir / "ema.safetensors")),
            "sampler": json.loads((step_dir / "sampler.json").read_text()),
            "lr": json.loads((step_dir / "lr_scheduler.json").read_text())}


def assert_identical(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    import torch

    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ {set(a) ^ set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{where}: tensors differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
