"""The benchmark job, run by torchrun on every rank (``jobs/bench-infer.yaml``)::

    python -m opensora_core.inference.bench --request R.json --prompts P.json --result result.json \\
        --warmup 3 --eval 5

The models are loaded once (timed: ``load_s``); then the request's one video is made
``warmup + eval`` times by the real pipeline (``pipeline.generate``: text encoding, every
denoising step, VAE decode, writing the mp4), each iteration timed by its own ``StageClock``.
Warm-up iterations are recorded but marked, so ``clusterkit bench infer`` leaves them out of the
statistics (``clusterkit.bench_report``). Rank 0 writes ``result.json``: the iterations, the
device and GPU it used, the software versions and the host; the video of the last iteration stays
in the output folder as evidence (each iteration replaces it atomically).

A bench makes one video, so its layout is one replica group (``--gpus`` = the group's CFG x SP).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from clusterkit.errors import UserError
from clusterkit.launch.records import atomic_write_json, record_job_failure
from opensora_core.dtypes import torch_dtype
from opensora_core.inference.environment import device_facts, host_name, software_versions
from opensora_core.inference.models import load_models
from opensora_core.inference.pipeline import StageClock, generate
from opensora_core.inference.request import InferRequest
from opensora_core.inference.run import job_context, rank_device, rank_environment
from opensora_core.parallel.groups import ParallelContext
from opensora_core.presets import get_preset

PROGRESS_EVERY_S = 0.5


class BenchProgress:
    """Pipeline events -> rank-log lines and, on rank 0, a throttled ``progress.json`` naming the
    iteration (phase warmup/eval) so the CLI can show where the bench is."""

    def __init__(self, path: Path, *, files: bool) -> None:
        self.path = path
        self.files = files
        self.where: dict = {}
        self._written = 0.0

    def start(self, index: int, total: int, phase: str) -> None:
        self.where = {"iteration": index + 1, "iterations": total, "phase": phase}
        print(f"[bench] iteration {index + 1}/{total} ({phase})", flush=True)
        self._write({"stage": "text_encoding"}, force=True)

    def __call__(self, event: dict) -> None:
        stage = event["stage"]
        if stage == "denoising":
            print(f"[bench] step {event['step']}/{event['steps']} {event['step_s']:.3f}s", flush=True)
            self._write({"stage": stage, "step": event["step"], "steps": event["steps"]},
                        force=event["step"] == event["steps"])
        elif stage in ("decode", "write"):
            self._write({"stage": stage}, force=True)

    def _write(self, event: dict, *, force: bool) -> None:
        if not self.files or (not force and time.monotonic() - self._written < PROGRESS_EVERY_S):
            return
        atomic_write_json(self.path, {**event, **self.where, "time": time.time()})
        self._written = time.monotonic()


def bench(request: InferRequest, result_path: Path, device: torch.device, parallel: ParallelContext | None, *,
          ckpt_dir: str | Path | None, load_clock: StageClock, warmup: int, evals: int) -> dict | None:
    """Load once, run ``warmup + evals`` iterations; on rank 0 the raw result (other ranks: None)."""
    rank = parallel.rank if parallel is not None else 0
    leader = parallel is None or parallel.leader
    preset = get_preset(request.model)
    if device.type == "cpu" and request.model_dtype == "fp16":
        raise UserError("fp16 needs a GPU and this rank has none", hint="use fp32 or bf16 on CPU")
    t5_device = device if request.t5_device == "gpu" else torch.device("cpu")
    if request.random_weights and rank == 0:
        print(f"[bench] WARNING: --model {preset.name} uses RANDOM weights (seed {preset.weights_seed}): "
              "the videos are noise; the timings are those of its shapes", flush=True)
    print(f"[bench] model {preset.name} on {device}, {request.model_dtype}; T5 on {t5_device}, {request.t5_dtype}; "
          f"{warmup} warm-up + {evals} timed iteration(s)", flush=True)
    models = load_models(
        preset, ckpt_dir, ckpt_paths=request.ckpt_paths, dtype=torch_dtype(request.model_dtype), device=device,
        t5_dtype=torch_dtype(request.t5_dtype), t5_device=t5_device,
        vae_micro_batch=request.vae_micro_batch, flash_attn=request.flash_attn and device.type == "cuda",
        text_encoder=leader,
    )
    load_s = load_clock.end()
    output_dir = Path(request.output_dir) if request.output_dir else result_path.parent / "outputs"
    progress = BenchProgress(result_path.with_name("progress.json"), files=rank == 0)
    iterations, entries = [], []
    total = warmup + evals
    for index in range(total):
        phase = "warmup" if index < warmup else "eval"
        if models.text_encoder is not None:
            models.text_encoder.to(t5_device)  # back where it encodes: generate() offloads it with t5_offload
        progress.start(index, total, phase)
        clock = StageClock(device)
        began = time.perf_counter()
        entries = generate(request, models, output_dir, device=device, on_event=progress, clock=clock,
                           parallel=parallel)
        iterations.append({"iteration": index + 1, "phase": phase, "total_s": round(time.perf_counter() - began, 6),
                           "timings": clock.timings(), "peak_memory": clock.peak_memory()})
    if rank != 0:
        return None
    geometry = request.geometry
    return {
        "ok": True,
        "run": request.run_id or request.name,
        "node": request.node,
        "host": host_name(),
        "model": preset.name,
        "random_weights": request.random_weights,
        "dtype": request.model_dtype,
        "t5": {"device": str(t5_device), "dtype": request.t5_dtype, "offload": request.t5_offload},
        "vae_micro_batch": request.vae_micro_batch,
        "flash_attn": request.flash_attn and device.type == "cuda",
        "layout": (parallel.layout if parallel is not None else request.layout(1)).to_dict(),
        "geometry": {"frames": geometry.num_frames, "height": geometry.height, "width": geometry.width,
                     "latent": list(geometry.latent), "tokens": geometry.total_tokens},
        "device": device_facts(device),
        "versions": software_versions(),
        "load_s": round(load_s, 6),
        "warmup": warmup,
        "eval": evals,
        "iterations": iterations,
        "outputs": [e["path"] for e in entries],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.inference.bench")
    parser.add_argument("--request", type=Path, required=True, help="settings JSON (InferRequest without prompts)")
    parser.add_argument("--prompts", type=Path, required=True, help="JSON list with the one prompt")
    parser.add_argument("--result", type=Path, required=True, help="where rank 0 writes the raw result JSON")
    parser.add_argument("--warmup", type=int, required=True, help="untimed-for-stats iterations first")
    parser.add_argument("--eval", type=int, required=True, help="timed iterations")
    ns = parser.parse_args(argv)
    started_at = time.time()
    rank, world, local_rank = rank_environment()
    try:
        if ns.warmup < 0 or ns.eval < 1:
            raise UserError(f"--warmup {ns.warmup} must be >= 0 and --eval {ns.eval} >= 1")
        request = InferRequest.load(ns.request, ns.prompts)
        layout = request.layout(world)
        if layout.replicas != 1 or len(request.videos()) != 1:
            raise UserError(f"a bench makes one video on one replica group; got {len(request.videos())} video(s) "
                            f"on {layout.describe()}")
        device = rank_device(local_rank)
        load_clock = StageClock(device)
        load_clock.begin("load")
        with job_context(request, layout, rank, device, tag="bench") as (ckpt_dir, parallel):
            result = bench(request, ns.result, device, parallel, ckpt_dir=ckpt_dir, load_clock=load_clock,
                           warmup=ns.warmup, evals=ns.eval)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's result
        return record_job_failure(exc, tag="bench", rank=rank, result_path=ns.result,
                                  log_hint="see the rank log (clusterkit logs RUN)")
    if rank == 0:
        atomic_write_json(ns.result, {**result, "started_at": started_at, "finished_at": time.time()})
        print(f"[bench] done: {ns.warmup + ns.eval} iteration(s); result {ns.result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
