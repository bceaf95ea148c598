"""Text-to-video: prompts -> T5 embeddings -> rectified-flow sampling with CFG -> VAE decode -> files.

Stages, in order, each timed:
1. text encoding: every prompt alone (its embedding never depends on the others), then the
   encoder is offloaded so it holds no GPU memory while the transformer denoises;
2. per batch of videos: initial noise from each video's own generator, ``steps`` Euler steps
   (each timed), VAE decode, and writing the files (atomically) plus the JSON index. With
   references or ``--loop`` (``conditioned``), the references are encoded and placed in the
   noise first ("conditioning" stage) and the sampler keeps them by a per-video frame mask;
   a looped video is one clip per loop, stitched.

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
from opensora_core.inference.conditioned import BatchConditioning, loop_seed, noise_generators, stitch
from opensora_core.inference.prompt_syntax import merge_segments, segment_index
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
    frame_mask: torch.Tensor | None = None,
    generator: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run the v1.2 sampler on latents ``z`` [B, C, T, H, W] for captions ``y`` [B, 1, L, C'] with
    text mask ``mask`` [B, L]; the null caption is the model's learned one. With ``parallel``, every
    rank of its replica group calls this with the same inputs and gets the same latents.

    Batch-invariant by construction: the transformer sees each video's CFG pair alone
    (``per_video_model_fn``) and the sampler's other operations are elementwise, so a video's
    latents are bit for bit those of a batch of one, whatever else is in the batch.

    ``frame_mask`` [B, T] (``conditioned``): per video and latent frame, 0 keeps the reference
    latents already placed in ``z``, an edit ratio in between re-noises them once t <= ratio*1000
    with noise from that video's ``generator``, 1 generates the frame."""
    dtype = stdit3.x_embedder.proj.weight.dtype
    cond = video_conditions(z.shape[0], height, width, num_frames, fps, dtype=dtype, device=z.device)
    times = rectified_flow.timesteps(
        steps, height=cond["height"], width=cond["width"], num_frames=cond["num_frames"],
        batch_size=z.shape[0], device=z.device,
    )
    one = video_conditions(1, height, width, num_frames, fps, dtype=dtype, device=z.device)
    model_fn = per_video_model_fn([sampler_model_fn(stdit3, y[row : row + 1], mask[row : row + 1], one, z.shape[1],
                                                    parallel) for row in range(z.shape[0])])
    return rectified_flow.sample(model_fn, z.to(dtype), times, cfg_scale=cfg_scale, callback=on_step,
                                 frame_mask=frame_mask, generator=generator)


def per_video_model_fn(model_fns: Sequence[Callable]) -> Callable:
    """The sampler ``model_fn`` of a batch of B videos from one ``model_fn`` per video (each bound
    to that video's caption): video i's pair [z_i; z_i] goes through ``model_fns[i]`` alone and the
    predictions are reassembled as [cond_0 .. cond_B-1; null_0 .. null_B-1].

    Why: batched matmuls, convolutions and attention round differently for other batch sizes
    (about 1e-6 per forward on CPU), which changed pixels; one pair per call makes a video's
    prediction exactly the batch-of-one prediction, and no video's caption can reach another's."""
    if len(model_fns) == 1:
        return model_fns[0]

    def model_fn(z: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None) -> torch.Tensor:
        batch = len(model_fns)
        outs = []
        for row, fn in enumerate(model_fns):
            pair = [row, batch + row]
            outs.append(fn(z[pair], t[pair], None if x_mask is None else x_mask[pair]))
        return torch.cat([out[:1] for out in outs] + [out[1:] for out in outs])

    return model_fn


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
        # references / loops (docs/inference-modes.md): None for plain text-to-video
        conditioning = BatchConditioning(request, batch, models.vae, ctx) if request.conditioned else None
        event = {"stage": "denoising", "video": done + 1, "videos": len(videos), "batch_size": len(batch),
                 "steps": request.steps * request.loop}
        step_times = clock.new_batch()
        clips = []
        for loop_i in range(request.loop):  # one clip per loop; each later one continues the one before
            frame_mask = None
            z = initial_noise([loop_seed(v.seed, loop_i) for v in batch], latent_shape, device)
            if conditioning is not None:
                clock.begin("conditioning")
                z, frame_mask = conditioning.prepare(z, loop_i)
                clock.end()
            clock.begin("denoising")
            y, mask = (torch.cat([embeddings[_caption_key(request, v.prompt_index, loop_i)][part] for v in batch])
                       for part in (0, 1))
            on_step = functools.partial(_report_step, clock, step_times, emit, event, loop_i * request.steps)
            z = denoise(models.stdit3, z, y, mask, height=geometry.height, width=geometry.width,
                        num_frames=geometry.num_frames, fps=request.fps, steps=request.steps,
                        cfg_scale=request.cfg_scale, on_step=on_step, parallel=parallel, frame_mask=frame_mask,
                        generator=None if frame_mask is None else noise_generators(batch, loop_i))
            clock.end()

            clock.begin("decode")
            emit({"stage": "decode", "video": done + 1, "videos": len(videos)})
            if request.loop > 1:  # keeps the pixels: the next clip is conditioned on them
                clips.append(conditioning.decode_clip(z, geometry.num_frames))
            else:
                clips.append(_decode(models, z.to(vae_dtype), geometry.num_frames, ctx))
            clock.end()
        frames = [stitch(video_clips, request.condition_frame_length) for video_clips in zip(*clips)]

        clock.begin("write")
        shared = (time.perf_counter() - began) / len(batch)  # denoising and decode, per video of the batch
        for item, video_frames in zip(batch, frames if ctx.leader else ()):
            writing = time.perf_counter()
            path = write_video(output_dir / item.filename, video_frames, fps=request.fps)
            seconds = shared + time.perf_counter() - writing
            entry = _index_entry(item, path, video_frames, texts[item.prompt_index], tokens[item.prompt_index],
                                 models.stdit3.config.model_max_length, request.fps)
            entry.update(seconds=round(seconds, 3), node=request.node, layout=layout.to_dict(),
                         replica=ctx.replica, run=request.run_id or request.name, refiner=request.refiner)
            if conditioning is not None:
                entry["conditioning"] = request.conditioning_record(item.prompt_index)
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
    # one embedding per loop segment of each prompt (one segment without the |0|...|2|... syntax)
    segments = {i: request.encoder_segments(i) for i in indices}
    keys = [(i, k) for i in indices for k in range(len(segments[i]))]
    texts = {i: merge_segments([text for _, text in segments[i]], segments[i]) for i in indices}
    tokens: dict[int, int] = {}
    stacked = None
    if ctx.leader:
        encoder = models.text_encoder
        encoded = []
        for done, (index, k) in enumerate(keys):
            encoded.append(encoder.encode([segments[index][k][1]]))
            emit({"stage": "text_encoding", "done": done + 1, "total": len(keys)})
        tokens = {i: max(encoder.count_tokens(text) for _, text in segments[i]) for i in indices}
        if request.t5_offload:
            encoder.offload()
        stacked = (torch.cat([y for y, _ in encoded]), torch.cat([m for _, m in encoded])) if encoded else None
    if not indices:
        return {}, texts, tokens
    if ctx.group.size > 1:
        from opensora_core.dtypes import torch_dtype
        from opensora_core.parallel.shared import share_embeddings

        config = models.stdit3.config
        stacked = share_embeddings(ctx.group, stacked, count=len(keys), length=config.model_max_length,
                                   width=config.caption_channels, dtype=torch_dtype(request.t5_dtype), device=device)
    y, mask = (t.to(device) for t in stacked)
    embeddings = {key: (y[row : row + 1], mask[row : row + 1]) for row, key in enumerate(keys)}
    return embeddings, texts, tokens


def _caption_key(request: InferRequest, prompt_index: int, loop_i: int) -> tuple[int, int]:
    """The embedding clip ``loop_i`` of prompt ``prompt_index`` uses: (prompt, its loop segment)."""
    starts = tuple((start, "") for start, _ in request.encoder_segments(prompt_index))
    return prompt_index, segment_index(starts, loop_i)


def _decode(models: Models, z: torch.Tensor, num_frames: int, ctx: ParallelContext) -> list:
    """uint8 frames [T, H, W, 3] of every video of the batch, on the group's first rank (others: []).
    One video at a time: a batched decode rounds differently (and its spatial micro-batches would
    mix frames of two videos), so each video is decoded exactly as in a batch of one."""
    videos = [z[row : row + 1] for row in range(z.shape[0])]
    if ctx.group.size == 1:
        return [to_uint8(models.vae.decode(video, num_frames=num_frames)[0]) for video in videos]
    from opensora_core.parallel.shared import decode_shared

    frames = [decode_shared(models.vae, video, num_frames, ctx.group) for video in videos]
    return [] if frames[0] is None else [video[0].numpy() for video in frames]


def _report_step(clock: StageClock, times: list, emit: EventFn, event: dict, offset: int, step: int,
                 _z: torch.Tensor) -> None:
    """``offset``: the steps of the video's earlier clips (``--loop``)."""
    times.append(clock.lap())
    emit({**event, "step": offset + step + 1, "step_s": times[-1]})


def _index_entry(item: VideoItem, path: Path, frames, text: str, tokens: int, max_tokens: int, fps: int) -> dict:
    count, height, width, _ = frames.shape
    return {
        "file": path.name,
        "path": str(path),
        "prompt_index": item.file_index,  # the file name's index (a slice keeps the list's numbering)
        "sample": item.sample,
        "prompt": item.prompt,
        "refined_prompt": item.refined_prompt,
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
