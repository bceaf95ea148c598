"""Position, time and size embeddings used by STDiT3 (parameter names match the official checkpoint)."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


def sinusoid(values: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[N] -> [N, dim] embedding laid out [cos | sin], frequencies exp(-ln(max_period) * i / (dim/2)); fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values[:, None].float() * freqs.to(values.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Scalar (diffusion time or fps) -> hidden vector: sinusoid(256) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        return self.mlp(sinusoid(values, self.frequency_dim).to(weight.dtype))


@functools.lru_cache(maxsize=64)
def sincos_2d(
    dim: int, h: int, w: int, scale: float, base_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """[1, h*w, dim] fixed 2D position embedding of STDiT3 (token index = row * w + col).

    The first half of the channels encodes the *column*, the second half the row, each as
    [sin | cos] with inverse frequencies 1/10000^(2i/(dim/2)); coordinates are
    index / scale * base_size / extent. Computed in fp32, then cast to ``dtype``.
    """
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device).float() / half))
    # Same operation order as the reference so fp32 results agree bit for bit.
    rows = torch.arange(h, device=device) / scale * (base_size / h)
    cols = torch.arange(w, device=device) / scale * (base_size / w)
    col_of_token = cols.repeat(h)
    row_of_token = rows.repeat_interleave(w)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * inv_freq[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    return torch.cat([encode(col_of_token), encode(row_of_token)], dim=-1).unsqueeze(0).to(dtype)


class RotaryEmbedding(nn.Module):
    """Temporal RoPE over the whole head dim with interleaved pairs (2i, 2i+1).

    ``freqs`` (10000^(-2i/dim)) is a frozen parameter because the official checkpoint stores it
    as ``rope.freqs``. Angles are computed in the dtype of ``freqs``, as the reference does, so a
    bf16 model rotates with bf16 angles.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [..., seq, dim] by position along the sequence dim (-2)."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = (positions[:, None] * self.freqs[None]).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * angles.cos().to(x.dtype) + rotated_half * angles.sin().to(x.dtype)
