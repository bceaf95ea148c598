"""Self- and cross-attention of STDiT3, on ``scaled_dot_product_attention`` (flash-attn when usable).

The reference uses xformers' block-diagonal mask for cross-attention: every sample's video tokens
attend only to that sample's valid caption tokens. Here each sample is attended separately on
its own slice of caption tokens (one batched call when all samples have the same length), which
is the same maths without xformers and without materialising a mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TextContext:
    """Caption tokens of a batch, packed: ``tokens`` [sum(lengths), C]; sample b owns ``lengths[b]`` rows."""

    tokens: torch.Tensor
    lengths: tuple[int, ...]

    def select(self, rows: slice) -> TextContext:
        """The captions of samples ``rows`` only."""
        parts = self.tokens.split(list(self.lengths))[rows]
        return TextContext(torch.cat(parts), self.lengths[rows])


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32 (eps 1e-6), with a learnable per-channel weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with per-head RMS qk-norm, applied before the optional rotation."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, enable_flash_attn: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.enable_flash_attn = enable_flash_attn
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rotate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        batch, seq, dim = x.shape
        out = self.attend(self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim), rotate)
        return self.proj(out.reshape(batch, seq, dim))

    def attend(
        self, qkv: torch.Tensor, rotate: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Attention of projected ``qkv`` [batch, seq, 3, heads, head_dim] -> [batch, seq, heads, head_dim].

        Any number of heads: sequence parallelism (Ulysses) calls it with this rank's share of them.
        """
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        if rotate is not None:
            q, k = rotate(q), rotate(k)
        flash = _flash_attn_func() if self.enable_flash_attn and _flash_usable(q) else None
        if flash is not None:
            return flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [batch, seq, heads, head_dim]
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


class CrossAttention(nn.Module):
    """Video tokens (queries) attend to their own sample's caption tokens; no norm, no gate."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        batch, seq, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_linear(x).view(batch, seq, heads, head_dim).transpose(1, 2)
        k, v = self.kv_linear(text.tokens).view(-1, 2, heads, head_dim).unbind(1)  # [sum(L), heads, head_dim]
        lengths = text.lengths
        if len(set(lengths)) == 1:
            k = k.view(batch, lengths[0], heads, head_dim).transpose(1, 2)
            v = v.view(batch, lengths[0], heads, head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q[b : b + 1], kb.transpose(0, 1)[None], vb.transpose(0, 1)[None])
                    for b, (kb, vb) in enumerate(zip(k.split(lengths), v.split(lengths)))
                ]
            )
        return self.proj(out.transpose(1, 2).reshape(batch, seq, dim))


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def _flash_usable(q: torch.Tensor) -> bool:
    """flash-attn 2 runs on CUDA in fp16/bf16 on Ampere (sm80) or newer."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    return torch.cuda.get_device_capability(q.device)[0] >= 8
