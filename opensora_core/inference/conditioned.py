"""Conditioned sampling for the pipeline: references VAE-encoded and placed in the initial latents
by the mask strategies, the frame mask the sampler keeps them with, and long videos (``--loop``:
each later clip conditioned on the last latent frames of the previous one, then stitched).

Differences from upstream, on purpose:
- a group with edit_ratio 1 does not write the reference into the latents (upstream overwrites the
  noise with it and never re-noises it), so ratio 1 really ignores the reference: the video is the
  plain text-to-video one of the same seed; ratio 0 keeps the reference latents fixed;
- no ``torch.manual_seed(1024)`` before the noise: every random draw comes from the video's own
  seed (``derived_seed``), so a video does not depend on its batch or on the run's other videos.

In a replica group the first rank reads and encodes the references (of a video only the VAE
chunks of 17 frames its mask groups use: ``encode_reference``; and, for loops, decodes each
clip and encodes it again) and broadcasts the conditioned latents and the mask; every rank then
samples the same thing.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from opensora_core.inference.mask_strategy import (MaskEntry, condition_pixel_frames, loop_entry, place,
                                                   reference_span)
from opensora_core.inference.references import ReferenceInfo, load_pixels, probe
from opensora_core.inference.request import InferRequest, VideoItem
from opensora_core.inference.video_io import to_uint8
from opensora_core.parallel.groups import ParallelContext


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one use (``"loop-2"``, ``"renoise-0"``, ``"reference"``) of a video's seed."""
    digest = hashlib.sha256(f"{seed}\0{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def loop_seed(seed: int, loop_i: int) -> int:
    """Seed of the initial noise of clip ``loop_i``: the video's own for clip 0 (so a one-loop video
    is the plain text-to-video one), a derived one after."""
    return seed if loop_i == 0 else derived_seed(seed, f"loop-{loop_i}")


def noise_generators(items: Sequence[VideoItem], loop_i: int) -> list[torch.Generator]:
    """One CPU generator per video for the sampler's re-noising of conditioning frames in clip ``loop_i``."""
    return [torch.Generator("cpu").manual_seed(derived_seed(v.seed, f"renoise-{loop_i}")) for v in items]


def encode_video(vae, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """The latent [C, T', h, w] of one video [3, T, H, W] in [-1, 1]: the VAE's posterior sampled with a
    generator seeded ``seed`` on the VAE's device (as upstream samples it, but reproducibly)."""
    param = next(vae.parameters())
    generator = torch.Generator(param.device).manual_seed(seed)
    return vae.encode(pixels[None].to(param.device, param.dtype), generator=generator)[0]


def encode_reference(vae, path: str, ref_index: int, entries: Sequence[MaskEntry], *, height: int, width: int,
                     target_frames: int, align: int | None, seed: int) -> torch.Tensor:
    """Reference ``ref_index`` (``path``) of a video with mask groups ``entries``, as a latent [C, T', h, w]
    of the whole reference's length. Of a video only the VAE chunks (``micro_frame_size`` frames,
    encoded alone by the VAE) holding the latent frames the groups copy are decoded and encoded;
    the other latent frames stay zero, as nothing reads them."""
    info = _probed(path, _stamp(path))
    chunk = vae.config.micro_frame_size
    if info.kind == "image" or chunk is None:
        return encode_video(vae, _pixels(path, _stamp(path), height, width, None), seed)
    total = vae.latent_frames(info.frames)
    first, stop = reference_span(entries, ref_index, total, target_frames, align) or (0, 1)
    per_chunk = vae.latent_frames(chunk)
    first_chunk, stop_chunk = first // per_chunk, -(-stop // per_chunk)
    pixels = _pixels(path, _stamp(path), height, width, (first_chunk * chunk, min(stop_chunk * chunk, info.frames)))
    part = encode_video(vae, pixels, seed)
    latent = part.new_zeros((part.shape[0], total, *part.shape[2:]))
    offset = first_chunk * per_chunk
    assert offset + part.shape[1] == min(stop_chunk * per_chunk, total), (offset, part.shape, total)
    latent[:, offset : offset + part.shape[1]] = part
    return latent


# Every video that uses a reference encodes it with its own seed, but the file is the same: it is
# probed and decoded once per process (while unchanged on disk), not once per video. Two decoded
# spans at most stay in memory (a 720p 51-frame span is ~0.5 GB of float32).
def _stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _probed(path: str, _stamp: tuple[int, int]) -> ReferenceInfo:
    return probe(path)


@functools.lru_cache(maxsize=2)
def _pixels(path: str, _stamp: tuple[int, int], height: int, width: int, frames: tuple[int, int] | None):
    return load_pixels(path, height, width, frames)


def apply_mask_strategy(z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]],
                        entries: Sequence[Sequence[MaskEntry]], loop_i: int, align: int | None) -> torch.Tensor | None:
    """Write the reference frames of clip ``loop_i``'s groups into ``z`` [B, C, T, h, w] (in place) and
    return the frame mask [B, T] (1 = generate; the group's edit ratio on its frames), or None
    when no video has a group for this clip. Groups with edit_ratio 1 leave ``z`` alone."""
    frames = z.shape[2]
    mask = torch.ones(z.shape[0], frames, dtype=torch.float32, device=z.device)
    used = False
    for row, (video_refs, video_entries) in enumerate(zip(refs, entries)):
        for entry in video_entries:
            if entry.loop_id != loop_i:
                continue
            used = True
            ref = video_refs[entry.ref_index]
            spot = place(entry, ref.shape[1], frames, align, what=f"mask_strategy of video {row} of the batch")
            target = slice(spot.target_start, spot.target_start + spot.length)
            if spot.edit_ratio < 1:
                z[row, :, target] = ref[:, spot.ref_start : spot.ref_start + spot.length].to(z.dtype)
            mask[row, target] = spot.edit_ratio
    return mask if used else None


def stitch(clips: Sequence[np.ndarray], condition_frame_length: int) -> np.ndarray:
    """Upstream's saving of a looped video: the first clip [T, H, W, 3] whole, then every later clip
    without its first ``condition_pixel_frames(condition_frame_length)`` frames (they repeat the
    end of the clip before)."""
    if len(clips) == 1:
        return clips[0]
    drop = condition_pixel_frames(condition_frame_length)
    return np.concatenate([clips[0], *(clip[drop:] for clip in clips[1:])])


class BatchConditioning:
    """The conditioning of one batch of videos through its clips; every rank of the replica group
    builds one and calls ``prepare`` (then ``decode_clip`` when looping) for clip 0, 1, ... in order."""

    def __init__(self, request: InferRequest, items: Sequence[VideoItem], vae, ctx: ParallelContext) -> None:
        conditioning = request.conditioning
        self.request = request
        self.items = list(items)
        self.vae = vae
        self.ctx = ctx
        self.paths = [conditioning[v.prompt_index].paths for v in self.items]
        self.entries = [list(conditioning[v.prompt_index].entries) for v in self.items]
        self.refs: list[list[torch.Tensor]] = [[] for _ in self.items]  # encoded, on the group's first rank
        self.previous: list[torch.Tensor] | None = None  # the last clip's pixels [3, T, H, W] per video
        self._references_encoded = False

    @property
    def looping(self) -> bool:
        return self.request.loop > 1

    def prepare(self, z: torch.Tensor, loop_i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clip ``loop_i``'s initial latents (references placed) and frame mask (None: plain sampling)."""
        if loop_i > 0:  # the previous clip becomes the next reference: after the prompt's own and earlier clips
            for paths, video_entries in zip(self.paths, self.entries):
                video_entries.append(loop_entry(loop_i, len(paths) + loop_i - 1, self.request.condition_frame_length,
                                                self.request.condition_frame_edit))
        if not any(e.loop_id == loop_i for video_entries in self.entries for e in video_entries):
            return z, None
        group = self.ctx.group
        mask = None
        if self.ctx.leader:
            self._encode(loop_i)
            mask = apply_mask_strategy(z, self.refs, self.entries, loop_i, self.request.align)
        if group.size > 1:
            if mask is None:
                mask = torch.empty((z.shape[0], z.shape[2]), dtype=torch.float32, device=z.device)
            z = group.broadcast(z.contiguous(), 0, "conditioning")
            mask = group.broadcast(mask, 0, "conditioning")
        return z, mask

    def decode_clip(self, z: torch.Tensor, num_frames: int) -> list[np.ndarray]:
        """With loops: decode clip ``z`` on the group's first rank, one video at a time, keeping the
        pixels for the next clip's conditioning; uint8 frames per video there, [] on the other ranks."""
        if not self.ctx.leader:
            return []
        param = next(self.vae.parameters())
        pixels = [self.vae.decode(z[row : row + 1].to(param.dtype), num_frames=num_frames)[0]
                  for row in range(z.shape[0])]
        self.previous = pixels
        return [to_uint8(video) for video in pixels]

    def _encode(self, loop_i: int) -> None:
        """Encode what clip ``loop_i`` needs: the references (clip 0), the previous clip (later clips)."""
        if not self._references_encoded:
            geometry, request = self.request.geometry, self.request
            for row, paths in enumerate(self.paths):
                seed = self.items[row].seed
                self.refs[row] = [encode_reference(self.vae, path, k, self.entries[row], height=geometry.height,
                                                   width=geometry.width, target_frames=geometry.latent[0],
                                                   align=request.align, seed=derived_seed(seed, f"reference-{k}"))
                                  for k, path in enumerate(paths)]
            self._references_encoded = True
        if loop_i == 0:
            return
        for row, pixels in enumerate(self.previous):
            self.refs[row].append(encode_video(self.vae, pixels, derived_seed(self.items[row].seed, f"clip-{loop_i}")))


__all__ = ["BatchConditioning", "apply_mask_strategy", "derived_seed", "encode_reference", "encode_video", "loop_seed",
           "noise_generators", "stitch"]
