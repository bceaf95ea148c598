"""Sequence-parallel schemes side by side on CPU (torchrun, gloo): bytes sent per rank per denoising
step (counted by the communicator, compared with ``opensora_core.parallel.volume``) and wall time.

For each config (the tiny preset and the mid-size config of ``stdit3_forward.py``), each SP
degree (1, 2, 4) and scheme (ulysses, dsp), plus CFG parallelism alone and with SP 2, one
torchrun job runs ``--warmup`` + ``--steps`` denoising steps (one forward of the CFG pair through
the pipeline's model function) at the 144p 2s latent size [4, 15, 18, 32] (S = 144 tokens per
frame, 15 frames) and reports the median step time measured between barriers on rank 0. The
whole matrix is repeated ``--rounds`` times in alternating order and medians are taken. Also the
tiny VAE decode of one 51-frame video on 1 rank and shared by 2.

One intra-op thread per rank (torchrun's default for several ranks; set for one rank too), so
sp 2 uses two cores; with 2 cores, sp 4 runs four ranks on two cores (oversubscribed: its time
shows the cost, not the speed-up). Usage:

    python benchmarks/parallel_infer.py [--rounds 2] [--steps 3] [--configs tiny,mid] [--json out.json]
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
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "tiny": None,  # the preset
    "mid": dict(hidden_size=576, depth=8, num_heads=8, caption_channels=4096, model_max_length=300),
}
LATENT = (4, 15, 18, 32)  # 144p 9:16, 51 frames
LAYOUTS = [  # (sp, cfg, scheme)
    (1, 1, "dsp"), (2, 1, "ulysses"), (2, 1, "dsp"), (4, 1, "ulysses"), (4, 1, "dsp"), (1, 2, "dsp"),
    (2, 2, "ulysses"), (2, 2, "dsp"),
]


# ---------------------------------------------------------------------------- worker (one torchrun job)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from opensora_core.inference.pipeline import sampler_model_fn
    from opensora_core.models.stdit3 import STDiT3, STDiT3Config
    from opensora_core.parallel.groups import build_context
    from opensora_core.parallel.layout import ParallelLayout
    from opensora_core.parallel.volume import step_volume
    from opensora_core.presets import TINY

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    config = STDiT3Config(**(CONFIGS[args.config] or TINY.stdit3_config))
    layout = ParallelLayout.for_world(world, sp=args.sp, cfg_parallel=args.cfg == 2, sp_scheme=args.scheme,
                                      num_heads=config.num_heads)
    ctx = build_context(layout, rank, torch.device("cpu"))
    torch.manual_seed(0)
    model = STDiT3(config).eval()
    z = torch.randn(1, *LATENT)
    y = torch.randn(1, 1, config.model_max_length, config.caption_channels)
    mask = torch.zeros(1, config.model_max_length, dtype=torch.long)
    mask[:, :40] = 1
    cond = {"fps": torch.tensor([24.0]), "height": torch.tensor([144.0]), "width": torch.tensor([256.0])}
    t = torch.tensor([800.0])
    times, counted, comm_s = [], None, []
    with torch.inference_mode():
        model_fn = sampler_model_fn(model, y, mask, cond, z.shape[1], ctx)
        for step in range(args.warmup + args.steps):
            ctx.counter.reset()
            if world > 1:
                dist.barrier()
            began = time.perf_counter()
            model_fn(torch.cat([z, z]), torch.cat([t, t]), None)
            if world > 1:
                dist.barrier()
            if step >= args.warmup:
                times.append(time.perf_counter() - began)
                comm_s.append(sum(ctx.counter.seconds.values()))
            counted = ctx.counter.snapshot()
    formula = step_volume(scheme=args.scheme, sp=args.sp, cfg=args.cfg, videos=1, frames=LATENT[1],
                          spatial_tokens=(LATENT[2] // 2) * (LATENT[3] // 2), hidden=config.hidden_size,
                          depth=config.depth, out_dim=config.out_channels * 4, latent_elements=z[0].numel(),
                          elem_bytes=4)
    if rank == 0:
        Path(args.out).write_text(json.dumps({
            "step_s": statistics.median(times), "steps_s": times, "comm_s": statistics.median(comm_s),
            "counted": counted, "formula": formula.to_dict(),
            "params": sum(p.numel() for p in model.parameters())}))
    if world > 1:
        dist.destroy_process_group()


def decode_worker(args: argparse.Namespace) -> None:
    """The tiny VAE decode of one 144p 2s video: rank 0 alone, or shared by every rank."""
    import torch
    import torch.distributed as dist

    from opensora_core.inference.models import load_models, save_random_checkpoint
    from opensora_core.inference.video_io import to_uint8
    from opensora_core.parallel.groups import build_context
    from opensora_core.parallel.layout import ParallelLayout
    from opensora_core.parallel.shared import decode_shared
    from opensora_core.presets import TINY

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        # before joining the process group: transformers writes a model's files on rank 0 only
        save_random_checkpoint(Path(tmp) / "ckpt", TINY)
        if world > 1:
            dist.init_process_group("gloo")
        models = load_models(TINY, Path(tmp) / "ckpt", text_encoder=False)
    ctx = build_context(ParallelLayout(sp=world, num_heads=4), rank, torch.device("cpu"))
    z = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for step in range(args.warmup + args.steps):
            if world > 1:
                dist.barrier()
            began = time.perf_counter()
            if world == 1:
                [to_uint8(v) for v in models.vae.decode(z, num_frames=51)]
            else:
                decode_shared(models.vae, z, 51, ctx.group)
                dist.barrier()
            if step >= args.warmup:
                times.append(time.perf_counter() - began)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"decode_s": statistics.median(times), "times": times,
                                              "counted": ctx.counter.snapshot()}))
    if world > 1:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- driver


def launch(argv: list[str], nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(nproc), __file__, *argv, "--out", str(out)], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["step", "decode"])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--sp", type=int, default=1)
    parser.add_argument("--cfg", type=int, default=1)
    parser.add_argument("--scheme", default="dsp")
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    if ns.worker == "step":
        return worker(ns)
    if ns.worker == "decode":
        return decode_worker(ns)

    common = ["--warmup", str(ns.warmup), "--steps", str(ns.steps)]
    jobs = [(config, sp, cfg, scheme) for config in ns.configs.split(",") for sp, cfg, scheme in LAYOUTS]
    results: dict = {}
    decode: dict = {}
    for round_ in range(ns.rounds):
        for job in jobs if round_ % 2 == 0 else reversed(jobs):
            config, sp, cfg, scheme = job
            row = launch(["--worker", "step", "--config", config, "--sp", str(sp), "--cfg", str(cfg), "--scheme",
                          scheme, *common], sp * cfg)
            results.setdefault(job, []).append(row)
            print(f"round {round_ + 1}: {config} sp{sp} cfg{cfg} {scheme}: {row['step_s']:.3f} s/step", flush=True)
        for ranks in (1, 2) if round_ % 2 == 0 else (2, 1):
            decode.setdefault(ranks, []).append(launch(["--worker", "decode", *common], ranks))
    table = []
    for (config, sp, cfg, scheme), rows in results.items():
        counted = sum(rows[0]["counted"]["bytes"].values())
        formula = rows[0]["formula"]["total"]
        table.append({"config": config, "sp": sp, "cfg": cfg, "scheme": scheme if sp > 1 else "-",
                      "params": rows[0]["params"], "step_s": statistics.median(r["step_s"] for r in rows),
                      "min_step_s": min(min(r["steps_s"]) for r in rows),
                      "comm_s": statistics.median(r["comm_s"] for r in rows), "counted_bytes": counted,
                      "formula_bytes": formula, "alltoalls": rows[0]["counted"]["calls"].get("attention", 0)})
    decode_rows = {ranks: {"decode_s": statistics.median(r["decode_s"] for r in rows),
                           "bytes": rows[0]["counted"]["bytes"]} for ranks, rows in decode.items()}
    print("\n| config | layout | scheme | step (median) | min | in collectives (rank 0) | bytes sent / rank / step "
          "(counted) | formula | all-to-alls |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in table:
        layout = "+".join(p for p in ("cfg2" if row["cfg"] == 2 else "", f"sp{row['sp']}" if row["sp"] > 1 else "")
                          if p) or "1 rank"
        print(f"| {row['config']} | {layout} | {row['scheme']} | {row['step_s'] * 1000:,.0f} ms | "
              f"{row['min_step_s'] * 1000:,.0f} ms | {row['comm_s'] * 1000:,.0f} ms | {row['counted_bytes']:,.0f} | "
              f"{row['formula_bytes']:,.0f} | "
              f"{row['alltoalls']} |")
    for ranks, row in decode_rows.items():
        print(f"decode on {ranks} rank(s): {row['decode_s']:.3f} s, bytes {row['bytes']}")
    if ns.json:
        ns.json.write_text(json.dumps({"steps": table, "decode": decode_rows}, indent=1))


if __name__ == "__main__":
    main()
