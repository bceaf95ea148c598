"""The inference job, run by torchrun on every rank (``jobs/infer.yaml``)::

    python -m opensora_core.inference.run --request R.json --prompts P.json --result result.json

``request.json`` holds the settings and ``prompts.json`` the prompts (files, never shell text);
both are written into the run folder by ``clusterkit submit infer``. Rank 0 writes the JSON
index (seed, prompt, pixel digest per file) and ``result.json`` (outputs, per-stage timings,
peak memory, the layout and the bytes it sent); progress goes to the rank log, one line per
step, and to ``progress.json`` next to the result for the CLI's progress bar.

With several ranks the request's ``sp`` / ``cfg_parallel`` and the world size make the
``ParallelLayout`` (replicas x cfg x sp), checked before anything is loaded; the first rank of
every replica group writes that group's videos (and, in a sweep, their completion records).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from clusterkit.errors import UserError
from clusterkit.launch.records import atomic_write_json, record_job_failure
from opensora_core.dtypes import torch_dtype
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import StageClock, generate
from opensora_core.inference.records import RECORDS, RUN_INDEXES, write_record
from opensora_core.inference.request import InferRequest
from opensora_core.parallel.groups import ParallelContext, build_context
from opensora_core.presets import describe_checkpoint, get_preset

PROGRESS_EVERY_S = 0.5


def index_path(output_dir: Path, name: str) -> Path:
    """The JSON index of a run's outputs: ``<output dir>/<name>_index.json``."""
    return output_dir / f"{name}_index.json"


class Reporter:
    """Turns pipeline events into rank-log lines; on rank 0 also a throttled ``progress.json`` and the
    index kept current; on every rank that writes videos of a sweep, their completion records."""

    def __init__(self, progress_path: Path, index_file: Path, header: dict, *, files: bool = True,
                 records_dir: Path | None = None) -> None:
        self.progress_path = progress_path
        self.index_file = index_file
        self.header = header
        self.files = files
        self.records_dir = records_dir
        self.entries: list[dict] = []
        self._written = 0.0

    def __call__(self, event: dict) -> None:
        stage = event["stage"]
        if stage == "denoising":
            print(f"[infer] video {event['video']}/{event['videos']} step {event['step']}/{event['steps']} "
                  f"{event['step_s']:.3f}s", flush=True)
        elif stage == "write":
            self.entries.append(event["entry"])
            if self.records_dir is not None:
                write_record(self.records_dir, {**event["entry"], "sweep": self.header.get("sweep")})
            if self.files:
                atomic_write_json(self.index_file, {**self.header, "videos": self.entries})
            print(f"[infer] wrote {event['entry']['path']} (seed {event['entry']['seed']})", flush=True)
        elif stage == "text_encoding":
            print(f"[infer] encoded prompt {event['done']}/{event['total']}", flush=True)
        else:
            print(f"[infer] decoding video {event['video']}/{event['videos']}", flush=True)
        last_step = stage == "denoising" and event["step"] == event["steps"]
        if not self.files:
            return
        if stage != "denoising" or last_step or time.monotonic() - self._written >= PROGRESS_EVERY_S:
            atomic_write_json(self.progress_path, {**event, "time": time.time()})
            self._written = time.monotonic()


def run(request: InferRequest, result_path: Path, device: torch.device, parallel: ParallelContext | None = None,
        *, ckpt_dir: str | Path | None, clock: StageClock, started: float) -> dict | None:
    """Load the models from ``ckpt_dir`` (and the request's ``ckpt_paths``), make this rank's share of
    the videos; on rank 0 write the index and return the result record (other ranks: None). ``clock``
    has begun the "load" stage."""
    rank = parallel.rank if parallel is not None else 0
    leader = parallel is None or parallel.leader
    preset = get_preset(request.model)
    output_dir = Path(request.output_dir) if request.output_dir else result_path.parent / "outputs"
    dtype_name = request.model_dtype
    if device.type == "cpu" and dtype_name == "fp16":
        raise UserError("fp16 needs a GPU and this rank has none", hint="use fp32 or bf16 on CPU")
    t5_device = device if request.t5_device == "gpu" else torch.device("cpu")
    if leader:  # only a group's first rank reads the references; checked (not decoded) before any weight loads
        request.check_references()
    random_weights = request.random_weights
    weights = (f"random, seed {preset.weights_seed}" if random_weights
               else describe_checkpoint(request.ckpt_dir, request.ckpt_paths))
    if random_weights and rank == 0:
        print(f"[infer] WARNING: --model {preset.name} uses RANDOM weights (seed {preset.weights_seed}): the videos "
              "are noise, not generated content", flush=True)
    print(f"[infer] model {preset.name} ({weights}) on {device}, {dtype_name}; T5 on {t5_device}, "
          f"{request.t5_dtype}; {len(request.prompts)} prompt(s) x {request.num_samples}", flush=True)

    models = load_models(
        preset, ckpt_dir, ckpt_paths=request.ckpt_paths, dtype=torch_dtype(dtype_name), device=device,
        t5_dtype=torch_dtype(request.t5_dtype), t5_device=t5_device,
        vae_micro_batch=request.vae_micro_batch, flash_attn=request.flash_attn and device.type == "cuda",
        text_encoder=leader,  # the group's first rank encodes and broadcasts the captions
    )
    clock.end()

    geometry = request.geometry
    header = {
        "run": request.run_id or request.name, "model": preset.name, "random_weights": random_weights, "weights": weights,
        "seed": request.seed, "seed_rule": "sha256(f'{seed}\\0{sample}\\0{prompt}')[:8] little-endian, 63 bits",
        "steps": request.steps, "cfg_scale": request.cfg_scale, "fps": request.fps,
        "frames": geometry.num_frames, "height": geometry.height, "width": geometry.width,
        "layout": (parallel.layout if parallel is not None else request.layout(1)).to_dict(),
        "node": request.node, "sweep": request.sweep, "refiner": request.refiner,
    }
    run_id = header["run"]
    records_dir = output_dir / RECORDS if request.sweep else None
    # a sweep's folder is shared by the jobs of several nodes: each job's own index goes in runs/
    index_file = index_path(output_dir / RUN_INDEXES if request.sweep else output_dir, run_id)
    index_file.parent.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(result_path.with_name("progress.json"), index_file, header, files=rank == 0,
                        records_dir=records_dir if leader else None)
    entries = generate(request, models, output_dir, device=device, on_event=reporter, clock=clock, parallel=parallel)
    counted = parallel.counter.snapshot() if parallel is not None else {"bytes": {}, "calls": {}}
    if parallel is not None and parallel.world.size > 1:
        gathered = parallel.world.gather_object(entries)
        if gathered is None:
            return None
        entries = sorted((e for part in gathered for e in part), key=lambda e: (e["prompt_index"], e["sample"]))
        atomic_write_json(index_file, {**header, "videos": entries})
    if request.sweep:
        from opensora_core.inference.records import write_sweep_index

        write_sweep_index(output_dir)
    timings = clock.timings()
    timings["total_s"] = round(time.perf_counter() - started, 6)
    return {
        "ok": True,
        **header,
        "device": str(device),
        "dtype": dtype_name,
        "t5": {"device": str(t5_device), "dtype": request.t5_dtype},
        "vae_micro_batch": request.vae_micro_batch,
        "batch_size": request.batch_size,
        "geometry": {"latent": list(geometry.latent), "patches": list(geometry.patches),
                     "tokens": geometry.total_tokens},
        "output_dir": str(output_dir),
        "outputs": [e["path"] for e in entries],
        "index": str(reporter.index_file),
        "videos": entries,
        "communication": counted,
        "timings": timings,
        "peak_memory": clock.peak_memory(),
        "torch": torch.__version__,
        "notes": list(request.notes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.inference.run")
    parser.add_argument("--request", type=Path, required=True, help="settings JSON (InferRequest without prompts)")
    parser.add_argument("--prompts", type=Path, required=True, help="JSON list of prompts")
    parser.add_argument("--result", type=Path, required=True, help="where rank 0 writes the result JSON")
    ns = parser.parse_args(argv)
    started = time.perf_counter()
    rank, world, local_rank = rank_environment()
    try:
        request = InferRequest.load(ns.request, ns.prompts)
        layout = request.layout(world)  # LayoutError naming the rule, on every rank, before anything loads
        device = rank_device(local_rank)
        clock = StageClock(device)
        clock.begin("load")
        with job_context(request, layout, rank, device, tag="infer") as (ckpt_dir, parallel):
            result = run(request, ns.result, device, parallel, ckpt_dir=ckpt_dir, clock=clock, started=started)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's result
        return record_job_failure(exc, tag="infer", rank=rank, result_path=ns.result,
                                  log_hint="see the rank log (clusterkit logs RUN)")
    if rank == 0:
        atomic_write_json(ns.result, result)
        print(f"[infer] done: {len(result['outputs'])} file(s) in {result['output_dir']}", flush=True)
    return 0


def rank_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun gives this process (0, 1, 0 when started by hand)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(local_rank: int) -> torch.device:
    """This rank's GPU (made current), or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


@contextmanager
def job_context(request: InferRequest, layout, rank: int, device: torch.device, *, tag: str):
    """The weights folder (random ones written to a temporary folder for a random-weights preset;
    None when ``ckpt_paths`` names every component) and the ParallelContext (None for one process),
    under inference mode; the process group is left at the end.

    Random weights are written before joining the process group: transformers writes a model's
    files only on rank 0 of an initialised group, and every rank reads its own copy."""
    parallel = None
    with tempfile.TemporaryDirectory(prefix=f"clusterkit-{tag}-") as tmp:
        ckpt_dir = (save_random_checkpoint(tmp, get_preset(request.model)) if request.random_weights
                    else request.ckpt_dir)
        if layout.world_size > 1:
            parallel = _init_parallel(layout, rank, device)
            leads = " (writes its videos)" if parallel.leader and tag == "infer" else ""
            print(f"[{tag}] rank {rank}: {layout.describe()}; replica {parallel.replica}{leads}", flush=True)
        with torch.inference_mode():
            yield ckpt_dir, parallel
    # Left only after success: after a failure other ranks may still wait in a collective, and
    # tearing the group down under them can block; the failing process exits right after instead.
    if parallel is not None:
        import torch.distributed as dist

        dist.destroy_process_group()


def _init_parallel(layout, rank: int, device: torch.device) -> ParallelContext:
    """Join the job's process group (NCCL on GPUs, gloo on CPUs) and build the layout's groups."""
    import torch.distributed as dist

    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return build_context(layout, rank, device)


if __name__ == "__main__":
    sys.exit(main())
