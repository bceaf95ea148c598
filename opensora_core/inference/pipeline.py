"""Text-to-video: prompts -> T5 embeddings -> rectified-flow sampling with CFG -> VAE decode -> files.

Stages, in order, each timed:
1. text encoding: every prompt alone (its embedding never depends on the others), then the
   encoder is offloaded so it holds no GPU memory while the transformer denoises;
2. per batch of videos: initial noise from each video's own generator, ``steps`` Euler steps
   (each timed), VAE decode, and writing the files (atomically) plus the JSON index.

Library code: it never prints; ``on_event`` receives progress events and the caller logs them.
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from opensora_core.conditioning import video_conditions
from opensora_core.inference.models import Models
from opensora_core.inference.prompts import encoder_text
from opensora_core.inference.request import InferRequest, VideoItem
from opensora_core.inference.video_io import frames_sha256, to_uint8, write_video
from opensora_core.models.stdit3 import STDiT3
from opensora_core.schedulers import rectified_flow

EventFn = Callable[[dict], None]


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(seeds), *shape] standard normal noise; row i comes from a CPU generator seeded ``seeds[i]``
    alone, so a video's noise depends on nothing else in the batch (and is the same on CPU and GPU)."""
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds]
    return torch.stack(rows).to(device)


def denoise(
    stdit3: STDiT3,
    z: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    height: int,
    width: int,
    num_frames: int,
    fps: int,
    steps: int,
    cfg_scale: float,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the v1.2 sampler on latents ``z`` [B, C, T, H, W] for captions ``y`` [B, 1, L, C'] with
    text mask ``mask`` [B, L]; the null caption is the model's learned one."""
    dtype = stdit3.x_embedder.proj.weight.dtype
    cond = video_conditions(z.shape[0], height, width, num_frames, fps, dtype=dtype, device=z.device)
    times = rectified_flow.timesteps(
        steps, height=cond["height"], width=cond["width"], num_frames=cond["num_frames"],
        batch_size=z.shape[0], device=z.device,
    )
    model_fn = stdit3.cfg_model_fn(y, mask, fps=cond["fps"], height=cond["height"], width=cond["width"])
    return rectified_flow.sample(model_fn, z.to(dtype), times, cfg_scale=cfg_scale, callback=on_step)


@dataclass
class StageClock:
    """Wall time (GPU work synchronised first) and peak memory of each stage, plus step times."""

    device: torch.device
    seconds: dict = field(default_factory=dict)
    step_seconds: list = field(default_factory=list)  # one list of step times per batch
    memory: dict = field(default_factory=dict)
    _stage: str = ""
    _began: float = 0.0
    _lap: float = 0.0

    def begin(self, stage: str) -> None:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stage, self._began = stage, time.perf_counter()
        self._lap = self._began

    def new_batch(self) -> list:
        """A fresh list for the step times of the next batch (kept in ``step_seconds``)."""
        self.step_seconds.append([])
        return self.step_seconds[-1]

    def lap(self) -> float:
        """Seconds since ``begin`` or the previous ``lap``."""
        self._sync()
        now = time.perf_counter()
        elapsed, self._lap = now - self._lap, now
        return elapsed

    def end(self) -> float:
        """Close the stage begun last; its time adds to the stage's total."""
        self._sync()
        elapsed = time.perf_counter() - self._began
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + elapsed
        self.memory[self._stage] = max(self.memory.get(self._stage, 0), _peak_bytes(self.device))
        return elapsed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timings(self) -> dict:
        """``<stage>_s`` totals, every denoising step's seconds, and their mean."""
        steps = [round(s, 6) for batch in self.step_seconds for s in batch]
        timings = {f"{stage}_s": round(s, 6) for stage, s in self.seconds.items()}
        timings["denoising_steps_s"] = steps
        timings["denoising_step_mean_s"] = round(sum(steps) / len(steps), 6) if steps else None
        return timings

    def peak_memory(self) -> dict:
        """CUDA: ``max_memory_allocated`` per stage; CPU: process RSS at each stage end, and the peak RSS."""
        if self.device.type == "cuda":
            return {"kind": "cuda_max_memory_allocated", "peak_bytes": max(self.memory.values(), default=0),
                    "by_stage_bytes": dict(self.memory)}
        return {"kind": "cpu_rss", "peak_bytes": _max_rss_bytes(), "by_stage_bytes": dict(self.memory)}


def generate(
    request: InferRequest,
    models: Models,
    output_dir: Path,
    *,
    device: torch.device,
    on_event: EventFn | None = None,
    clock: StageClock | None = None,
) -> list[dict]:
    """Make every video of ``request``; returns the index entries (file, prompt, seed, ...) of the
    files written to ``output_dir``. ``clock`` collects the stage timings."""
    emit = on_event or (lambda event: None)
    clock = clock if clock is not None else StageClock(device)
    geometry = request.geometry
    videos = request.videos()
    output_dir.mkdir(parents=True, exist_ok=True)

    clock.begin("text_encoding")
    texts = [encoder_text(p, request.aes) for p in request.prompts]
    encoder = models.text_encoder
    embeddings = []
    for index, text in enumerate(texts):
        y, mask = encoder.encode([text])
        embeddings.append((y.to(device), mask.to(device)))
        emit({"stage": "text_encoding", "done": index + 1, "total": len(texts)})
    tokens = [encoder.count_tokens(text) for text in texts]
    encoder.offload()
    clock.end()

    entries: list[dict] = []
    batches = [videos[i : i + request.batch_size] for i in range(0, len(videos), request.batch_size)]
    latent_shape = (models.stdit3.config.in_channels, *geometry.latent)
    done = 0
    for batch in batches:
        clock.begin("denoising")
        y = torch.cat([embeddings[v.prompt_index][0] for v in batch])
        mask = torch.cat([embeddings[v.prompt_index][1] for v in batch])
        z = initial_noise([v.seed for v in batch], latent_shape, device)
        event = {"stage": "denoising", "video": done + 1, "videos": len(videos), "batch_size": len(batch),
                 "steps": request.steps}
        on_step = functools.partial(_report_step, clock, clock.new_batch(), emit, event)
        z = denoise(models.stdit3, z, y, mask, height=geometry.height, width=geometry.width,
                    num_frames=geometry.num_frames, fps=request.fps, steps=request.steps,
                    cfg_scale=request.cfg_scale, on_step=on_step)
        clock.end()

        clock.begin("decode")
        emit({"stage": "decode", "video": done + 1, "videos": len(videos)})
        decoded = models.vae.decode(z.to(next(models.vae.parameters()).dtype), num_frames=geometry.num_frames)
        clock.end()

        clock.begin("write")
        for item, video in zip(batch, decoded):
            frames = to_uint8(video)
            path = write_video(output_dir / item.filename, frames, fps=request.fps)
            entry = _index_entry(item, path, frames, texts[item.prompt_index], tokens[item.prompt_index],
                                 encoder.max_length, request.fps)
            entries.append(entry)
            done += 1
            emit({"stage": "write", "video": done, "videos": len(videos), "entry": entry})
        clock.end()
    return entries


def _report_step(clock: StageClock, times: list, emit: EventFn, event: dict, step: int, _z: torch.Tensor) -> None:
    times.append(clock.lap())
    emit({**event, "step": step + 1, "step_s": times[-1]})


def _index_entry(item: VideoItem, path: Path, frames, text: str, tokens: int, max_tokens: int, fps: int) -> dict:
    count, height, width, _ = frames.shape
    return {
        "file": path.name,
        "path": str(path),
        "prompt_index": item.prompt_index,
        "sample": item.sample,
        "prompt": item.prompt,
        "encoder_text": text,
        "tokens": tokens,
        "truncated": tokens > max_tokens,
        "seed": item.seed,
        "frames": count,
        "height": height,
        "width": width,
        "fps": fps,
        "pixels_sha256": frames_sha256(frames),
    }


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _rss_bytes()


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _max_rss_bytes() -> int:
    return max(_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
