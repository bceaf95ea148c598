"""STDiT3: Open-Sora v1.2's spatial-temporal diffusion transformer, weight-compatible with the
official checkpoint (same parameter names and shapes, ``load_state_dict(strict=True)``).

Dataflow: latent video [B, C, T, H, W] -> (1, 2, 2) patches + 2D sin-cos position -> blocks
alternating spatial (attention within a frame) and temporal (attention across frames, with RoPE)
-> final layer -> unpatchify. Every block is modulated by the diffusion time plus fps; with
``x_mask`` the frames marked False (conditioning frames) use the modulation of time 0.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ModelInputError
from .attention import CrossAttention, SelfAttention, TextContext
from .embeddings import RotaryEmbedding, TimestepEmbedder, sincos_2d
from .stdit3_config import STDiT3Config

__all__ = ["STDiT3", "STDiT3Config"]


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> fc2 (timm's Mlp layout)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; zero-pads the end of each axis to a multiple of the patch."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, patch in zip(reversed(x.shape[2:]), reversed(self.patch_size)):
            pads += [0, -size % patch]
        return self.proj(F.pad(x, pads)).flatten(2).transpose(1, 2)  # [B, T*H*W, C]


class CaptionEmbedder(nn.Module):
    """Projects caption embeddings to the hidden size; holds the learned null caption ``y_embedding``."""

    def __init__(self, caption_channels: int, hidden_size: int, dropout_prob: float, max_length: int) -> None:
        super().__init__()
        self.dropout_prob = dropout_prob
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            # Caption dropout for classifier-free guidance: swap whole captions for the null caption.
            dropped = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(dropped[:, None, None, None], self.y_embedding.to(y.dtype), y)
        return self.y_proj(y)


class FrameModulation:
    """adaLN-style modulation of one block: ``table`` [6, C] plus the time embedding [B, 6, C];
    with ``x_mask``, frames marked False take the values of time 0 (``offset0``) instead."""

    def __init__(self, table, offset, offset0, x_mask, num_frames: int) -> None:
        self.values = (table[None] + offset).unbind(1)
        self.zero = None if x_mask is None else (table[None] + offset0).unbind(1)
        self.x_mask = x_mask
        self.num_frames = num_frames

    def modulate(self, h: torch.Tensor, shift: int, scale: int) -> torch.Tensor:
        out = h * (1 + self.values[scale][:, None]) + self.values[shift][:, None]
        if self.zero is None:
            return out
        return self._select(out, h * (1 + self.zero[scale][:, None]) + self.zero[shift][:, None])

    def gate(self, h: torch.Tensor, index: int) -> torch.Tensor:
        out = self.values[index][:, None] * h
        return out if self.zero is None else self._select(out, self.zero[index][:, None] * h)

    def _select(self, x: torch.Tensor, x_zero: torch.Tensor) -> torch.Tensor:
        return _select_frames(self.x_mask, x, x_zero, self.num_frames)


class STDiT3Block(nn.Module):
    """One spatial or temporal block: modulated self-attention, cross-attention, modulated MLP."""

    SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)

    def __init__(self, config: STDiT3Config, temporal: bool, drop_path: float) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.temporal = temporal
        self.drop_path = drop_path
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)
        self.attn = SelfAttention(hidden, config.num_heads, config.qk_norm, config.enable_flash_attn)
        self.cross_attn = CrossAttention(hidden, config.num_heads)
        self.mlp = Mlp(hidden, int(hidden * config.mlp_ratio), hidden)

    def forward(
        self, x, text: TextContext, t_mlp, t0_mlp, x_mask, num_frames: int, rotate=None, spatial_attention=None
    ) -> torch.Tensor:
        """``x`` [B, T*S, C], frame-major. ``spatial_attention(attn, h)``, when given, replaces the
        per-frame self-attention of a spatial block (sequence parallelism: ``x`` then holds this
        rank's share of every frame's tokens)."""
        batch, tokens, dim = x.shape
        frames, per_frame = num_frames, tokens // num_frames
        t_rows = t_mlp.view(batch, 6, dim)
        t0_rows = None if t0_mlp is None else t0_mlp.view(batch, 6, dim)
        mod = FrameModulation(self.scale_shift_table, t_rows, t0_rows, x_mask, frames)

        h = mod.modulate(_layer_norm(x), self.SHIFT_MSA, self.SCALE_MSA)
        if self.temporal:
            h = h.view(batch, frames, per_frame, dim).transpose(1, 2).reshape(batch * per_frame, frames, dim)
            h = self.attn(h, rotate)
            h = h.view(batch, per_frame, frames, dim).transpose(1, 2).reshape(batch, tokens, dim)
        elif spatial_attention is not None:
            h = spatial_attention(self.attn, h)
        else:
            h = self.attn(h.view(batch * frames, per_frame, dim)).view(batch, tokens, dim)
        x = x + self._drop_path(mod.gate(h, self.GATE_MSA))

        x = x + self.cross_attn(x, text)

        h = self.mlp(mod.modulate(_layer_norm(x), self.SHIFT_MLP, self.SCALE_MLP))
        return x + self._drop_path(mod.gate(h, self.GATE_MLP))

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0:
            return x
        keep = 1 - self.drop_path
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep


class FinalLayer(nn.Module):
    """LayerNorm, modulation by t (not t_mlp), then a linear layer to one patch of outputs per token."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)

    def forward(self, x, t, t0, x_mask, num_frames: int) -> torch.Tensor:
        table = self.scale_shift_table[None]
        shift, scale = (table + t[:, None]).unbind(1)
        out = _layer_norm(x) * (1 + scale[:, None]) + shift[:, None]
        if x_mask is not None:
            # Upstream normalises the *already modulated* tensor again for the time-0 frames; the
            # released weights were trained with that, so it is kept.
            shift0, scale0 = (table + t0[:, None]).unbind(1)
            out0 = _layer_norm(out) * (1 + scale0[:, None]) + shift0[:, None]
            out = _select_frames(x_mask, out, out0, num_frames)
        return self.linear(out)


class STDiT3(nn.Module):
    """The Open-Sora v1.2 diffusion transformer; see the module docstring for the dataflow."""

    def __init__(self, config: STDiT3Config) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.gradient_checkpointing = False
        self.rope = RotaryEmbedding(config.head_dim)
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.fps_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.y_embedder = CaptionEmbedder(
            config.caption_channels, hidden, config.class_dropout_prob, config.model_max_length
        )
        rates = [r.item() for r in torch.linspace(0, config.drop_path, config.depth, device="cpu")]
        self.spatial_blocks = nn.ModuleList(STDiT3Block(config, temporal=False, drop_path=r) for r in rates)
        self.temporal_blocks = nn.ModuleList(STDiT3Block(config, temporal=True, drop_path=r) for r in rates)
        self.final_layer = FinalLayer(hidden, math.prod(config.patch_size), config.out_channels)
        self.init_weights()
        if config.freeze_y_embedder:
            self.y_embedder.requires_grad_(False)
        if config.only_train_temporal:
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith("temporal_blocks."))

    def init_weights(self) -> None:
        """Training initialisation: xavier linears, zero biases, and zero output projections of the
        temporal blocks and of the fps embedder so a fresh model starts as the spatial-only model."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.x_embedder.proj.weight.view(self.config.hidden_size, -1))
        y_proj = self.y_embedder.y_proj
        for linear in (*self.t_embedder.mlp[::2], self.t_block[1], y_proj.fc1, y_proj.fc2):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.temporal_blocks:
            for linear in (block.attn.proj, block.cross_attn.proj, block.mlp.fc2):
                nn.init.zeros_(linear.weight)
        nn.init.zeros_(self.fps_embedder.mlp[2].weight)

    def null_caption(self, batch_size: int) -> torch.Tensor:
        """The learned unconditional caption [batch_size, 1, model_max_length, caption_channels] for CFG."""
        return self.y_embedder.y_embedding[None, None].repeat(batch_size, 1, 1, 1)

    def cfg_model_fn(self, y: torch.Tensor, mask: torch.Tensor | None, *, fps, height, width,
                     sequence_parallel=None):
        """The ``model_fn`` ``rectified_flow.sample`` expects: the doubled batch [z; z] is paired with
        captions [y; learned null caption]; ``mask`` (the prompts' mask) is reused for the null half."""
        captions = torch.cat([y, self.null_caption(y.shape[0]).to(y)])

        def model_fn(z: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None) -> torch.Tensor:
            return self(z, t, captions, mask=mask, x_mask=x_mask, fps=fps, height=height, width=width,
                        sequence_parallel=sequence_parallel)

        return model_fn

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        fps: torch.Tensor | float | None = None,
        height: torch.Tensor | float | None = None,
        width: torch.Tensor | float | None = None,
        ar: Any = None,
        num_frames: Any = None,
        sequence_parallel: Any = None,
        batch_rows: slice | None = None,
    ) -> torch.Tensor:
        """Predict [B, out_channels, T, H, W] (fp32) for latents ``x`` [B, in_channels, T, H, W].

        timestep: [B] in [0, 1000] (1000 = pure noise). y: captions [B, 1, L, caption_channels].
        mask: [B', L] text mask (nonzero = valid token); B' may divide B, e.g. the prompt mask for
        a [cond; null] CFG batch. x_mask: [B, T] bool, False marks conditioning frames (time-0
        modulation). fps, height, width: per sample (tensors with B' rows, or numbers); height and
        width are *pixel* sizes and only sample 0's set the position-embedding scale, as upstream.
        ``ar`` and ``num_frames`` are accepted for call-site compatibility and ignored.

        ``sequence_parallel`` (an ``opensora_core.parallel.sequence.SequenceParallel``) shards the
        tokens of every frame over its ranks after the position embedding and gathers the final
        layer's output; every rank passes the same inputs and gets the whole prediction.
        ``batch_rows`` runs the blocks on those samples only and returns their prediction; the embeddings
        are still computed for the whole batch, so a sample's result does not depend on it (CFG
        parallelism: each rank of a pair takes one half of the [cond; null] batch and gets exactly
        the one-process prediction of that half, bit for bit, as batched small matmuls and the
        patch convolution round differently for other batch sizes).
        """
        if fps is None or height is None or width is None:
            raise ModelInputError("STDiT3.forward needs fps, height and width (pixel sizes) for conditioning")
        cfg = self.config
        dtype = self.x_embedder.proj.weight.dtype
        batch = x.shape[0]
        self._check_inputs(x, timestep, x_mask)
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)

        frames, rows, cols = (math.ceil(n / p) for n, p in zip(x.shape[2:], cfg.patch_size))
        per_frame = rows * cols
        scale = math.sqrt(_first(height) * _first(width)) / cfg.input_sq_size
        pos = sincos_2d(cfg.hidden_size, rows, cols, scale, round(per_frame**0.5), x.device, dtype)

        fps_emb = self.fps_embedder(_per_sample("fps", fps, batch, x.device))
        t = self.t_embedder(timestep) + fps_emb
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
            t0_mlp = self.t_block(t0)
        text = self.encode_text(y, mask, batch)

        h = self.x_embedder(x).view(batch, frames, per_frame, -1) + pos
        if batch_rows is not None:
            h, t, t_mlp, text = h[batch_rows], t[batch_rows], t_mlp[batch_rows], text.select(batch_rows)
            if x_mask is not None:
                x_mask, t0, t0_mlp = x_mask[batch_rows], t0[batch_rows], t0_mlp[batch_rows]
            batch = h.shape[0]
        sp = sequence_parallel
        h = h.view(batch, frames * per_frame, -1) if sp is None else sp.shard(h)
        spatial_attention = None if sp is None else sp.spatial_attention
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            h = self._run_block(spatial, h, text, t_mlp, t0_mlp, x_mask, frames, None, spatial_attention)
            h = self._run_block(temporal, h, text, t_mlp, t0_mlp, x_mask, frames, self.rope.rotate)
        h = self.final_layer(h, t, t0, x_mask, frames)
        if sp is not None:
            h = sp.gather(h)
        return self._unpatchify(h, (frames, rows, cols), x.shape[2:]).float()

    def encode_text(self, y: torch.Tensor, mask, batch: int) -> TextContext:
        """Project captions and pack every sample's valid tokens (mask != 0), in order."""
        if self.config.skip_y_embedder:
            # y is already projected and packed [1, sum(L), hidden]; mask holds the lengths.
            if mask is None:
                raise ModelInputError("with skip_y_embedder, mask must hold each sample's caption length")
            lengths = tuple(int(n) for n in (mask.tolist() if torch.is_tensor(mask) else mask))
            return _text_context(y.reshape(-1, self.config.hidden_size), lengths, batch)
        if y.ndim != 4 or y.shape[0] != batch or y.shape[1] != 1 or y.shape[3] != self.config.caption_channels:
            raise ModelInputError(
                f"y must be [B={batch}, 1, L, {self.config.caption_channels}] caption embeddings, got {list(y.shape)}"
            )
        if self.training and y.shape[2] != self.config.model_max_length:
            raise ModelInputError(f"training needs captions of {self.config.model_max_length} tokens, got {y.shape[2]}")
        tokens = self.y_embedder(y).squeeze(1)  # [B, L, hidden]
        if mask is None:
            return _text_context(tokens.reshape(-1, tokens.shape[-1]), (tokens.shape[1],) * batch, batch)
        if mask.ndim != 2 or mask.shape[1] != y.shape[2] or batch % mask.shape[0]:
            raise ModelInputError(
                f"mask must be [B', L={y.shape[2]}] with B' dividing B={batch}, got {list(mask.shape)}"
            )
        keep = (mask != 0).repeat(batch // mask.shape[0], 1).to(tokens.device)
        return _text_context(tokens[keep], tuple(keep.sum(1).tolist()), batch)

    def _run_block(self, block, h, text, t_mlp, t0_mlp, x_mask, frames, rotate, spatial_attention=None):
        if self.gradient_checkpointing and self.training:
            return checkpoint(block, h, text, t_mlp, t0_mlp, x_mask, frames, rotate, spatial_attention,
                              use_reentrant=False)
        return block(h, text, t_mlp, t0_mlp, x_mask, frames, rotate, spatial_attention)

    def _unpatchify(self, h: torch.Tensor, grid, size) -> torch.Tensor:
        batch = h.shape[0]
        pt, ph, pw = self.config.patch_size
        frames, rows, cols = grid
        out = h.view(batch, frames, rows, cols, pt, ph, pw, self.config.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, -1, frames * pt, rows * ph, cols * pw)
        return out[:, :, : size[0], : size[1], : size[2]]

    def _check_inputs(self, x, timestep, x_mask) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ModelInputError(f"x must be [B, {cfg.in_channels}, T, H, W] latents, got {list(x.shape)}")
        if timestep.shape != (x.shape[0],):
            raise ModelInputError(f"timestep must be [B={x.shape[0]}], got {list(timestep.shape)}")
        frames = math.ceil(x.shape[2] / cfg.patch_size[0])
        if x_mask is not None and (x_mask.dtype != torch.bool or x_mask.shape != (x.shape[0], frames)):
            raise ModelInputError(
                f"x_mask must be a bool tensor [B={x.shape[0]}, T={frames}], got {x_mask.dtype} {list(x_mask.shape)}"
            )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: STDiT3Config | None = None,
        *,
        use_ema: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> STDiT3:
        """Load weights strictly from an HF folder (config.json + model.safetensors), a single
        ``.safetensors``/``.pt``/``.pth``/``.bin`` file, a folder of shards with an index json, or an
        Open-Sora training checkpoint folder (its ``model/`` shards, or ``ema.*`` with ``use_ema``).

        The config is ``config`` when given, else the folder's config.json, else XL/2; keyword
        ``overrides`` replace config fields (e.g. ``enable_flash_attn=True``).
        """
        from ..checkpoint import load_pretrained, read_config_json

        if config is None:
            config_json = read_config_json(path)
            config = STDiT3Config() if config_json is None else STDiT3Config.from_dict(config_json)
        if overrides:
            config = STDiT3Config.from_dict(dataclasses.asdict(config), **overrides)
        what = f"STDiT3(hidden_size={config.hidden_size}, depth={config.depth}, num_heads={config.num_heads})"
        return load_pretrained(lambda: cls(config), path, what=what, use_ema=use_ema, dtype=dtype, device=device)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the HF layout: config.json + model.safetensors (fp32 tensors as in the release)."""
        from ..checkpoint import save_hf_folder

        save_hf_folder(folder, self.config.to_dict(), self.state_dict())


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _select_frames(x_mask: torch.Tensor, x: torch.Tensor, x_zero: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per frame (tokens are ordered frame-major): ``x`` where x_mask is True, else ``x_zero``."""
    batch, tokens, dim = x.shape
    shape = (batch, num_frames, tokens // num_frames, dim)
    keep = x_mask.view(batch, num_frames, 1, 1)
    return torch.where(keep, x.view(shape), x_zero.view(shape)).view(batch, tokens, dim)


def _first(value) -> float:
    return float(value[0].item() if torch.is_tensor(value) else value)


def _per_sample(name: str, value, batch: int, device) -> torch.Tensor:
    """[batch] values from a number or a tensor whose row count divides the batch (it is tiled)."""
    if not torch.is_tensor(value):
        return torch.full((batch,), float(value), device=device)
    value = value.reshape(-1).to(device)
    if batch % value.shape[0]:
        raise ModelInputError(f"{name} has {value.shape[0]} rows, which does not divide the batch of {batch}")
    return value.repeat(batch // value.shape[0])


def _text_context(tokens: torch.Tensor, lengths: tuple[int, ...], batch: int) -> TextContext:
    if len(lengths) != batch or min(lengths) < 1 or sum(lengths) != tokens.shape[0]:
        raise ModelInputError(f"every sample needs at least one caption token; got lengths {list(lengths)}")
    return TextContext(tokens, lengths)
