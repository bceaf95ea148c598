"""What batch invariance costs: denoising + decoding a batch of videos with the tiny model on CPU,
the pipeline's way (each video's CFG pair through the transformer alone, each video decoded alone:
``opensora_core.inference.pipeline.denoise`` / ``_decode``) against the old batched way (the whole
[z; z] batch in one transformer call, the whole batch in one VAE decode), alternating A B A B.

It also reports whether the batched way would have changed the videos: the largest latent
difference to a batch of one and whether any uint8 pixel differs. Usage:

    python benchmarks/batch_invariance.py [--batch 4] [--frames 17] [--steps 5] [--runs 3] [--device cuda]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from opensora_core.conditioning import video_conditions
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import denoise, initial_noise, sampler_model_fn
from opensora_core.inference.video_io import to_uint8
from opensora_core.presets import TINY
from opensora_core.schedulers import rectified_flow

PROMPTS = ["a cat on a sofa", "a beautiful waterfall", "a red car at night", "a bird on a tree",
           "a city street in the rain", "a bowl of fruit", "a sailing boat", "a snowy mountain"]
HEIGHT, WIDTH, FPS = 144, 256, 24


def batched_denoise(stdit3, z, y, mask, *, num_frames: int, steps: int) -> torch.Tensor:
    """The pre-invariance sampler: one transformer call on the whole [z; z] batch per step."""
    cond = video_conditions(z.shape[0], HEIGHT, WIDTH, num_frames, FPS, dtype=z.dtype, device=z.device)
    times = rectified_flow.timesteps(steps, height=cond["height"], width=cond["width"],
                                     num_frames=cond["num_frames"], batch_size=z.shape[0], device=z.device)
    return rectified_flow.sample(sampler_model_fn(stdit3, y, mask, cond, z.shape[1], None), z, times, cfg_scale=7.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU trade-off)")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device(ns.device)
    with tempfile.TemporaryDirectory(prefix="batch-inv-") as tmp:
        models = load_models(TINY, save_random_checkpoint(tmp, TINY), device=device, t5_device=device)
    prompts = (PROMPTS * ns.batch)[: ns.batch]
    encoded = [models.text_encoder.encode([p]) for p in prompts]
    y, mask = torch.cat([e[0] for e in encoded]), torch.cat([e[1] for e in encoded])
    latent = (models.stdit3.config.in_channels, models.vae.latent_frames(ns.frames), HEIGHT // 8, WIDTH // 8)
    z0 = initial_noise(range(ns.batch), latent, device)
    kwargs = dict(num_frames=ns.frames, steps=ns.steps)

    def per_video():
        z = denoise(models.stdit3, z0, y, mask, height=HEIGHT, width=WIDTH, fps=FPS, cfg_scale=7.0, **kwargs)
        return z, [to_uint8(models.vae.decode(z[i : i + 1], num_frames=ns.frames)[0]) for i in range(ns.batch)]

    def batched():
        z = batched_denoise(models.stdit3, z0, y, mask, **kwargs)
        return z, [to_uint8(v) for v in models.vae.decode(z, num_frames=ns.frames)]

    times = {"per_video": [], "batched": []}
    results = {}
    for _ in range(ns.runs):
        for name, fn in (("per_video", per_video), ("batched", batched)):
            began = time.perf_counter()
            results[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - began)
    alone = [denoise(models.stdit3, z0[i : i + 1], y[i : i + 1], mask[i : i + 1], height=HEIGHT, width=WIDTH, fps=FPS,
                     cfg_scale=7.0, **kwargs) for i in range(ns.batch)]
    alone_z = torch.cat(alone)
    medians = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": ns.batch, "frames": ns.frames, "steps": ns.steps, "runs": ns.runs,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "per_video_over_batched": round(medians["per_video"] / medians["batched"], 3),
        "per_video_latents_equal_alone": bool(torch.equal(results["per_video"][0], alone_z)),
        "batched_max_latent_diff": float((results["batched"][0] - alone_z).abs().max()),
        "batched_pixels_differ": any(not (a == b).all() for a, b in zip(results["batched"][1],
                                                                          results["per_video"][1])),
    }
    print(json.dumps(report, indent=2))
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
