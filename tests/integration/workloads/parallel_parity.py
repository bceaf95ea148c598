"""torchrun workload: every parallel layout of this world size against the one-process result.

Run as ``torchrun --nproc-per-node N parallel_parity.py OUT.json`` (gloo, CPU). Every rank builds
the same tiny STDiT3 (fixed seed) and the same inputs, computes the one-process reference itself,
then, for each layout of N ranks (replicas x cfg x sp, both SP schemes), the noise prediction of
one step (with and without conditioning frames) and the final latents after a few sampler steps,
through the pipeline's own model function. Rank 0 writes the largest absolute differences and
the bytes each rank counted against the formula of ``opensora_core.parallel.volume``.

Cases: a clip whose 5 x 7 patch grid divides neither 2 nor 4 ranks (tokens padded and masked;
DSP also pads 5 frames to 6 or 8) and an image (1 frame: DSP falls back to head sharding).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from opensora_core.inference.pipeline import sampler_model_fn
from opensora_core.models.stdit3 import STDiT3, STDiT3Config
from opensora_core.parallel.groups import build_context
from opensora_core.parallel.layout import ParallelLayout
from opensora_core.parallel.volume import step_volume
from opensora_core.presets import TINY
from opensora_core.schedulers import rectified_flow

STEPS = 3
CASES = {  # name: (latent [C, T, H, W], pixel frames, pixel height, pixel width)
    "clip_padded": ((4, 5, 10, 14), 17, 80, 112),
    "image": ((4, 1, 10, 14), 1, 80, 112),
}


def layouts(world: int) -> list[ParallelLayout]:
    out = []
    for cfg in (1, 2):
        for sp in (1, 2, 4):
            if world % (cfg * sp) or cfg * sp == 1 and world == 1:
                continue
            for scheme in ("dsp", "ulysses") if sp > 1 else ("dsp",):
                out.append(ParallelLayout.for_world(world, sp=sp, cfg_parallel=cfg == 2, sp_scheme=scheme,
                                                    num_heads=TINY.stdit3_config["num_heads"]))
    return out


def inputs(case: str, model: STDiT3):
    shape, frames, height, width = CASES[case]
    gen = torch.Generator().manual_seed(7)
    z = torch.randn((1, *shape), generator=gen)
    y = torch.randn((1, 1, model.config.model_max_length, model.config.caption_channels), generator=gen)
    mask = torch.zeros(1, model.config.model_max_length, dtype=torch.int64)
    mask[:, :23] = 1
    x_mask = torch.rand((2, shape[1]), generator=gen) > 0.4
    cond = {"fps": torch.tensor([24.0]), "height": torch.tensor([float(height)]),
            "width": torch.tensor([float(width)]), "num_frames": torch.tensor([float(frames)])}
    times = rectified_flow.timesteps(STEPS, height=cond["height"], width=cond["width"],
                                     num_frames=cond["num_frames"], batch_size=1)
    return z, y, mask, x_mask, cond, times


def run_case(model, model_fn, case):
    z, y, mask, x_mask, cond, times = inputs(case, model)
    t = times[0]
    noise = model_fn(torch.cat([z, z]), torch.cat([t, t]), None)[:, : z.shape[1]]
    noise_xmask = model_fn(torch.cat([z, z]), torch.cat([t, t]), x_mask)[:, : z.shape[1]]
    final = rectified_flow.sample(model_fn, z, times, cfg_scale=7.0)
    return noise, noise_xmask, final


def main() -> int:
    out_path = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**TINY.stdit3_config)).eval()
    report = {"world": world, "layouts": []}
    with torch.inference_mode():
        reference = {}
        for case in CASES:
            _, y, mask, _, cond, _ = inputs(case, model)
            reference[case] = run_case(model, model.cfg_model_fn(y, mask, fps=cond["fps"], height=cond["height"],
                                                                 width=cond["width"]), case)
        for layout in layouts(world):
            ctx = build_context(layout, rank, torch.device("cpu"))
            row = {"layout": layout.to_dict(), "describe": layout.describe(), "cases": {}}
            for case in CASES:
                z, y, mask, _, cond, _ = inputs(case, model)
                ctx.counter.reset()
                model_fn = sampler_model_fn(model, y, mask, cond, z.shape[1], ctx)
                t = rectified_flow.timesteps(1, height=cond["height"], width=cond["width"],
                                             num_frames=cond["num_frames"], batch_size=1)[0]
                model_fn(torch.cat([z, z]), torch.cat([t, t]), None)
                counted = ctx.counter.snapshot()
                got = run_case(model, model_fn, case)
                diffs = {name: (a - b).abs().max().item()
                         for name, a, b in zip(("noise", "noise_xmask", "final"), got, reference[case])}
                bitwise = all(torch.equal(a, b) for a, b in zip(got, reference[case]))
                cfg = model.config
                formula = step_volume(scheme=layout.sp_scheme, sp=layout.sp, cfg=layout.cfg, videos=1,
                                      frames=z.shape[2], spatial_tokens=(z.shape[3] // 2) * (z.shape[4] // 2),
                                      hidden=cfg.hidden_size, depth=cfg.depth,
                                      out_dim=cfg.out_channels * 4, latent_elements=z[0].numel(), elem_bytes=4)
                row["cases"][case] = {"max_abs_diff": diffs, "bitwise": bitwise, "counted": counted["bytes"],
                                      "calls": counted["calls"], "formula": formula.to_dict()}
            all_rows = [None] * world
            dist.all_gather_object(all_rows, row)
            report["layouts"].append({"layout": row["layout"], "describe": row["describe"],
                                      "ranks": [r["cases"] for r in all_rows]})
    if rank == 0:
        with open(out_path + ".tmp", "w") as handle:
            json.dump(report, handle, indent=1)
        os.replace(out_path + ".tmp", out_path)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
