"""STDiT3 forward time on CPU: the tiny preset against a fixed mid-size config, side by side.

Both configs get the same inputs (a CFG-doubled batch of 2 at the 144p 2s latent size,
[2, 4, 15, 18, 32], 300 caption tokens of which 40 valid) in fp32; the forwards alternate
(A B A B ...) so machine noise hits both alike, and the report is medians and their ratio,
plus the FLOPs of one forward (torch's FlopCounterMode) and the achieved GFLOP/s.

One torch thread by default: on a shared machine a second OpenMP thread that loses its core
stalls every small op at the barrier (the tiny model's 2-thread times swung by more than 10x); ``--threads``
changes it. Usage:

    python benchmarks/stdit3_forward.py [--runs 10] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opensora_core.models.stdit3 import STDiT3, STDiT3Config  # noqa: E402
from opensora_core.presets import TINY  # noqa: E402

CONFIGS = {
    "tiny (preset)": dict(TINY.stdit3_config),
    # Half the XL width, the XL head size (72) and caption width (T5-XXL's 4096), 8 of 28 blocks.
    "mid": dict(hidden_size=576, depth=8, num_heads=8, caption_channels=4096, model_max_length=300),
}
LATENT = (4, 15, 18, 32)  # 144p 9:16, 51 frames
VALID_TOKENS = 40


def build(config: dict) -> tuple[STDiT3, dict]:
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**config)).eval()
    cfg = model.config
    mask = torch.zeros(1, cfg.model_max_length, dtype=torch.long)
    mask[:, :VALID_TOKENS] = 1
    inputs = dict(
        x=torch.randn(2, *LATENT), timestep=torch.full((2,), 800.0),
        y=torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels), mask=mask,
        fps=24, height=144, width=256,
    )
    return model, inputs


def forward_flops(model: STDiT3, inputs: dict) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def time_once(model: STDiT3, inputs: dict) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    models = {name: build(config) for name, config in CONFIGS.items()}
    flops = {name: forward_flops(*m) for name, m in models.items()}
    for model, inputs in models.values():  # warm up allocator and kernels
        time_once(model, inputs)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ns.runs):
        for name, (model, inputs) in models.items():
            samples[name].append(time_once(model, inputs))
    tiny = statistics.median(samples["tiny (preset)"])
    report = {
        "runs": ns.runs, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "inputs": {"x": [2, *LATENT], "caption_tokens": 300, "valid_tokens": VALID_TOKENS},
        "results": {},
    }
    for name, times in samples.items():
        model = models[name][0]
        median = statistics.median(times)
        report["results"][name] = {
            "config": CONFIGS[name],
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "median_ms": round(median * 1e3, 2), "min_ms": round(min(times) * 1e3, 2),
            "ratio_to_tiny": round(median / tiny, 2),
            "gflop_per_forward": round(flops[name] / 1e9, 3),
            "achieved_gflops": round(flops[name] / median / 1e9, 2),
        }
    print(f"STDiT3 forward, CPU fp32, {report['threads']} threads, x {report['inputs']['x']}, "
          f"{ns.runs} alternating runs")
    for name, r in report["results"].items():
        print(f"{name:14s} {r['params_m']:8.2f} M params  median {r['median_ms']:9.2f} ms  min {r['min_ms']:9.2f} ms  "
              f"x{r['ratio_to_tiny']:<7.2f} {r['gflop_per_forward']:8.3f} GFLOP  {r['achieved_gflops']:7.2f} GFLOP/s")
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
