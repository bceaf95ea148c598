"""Work a replica group shares instead of repeating it on every rank (upstream repeats both).

- Text: only the group's first rank loads T5 and encodes the prompts; the embeddings are
  broadcast to the others, which never load the encoder (no 19 GB fp32 T5 read from disk and
  held in host memory per rank; the per-GPU peak is the leader's, as before).
- VAE decode: the temporal chunks (5 latent -> 17 pixel frames, decoded independently) are dealt
  round-robin to the ranks and broadcast (4-channel latent-resolution frames: small), then the
  spatial micro-batches (the heavy part, ``micro_batch_size`` frames per call) are dealt
  round-robin, converted to uint8 where they were decoded, and gathered on the first rank, which
  writes the files. The micro-batches are exactly those of the one-process decode, so the
  pixels are the same; time drops by up to min(group size, micro-batches), and no rank holds the
  decoded video in floating point.
"""

from __future__ import annotations

import torch

from opensora_core.parallel.groups import Comm


def share_embeddings(comm: Comm, stacked: tuple[torch.Tensor, torch.Tensor] | None, *, count: int, length: int,
                     width: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings y [count, 1, length, width] and masks [count, length] (int64) of the
    leader (group rank 0, which passes ``stacked``) on every rank of ``comm``."""
    if comm.rank == 0:
        y, mask = (t.to(device).contiguous() for t in stacked)
    else:
        y = torch.empty((count, 1, length, width), dtype=dtype, device=device)
        mask = torch.empty((count, length), dtype=torch.int64, device=device)
    comm.broadcast(y, 0, "text")
    comm.broadcast(mask, 0, "text")
    return y, mask


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] in about [-1, 1] -> [n, H, W, 3] uint8, element for element as ``video_io.to_uint8``."""
    scaled = (pixels.float().clamp(-1, 1) + 1) / 2 * 255 + 0.5
    return scaled.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_shared(vae, z: torch.Tensor, num_frames: int, comm: Comm) -> torch.Tensor | None:
    """Decode latents ``z`` [B, 4, T, h, w] with every rank of ``comm``; the uint8 frames
    [B, num_frames, H, W, 3] (on the CPU) on group rank 0, None on the others."""
    size, rank = comm.size, comm.rank
    batch = z.shape[0]
    plan = vae.temporal_chunks(num_frames)
    mine = list(range(rank, len(plan), size))
    decoded = dict(zip(mine, vae.decode_temporal(z, num_frames, mine)))
    pieces = []
    for index, (_, _, pixels) in enumerate(plan):
        owner = index % size
        if owner == rank:
            piece = decoded[index].contiguous()
        else:
            piece = torch.empty((batch, z.shape[1], pixels, *z.shape[3:]), dtype=z.dtype, device=z.device)
        pieces.append(comm.broadcast(piece, owner, "decode"))
    spatial = vae.spatial_vae
    flat = spatial.flatten_frames(torch.cat(pieces, dim=2))  # [B*F, 4, h, w], as the one-process decode
    batches = spatial.micro_batches(flat.shape[0])
    owned = batches[rank::size]
    frames = [to_uint8_frames(spatial.decode_frames(flat[rows])) for rows in owned]
    height, width = frames[0].shape[1:3] if frames else _decoded_size(spatial, flat)
    longest = max(b.stop - b.start for b in batches) * len(batches[0::size])  # rank 0 owns the most
    mine_flat = torch.zeros((longest, height, width, 3), dtype=torch.uint8, device=z.device)
    if frames:
        stacked = torch.cat(frames)
        mine_flat[: stacked.shape[0]] = stacked
    gathered = comm.gather(mine_flat, "decode")
    if gathered is None:
        return None
    out = torch.empty((flat.shape[0], height, width, 3), dtype=torch.uint8)
    for owner in range(size):
        offset = 0
        for rows in batches[owner::size]:
            count = rows.stop - rows.start
            out[rows] = gathered[owner, offset : offset + count].cpu()
            offset += count
    return out.view(batch, num_frames, height, width, 3)


def _decoded_size(spatial, flat: torch.Tensor) -> tuple[int, int]:
    """Output height and width for a rank that decodes no micro-batch (more ranks than micro-batches)."""
    return flat.shape[2] * spatial.downsample, flat.shape[3] * spatial.downsample
