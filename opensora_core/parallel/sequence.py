"""Sequence parallelism for STDiT3: the tokens of every frame sharded over the ranks of an SP group.

Between blocks every rank holds, for every frame, a contiguous slice of S'/p of its S tokens
(S' = S rounded up to a multiple of p; the S' - S padding tokens sit at the end of each frame).
Everything in a block except spatial self-attention is local to a token or to one spatial
position across frames, so it runs on the shard without communication: temporal blocks (each
position's sequence over T frames is whole on one rank), cross-attention (each video token
attends to the caption on its own), modulation, MLP and the final layer. Spatial self-attention
needs whole frames, and is done by one of two schemes:

- ``ulysses``: q, k, v of the local tokens go through one all-to-all that gathers the frame's
  tokens and scatters the heads (each rank gets H/p heads of every token), attention runs on
  whole frames, and a second all-to-all brings the output back to token sharding: 4
  hidden-sized tensors per block. Needs p to divide the heads.
- ``dsp`` (Dynamic Sequence Parallelism, arXiv 2403.10266): the block input switches from token
  sharding to frame sharding (each rank gets T'/p whole frames, T' = T padded to a multiple of
  p), the unmodified attention module runs on them with all heads, and the output switches
  back: 2 hidden-sized tensors per block. With fewer frames than ranks (images) it uses ulysses.

Padding is masked, unlike upstream: position embeddings are those of the real grid, padded keys
are excluded from every softmax (the padded tokens are cut off before attention: they sit at the
end of each frame, so excluding them is a slice), padded frames are never attended to, and the
padding is dropped when the output is gathered. The prediction is therefore the single-process
one (tests/integration/test_parallel_exactness.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opensora_core.parallel.groups import Comm
from opensora_core.parallel.layout import SP_SCHEMES
from opensora_core.parallel.volume import effective_scheme, padded


class SequenceParallel:
    """Shards STDiT3's tokens over ``comm`` (one SP group); passed to ``STDiT3.forward``."""

    def __init__(self, comm: Comm, scheme: str) -> None:
        if scheme not in SP_SCHEMES:
            raise ValueError(f"scheme {scheme!r}: one of {SP_SCHEMES}")
        self.comm = comm
        self.scheme = scheme
        self.frames = self.tokens = 0  # of the forward in progress (set by ``shard``)

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def shard_tokens(self) -> int:
        """Tokens of one frame on one rank."""
        return padded(self.tokens, self.size) // self.size

    def scheme_for(self, frames: int) -> str:
        """The scheme used for clips of ``frames`` latent frames (DSP needs at least one frame per rank)."""
        return effective_scheme(self.scheme, self.size, frames)

    def shard(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T, S, C] (position embedding added) -> this rank's [B, T * S'/p, C]."""
        batch, frames, tokens, dim = h.shape
        self.frames, self.tokens = frames, tokens
        pad = padded(tokens, self.size) - tokens
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
        start = self.comm.rank * self.shard_tokens
        return h[:, :, start : start + self.shard_tokens].reshape(batch, frames * self.shard_tokens, dim)

    def gather(self, h: torch.Tensor) -> torch.Tensor:
        """This rank's final-layer output [B, T * S'/p, D] -> the whole [B, T * S, D], padding dropped."""
        batch, _, dim = h.shape
        parts = self.comm.all_gather(h.view(batch, self.frames, self.shard_tokens, dim), "gather")
        whole = parts.permute(1, 2, 0, 3, 4).reshape(batch, self.frames, -1, dim)[:, :, : self.tokens]
        return whole.reshape(batch, self.frames * self.tokens, dim)

    def spatial_attention(self, attn, h: torch.Tensor) -> torch.Tensor:
        """Self-attention within every frame of the token-sharded ``h`` [B, T * S'/p, C]."""
        if self.scheme_for(self.frames) == "dsp":
            return self._dsp(attn, h)
        return self._ulysses(attn, h)

    def _ulysses(self, attn, h: torch.Tensor) -> torch.Tensor:
        p, frames, tokens, local = self.size, self.frames, self.tokens, self.shard_tokens
        batch, _, dim = h.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        if heads % p:
            raise ValueError(f"ulysses needs the {heads} heads to divide over {p} ranks")
        sequences = batch * frames
        # [p (destination: head group), B*T, S'/p, 3, H/p, D]
        qkv = attn.qkv(h).view(sequences, local, 3, p, heads // p, head_dim).permute(3, 0, 1, 2, 4, 5)
        qkv = self.comm.all_to_all(qkv, "attention")  # [p (source: token slice), B*T, S'/p, 3, H/p, D]
        qkv = qkv.transpose(0, 1).reshape(sequences, p * local, 3, heads // p, head_dim)[:, :tokens]
        out = attn.attend(qkv)  # [B*T, S, H/p, D]
        out = F.pad(out, (0, 0, 0, 0, 0, p * local - tokens))
        out = out.view(sequences, p, local, heads // p, head_dim).transpose(0, 1)
        out = self.comm.all_to_all(out, "attention")  # [p (source: head group), B*T, S'/p, H/p, D]
        out = out.permute(1, 2, 0, 3, 4).reshape(batch, frames * local, dim)
        return attn.proj(out)

    def _dsp(self, attn, h: torch.Tensor) -> torch.Tensor:
        p, frames, tokens, local = self.size, self.frames, self.tokens, self.shard_tokens
        batch, _, dim = h.shape
        frames_per_rank = padded(frames, p) // p
        x = h.view(batch, frames, local, dim)
        if frames_per_rank * p > frames:
            x = F.pad(x, (0, 0, 0, 0, 0, frames_per_rank * p - frames))
        # token sharding -> frame sharding: [p (destination: frame slice), B, T'/p, S'/p, C]
        x = self.comm.all_to_all(x.view(batch, p, frames_per_rank, local, dim).transpose(0, 1), "attention")
        x = x.permute(1, 2, 0, 3, 4).reshape(batch, frames_per_rank, p * local, dim)  # whole (padded) frames
        real = max(0, min(frames_per_rank, frames - self.comm.rank * frames_per_rank))
        out = x.new_zeros(batch, frames_per_rank, p * local, dim)
        if real:
            frames_in = x[:, :real, :tokens].reshape(batch * real, tokens, dim)
            out[:, :real, :tokens] = attn(frames_in).view(batch, real, tokens, dim)
        # frame sharding -> token sharding: [p (destination: token slice), B, T'/p, S'/p, C]
        out = self.comm.all_to_all(out.view(batch, frames_per_rank, p, local, dim).permute(2, 0, 1, 3, 4), "attention")
        out = out.transpose(0, 1).reshape(batch, p * frames_per_rank, local, dim)[:, :frames]
        return out.reshape(batch, frames * local, dim)
