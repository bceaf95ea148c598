"""Bytes one rank sends per denoising step, by scheme: the formula the planner charges and the
benchmark checks against the bytes the communicator counts (torch-free).

Per spatial block, with b samples per forward on a rank (2 for the CFG pair, 1 when it is
split), T latent frames, S spatial tokens per frame padded to S' (a multiple of p), hidden size
C and p ranks; an all-to-all keeps 1/p of its buffer local and sends the rest:

- upstream (reference only, v1.2's ``SeqParallelAttention`` + ``SeqParallelMultiHeadCrossAttention``):
  6 hidden-sized all-to-alls (q, k, v, attention output, cross-attention q and output);
- ulysses (ours): 4 (q, k and v in one call, then the attention output); cross-attention is
  token-wise and runs on the local shard without any communication;
- dsp (ours): 2 (switch the block input from token- to frame-sharding and the output back), on
  frames padded to T' (a multiple of p); clips with fewer latent frames than ranks use ulysses.

Plus, every step, the final layer's output (patch values, much narrower than C) is all-gathered
over the SP group, and with CFG parallelism the two halves exchange their velocity.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hidden-sized tensors moved by all-to-all per spatial block, and the all-to-all calls that move them.
ALLTOALLS_PER_SPATIAL_BLOCK = {"upstream": 6, "ulysses": 4, "dsp": 2}
ALLTOALL_CALLS_PER_SPATIAL_BLOCK = {"upstream": 4, "ulysses": 2, "dsp": 2}


def padded(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def effective_scheme(scheme: str, sp: int, frames: int) -> str:
    """The scheme a forward really uses: DSP shards frames, so with fewer frames than ranks
    (images, very short clips) spatial attention goes head-sharded (ulysses) instead."""
    if scheme == "dsp" and frames < sp:
        return "ulysses"
    return scheme


@dataclass(frozen=True)
class StepVolume:
    """Bytes one rank sends in one denoising step, by kind."""

    attention: float
    """All-to-alls around spatial self-attention (all spatial blocks)."""
    gather: float
    """All-gather of the final layer's output over the SP group."""
    cfg: float
    """Exchange of the predicted velocity between the two CFG ranks."""
    alltoalls: int
    """All-to-all calls per step."""

    @property
    def total(self) -> float:
        return self.attention + self.gather + self.cfg

    def to_dict(self) -> dict:
        return {"attention": self.attention, "gather": self.gather, "cfg": self.cfg, "total": self.total,
                "alltoalls": self.alltoalls}


def step_volume(
    *,
    scheme: str,
    sp: int,
    cfg: int,
    videos: int,
    frames: int,
    spatial_tokens: int,
    hidden: int,
    depth: int,
    out_dim: int,
    latent_elements: int,
    elem_bytes: int,
) -> StepVolume:
    """Bytes one rank sends per denoising step.

    videos: videos denoised together (the batch before CFG doubling); frames: latent frames T;
    spatial_tokens: S per frame (unpadded); out_dim: final-layer outputs per token
    (patch volume x out_channels); latent_elements: C x T x H x W of one video's latent;
    elem_bytes: bytes per activation element (2 for bf16, 4 for fp32). The velocity exchanged by
    CFG parallelism is fp32 (the model returns fp32).
    """
    samples = videos * 2 // cfg  # per forward on one rank
    cfg_bytes = (cfg - 1) * videos * latent_elements * 4.0
    if sp == 1:
        return StepVolume(0.0, 0.0, cfg_bytes, 0)
    scheme = effective_scheme(scheme, sp, frames)
    calls = ALLTOALLS_PER_SPATIAL_BLOCK[scheme]
    shard_tokens = padded(spatial_tokens, sp) // sp  # tokens per frame on one rank
    sent_fraction = (sp - 1) / sp
    if scheme == "dsp":
        per_call = samples * padded(frames, sp) * shard_tokens * hidden
    else:  # ulysses and the upstream reference move hidden-sized tensors of the unpadded frame count
        per_call = samples * frames * shard_tokens * hidden
    attention = depth * calls * per_call * sent_fraction * elem_bytes
    gather = (sp - 1) * samples * frames * shard_tokens * out_dim * elem_bytes
    return StepVolume(attention, gather, cfg_bytes, depth * ALLTOALL_CALLS_PER_SPATIAL_BLOCK[scheme])


def upstream_bytes_per_video(*, sp: int, samples: int, tokens: int, hidden: int, depth: int, steps: int,
                             elem_bytes: int = 2) -> float:
    """performance_facts §3.5: steps x depth x 6 x (samples x N x C x bytes / p) x (p-1)/p, N = T x S'."""
    return steps * depth * 6 * samples * tokens * hidden * elem_bytes / sp * (sp - 1) / sp


__all__ = ["ALLTOALLS_PER_SPATIAL_BLOCK", "ALLTOALL_CALLS_PER_SPATIAL_BLOCK", "StepVolume", "effective_scheme",
           "padded", "step_volume", "upstream_bytes_per_video"]
