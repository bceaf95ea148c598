"""The inference job, run by torchrun on every rank (``jobs/infer.yaml``)::

    python -m opensora_core.inference.run --request R.json --prompts P.json --result result.json

``request.json`` holds the settings and ``prompts.json`` the prompts (files, never shell text);
both are written into the run folder by ``clusterkit submit infer``. Rank 0 writes the videos,
their JSON index (seed, prompt, pixel digest per file) and ``result.json`` (outputs, per-stage
timings, peak memory); progress goes to the rank log, one line per step, and to
``progress.json`` next to the result for the CLI's progress bar.

World size 1 only for now: sequence parallelism comes with a later issue, and a larger world
is refused with a clear error rather than run as N copies of the same work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from clusterkit.errors import ClusterkitError, UserError
from clusterkit.launch.records import atomic_write_json
from opensora_core.dtypes import torch_dtype
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.inference.pipeline import StageClock, generate
from opensora_core.inference.request import InferRequest
from opensora_core.presets import get_preset

PROGRESS_EVERY_S = 0.5


def index_path(output_dir: Path, name: str) -> Path:
    """The JSON index of a run's outputs: ``<output dir>/<name>_index.json``."""
    return output_dir / f"{name}_index.json"


class Reporter:
    """Turns pipeline events into rank-log lines and a throttled ``progress.json``; keeps the index current."""

    def __init__(self, progress_path: Path, index_file: Path, header: dict) -> None:
        self.progress_path = progress_path
        self.index_file = index_file
        self.header = header
        self.entries: list[dict] = []
        self._written = 0.0

    def __call__(self, event: dict) -> None:
        stage = event["stage"]
        if stage == "denoising":
            print(f"[infer] video {event['video']}/{event['videos']} step {event['step']}/{event['steps']} "
                  f"{event['step_s']:.3f}s", flush=True)
        elif stage == "write":
            self.entries.append(event["entry"])
            atomic_write_json(self.index_file, {**self.header, "videos": self.entries})
            print(f"[infer] wrote {event['entry']['path']} (seed {event['entry']['seed']})", flush=True)
        elif stage == "text_encoding":
            print(f"[infer] encoded prompt {event['done']}/{event['total']}", flush=True)
        else:
            print(f"[infer] decoding video {event['video']}/{event['videos']}", flush=True)
        last_step = stage == "denoising" and event["step"] == event["steps"]
        if stage != "denoising" or last_step or time.monotonic() - self._written >= PROGRESS_EVERY_S:
            atomic_write_json(self.progress_path, {**event, "time": time.time()})
            self._written = time.monotonic()


def run(request: InferRequest, result_path: Path, device: torch.device) -> dict:
    """Load the models, make every video, write the index; returns the result record."""
    started = time.perf_counter()
    preset = get_preset(request.model)
    output_dir = Path(request.output_dir) if request.output_dir else result_path.parent / "outputs"
    dtype_name = request.model_dtype
    if device.type == "cpu" and dtype_name == "fp16":
        raise UserError("fp16 needs a GPU and this rank has none", hint="use fp32 or bf16 on CPU")
    t5_device = device if request.t5_device == "gpu" else torch.device("cpu")
    random_weights = request.random_weights
    weights = f"random, seed {preset.weights_seed}" if random_weights else str(request.ckpt_dir)
    if random_weights:
        print(f"[infer] WARNING: --model {preset.name} uses RANDOM weights (seed {preset.weights_seed}): the videos "
              "are noise, not generated content", flush=True)
    print(f"[infer] model {preset.name} ({weights}) on {device}, {dtype_name}; T5 on {t5_device}, "
          f"{request.t5_dtype}; {len(request.prompts)} prompt(s) x {request.num_samples}", flush=True)

    clock = StageClock(device)
    clock.begin("load")
    with tempfile.TemporaryDirectory(prefix="clusterkit-tiny-") as tmp:
        ckpt_dir = request.ckpt_dir or save_random_checkpoint(tmp, preset)
        models = load_models(
            preset, ckpt_dir, dtype=torch_dtype(dtype_name), device=device,
            t5_dtype=torch_dtype(request.t5_dtype), t5_device=t5_device,
            vae_micro_batch=request.vae_micro_batch, flash_attn=request.flash_attn and device.type == "cuda",
        )
    clock.end()

    geometry = request.geometry
    header = {
        "run": request.name, "model": preset.name, "random_weights": random_weights, "weights": weights,
        "seed": request.seed, "seed_rule": "sha256(f'{seed}\\0{sample}\\0{prompt}')[:8] little-endian, 63 bits",
        "steps": request.steps, "cfg_scale": request.cfg_scale, "fps": request.fps,
        "frames": geometry.num_frames, "height": geometry.height, "width": geometry.width,
    }
    reporter = Reporter(result_path.with_name("progress.json"), index_path(output_dir, request.name), header)
    entries = generate(request, models, output_dir, device=device, on_event=reporter, clock=clock)
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
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        if world > 1:
            raise UserError(
                f"inference runs on one GPU for now (this job has {world} ranks); sequence parallelism comes later",
                hint="submit with --gpus 1",
            )
        request = InferRequest.load(ns.request, ns.prompts)
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with torch.inference_mode():
            result = run(request, ns.result, device)
    except ClusterkitError as exc:
        print(f"[infer] error: {exc.message}" + (f"\n[infer] hint: {exc.hint}" if exc.hint else ""), flush=True)
        if rank == 0:
            atomic_write_json(ns.result, {"ok": False, "error": exc.to_dict()})
        return exc.exit_code
    except Exception as exc:  # a bug or an environment problem: keep the traceback in the rank log
        traceback.print_exc()
        if rank == 0:
            atomic_write_json(ns.result, {"ok": False, "error": {
                "type": type(exc).__name__, "kind": "internal_error", "message": f"{type(exc).__name__}: {exc}",
                "hint": "see the rank log (clusterkit logs RUN)"}})
        return 1
    if rank == 0:
        atomic_write_json(ns.result, result)
        print(f"[infer] done: {len(result['outputs'])} file(s) in {result['output_dir']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
