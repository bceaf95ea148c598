"""Text-to-video: prompts -> T5 embeddings -> rectified-flow sampling with CFG -> VAE decode -> files.

Stages, in order, each timed:
1. text encoding: every prompt alone (its embedding never depends on the others), then the
   encoder is offloaded so it holds no GPU memory while the transformer denoises;
2. per batch of videos: initial noise from each video's own generator, ``steps`` Euler steps
   (each timed), VAE decode, and writing the files (atomically) plus the JSON index.

With a ``ParallelContext`` (``opensora_core.parallel``), the videos are dealt round-robin to the
replica groups; in a group, the first rank encodes the text and broadcasts it, every rank takes
part in denoising (sequence and/or CFG parallel) and in the VAE decode, and the first rank writes
the files. Every rank of a group must call ``generate`` with the same request.

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
from opensora_core.parallel.groups import ParallelContext, single_process_context
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
    parallel: ParallelContext | None = None,
) -> torch.Tensor:
    """Run the v1.2 sampler on latents ``z`` [B, C, T, H, W] for captions ``y`` [B, 1, L, C'] with
    text mask ``mask`` [B, L]; the null caption is the model's learned one. With ``parallel``, every
    rank of its replica group calls this with the same inputs and gets the same latents."""
    dtype = stdit3.x_embedder.proj.weight.dtype
    cond = video_conditions(z.shape[0], height, width, num_frames, fps, dtype=dtype, device=z.device)
    times = rectified_flow.timesteps(
        steps, height=cond["height"], width=cond["width"], num_frames=cond["num_frames"],
        batch_size=z.shape[0], device=z.device,
    )
    model_fn = sampler_model_fn(stdit3, y, mask, cond, z.shape[1], parallel)
    return rectified_flow.sample(model_fn, z.to(dtype), times, cfg_scale=cfg_scale, callback=on_step)


def sampler_model_fn(stdit3: STDiT3, y, mask, cond: dict, channels: int, parallel: ParallelContext | None):
    """The ``model_fn`` of ``rectified_flow.sample`` for this rank's place in the layout: the plain
    CFG batch, with SP (``SequenceParallel``) and/or the CFG pair split (``cfg_parallel_model_fn``).
    ``cond``: the per-sample fps, height and width; ``channels``: the latent channels."""
    layout = parallel.layout if parallel is not None else None
    sequence = None
    if layout is not None and layout.sp_enabled:
        from opensora_core.parallel.sequence import SequenceParallel

        sequence = SequenceParallel(parallel.sp, layout.sp_scheme)
    kwargs = dict(fps=cond["fps"], height=cond["height"], width=cond["width"], sequence_parallel=sequence)
    if layout is not None and layout.cfg_enabled:
        from opensora_core.parallel.cfg import cfg_parallel_model_fn

        return cfg_parallel_model_fn(stdit3, y, mask, comm=parallel.cfg, channels=channels, **kwargs)
    return stdit3.cfg_model_fn(y, mask, **kwargs)


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
    parallel: ParallelContext | None = None,
) -> list[dict]:
    """Make the videos of ``request`` (with ``parallel``: this rank's replica group's share); returns
    the index entries (file, prompt, seed, seconds, ...) of the files this rank wrote to
    ``output_dir`` (none on ranks that are not the first of their group). ``clock`` collects the
    stage timings."""
    emit = on_event or (lambda event: None)
    clock = clock if clock is not None else StageClock(device)
    ctx = parallel if parallel is not None else single_process_context(device, request.layout(1))
    layout = ctx.layout
    geometry = request.geometry
    videos = request.videos()[ctx.replica :: layout.replicas]
    if ctx.leader:
        output_dir.mkdir(parents=True, exist_ok=True)

    clock.begin("text_encoding")
    embeddings, texts, tokens = _encode_prompts(request, models, ctx, sorted({v.prompt_index for v in videos}),
                                                device, emit)
    clock.end()

    entries: list[dict] = []
    batches = [videos[i : i + request.batch_size] for i in range(0, len(videos), request.batch_size)]
    latent_shape = (models.stdit3.config.in_channels, *geometry.latent)
    vae_dtype = next(models.vae.parameters()).dtype
    done = 0
    for batch in batches:
        began = time.perf_counter()
        clock.begin("denoising")
        y = torch.cat([embeddings[v.prompt_index][0] for v in batch])
        mask = torch.cat([embeddings[v.prompt_index][1] for v in batch])
        z = initial_noise([v.seed for v in batch], latent_shape, device)
        event = {"stage": "denoising", "video": done + 1, "videos": len(videos), "batch_size": len(batch),
                 "steps": request.steps}
        on_step = functools.partial(_report_step, clock, clock.new_batch(), emit, event)
        z = denoise(models.stdit3, z, y, mask, height=geometry.height, width=geometry.width,
                    num_frames=geometry.num_frames, fps=request.fps, steps=request.steps,
                    cfg_scale=request.cfg_scale, on_step=on_step, parallel=parallel)
        clock.end()

        clock.begin("decode")
        emit({"stage": "decode", "video": done + 1, "videos": len(videos)})
        frames = _decode(models, z.to(vae_dtype), geometry.num_frames, ctx)
        clock.end()

        clock.begin("write")
        shared = (time.perf_counter() - began) / len(batch)  # denoising and decode, per video of the batch
        for item, video_frames in zip(batch, frames if ctx.leader else ()):
            writing = time.perf_counter()
            path = write_video(output_dir / item.filename, video_frames, fps=request.fps)
            seconds = shared + time.perf_counter() - writing
            entry = _index_entry(item, path, video_frames, texts[item.prompt_index], tokens[item.prompt_index],
                                 models.stdit3.config.model_max_length, request.fps)
            entry.update(seconds=round(seconds, 3), node=request.node, layout=layout.to_dict(),
                         replica=ctx.replica, run=request.run_id or request.name)
            entries.append(entry)
            done += 1
            emit({"stage": "write", "video": done, "videos": len(videos), "entry": entry})
        if not ctx.leader:
            done += len(batch)
        clock.end()
    return entries


def _encode_prompts(request: InferRequest, models: Models, ctx: ParallelContext, indices: list[int],
                    device: torch.device, emit: EventFn) -> tuple[dict, dict, dict]:
    """Caption embeddings of the prompts ``indices`` on every rank of the group: encoded by the
    group's first rank, one prompt at a time, then broadcast. (embeddings, encoder texts, token
    counts), each by prompt index; texts and counts only on the first rank."""
    texts = {i: encoder_text(request.prompts[i], request.aes) for i in indices}
    tokens: dict[int, int] = {}
    stacked = None
    if ctx.leader:
        encoder = models.text_encoder
        encoded = []
        for done, index in enumerate(indices):
            encoded.append(encoder.encode([texts[index]]))
            emit({"stage": "text_encoding", "done": done + 1, "total": len(indices)})
        tokens = {i: encoder.count_tokens(texts[i]) for i in indices}
        encoder.offload()
        stacked = (torch.cat([y for y, _ in encoded]), torch.cat([m for _, m in encoded])) if encoded else None
    if not indices:
        return {}, texts, tokens
    if ctx.group.size > 1:
        from opensora_core.dtypes import torch_dtype
        from opensora_core.parallel.shared import share_embeddings

        config = models.stdit3.config
        stacked = share_embeddings(ctx.group, stacked, count=len(indices), length=config.model_max_length,
                                   width=config.caption_channels, dtype=torch_dtype(request.t5_dtype), device=device)
    y, mask = (t.to(device) for t in stacked)
    embeddings = {index: (y[row : row + 1], mask[row : row + 1]) for row, index in enumerate(indices)}
    return embeddings, texts, tokens


def _decode(models: Models, z: torch.Tensor, num_frames: int, ctx: ParallelContext) -> list:
    """uint8 frames [T, H, W, 3] of every video of the batch, on the group's first rank (others: [])."""
    if ctx.group.size == 1:
        return [to_uint8(video) for video in models.vae.decode(z, num_frames=num_frames)]
    from opensora_core.parallel.shared import decode_shared

    frames = decode_shared(models.vae, z, num_frames, ctx.group)
    return [] if frames is None else [video.numpy() for video in frames]


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
