"""The temporal VAE of Open-Sora v1.2 (``VAE_Temporal_SD``): a MAGVIT-v2-style causal 3D-conv VAE
that compresses the 4-channel per-frame SD latents 4x in time (space untouched).

Causality: every conv pads time only at the front, so frame k of the output depends on input
frames <= k. A clip whose length is not a multiple of 4 gets zero frames prepended before
encoding, and the decoder's output drops the same number of leading frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelInputError


@dataclass(frozen=True)
class TemporalVAEConfig:
    """Defaults are the released ``VAE_Temporal_SD`` (about 300M parameters)."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    """Channels of stage 0; stage i has filters * channel_multipliers[i]."""
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Whether the conv after stage i halves time (one entry per stage but the last)."""
    num_groups: int = 32
    """GroupNorm groups; must divide every stage width."""
    activation_fn: str = "swish"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
        object.__setattr__(self, "temporal_downsample", tuple(self.temporal_downsample))
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ConfigError(
                f"TemporalVAEConfig.temporal_downsample={self.temporal_downsample}: needs one entry per stage "
                f"but the last ({len(self.channel_multipliers) - 1})"
            )
        for width in {self.filters * m for m in self.channel_multipliers}:
            if width % self.num_groups:
                raise ConfigError(
                    f"TemporalVAEConfig.num_groups={self.num_groups}: must divide every stage width, not {width}"
                )
        if self.activation_fn not in _ACTIVATIONS:
            raise ConfigError(
                f"TemporalVAEConfig.activation_fn={self.activation_fn!r}: must be one of {sorted(_ACTIVATIONS)}"
            )

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)


_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU}


class CausalConv3d(nn.Module):
    """Conv3d with 'same' zero padding in space and causal (front-only) zero padding in time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, time_stride: int = 1, bias=True):
        super().__init__()
        space_pad = kernel_size // 2
        time_pad = kernel_size - 1 + (1 - time_stride)
        self.padding = (space_pad, space_pad, space_pad, space_pad, time_pad, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(time_stride, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    """GroupNorm-act-conv twice, plus a 1x1x1 shortcut conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, config: TemporalVAEConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(config.num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, bias=False)
        self.norm2 = nn.GroupNorm(config.num_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, bias=False)
        if in_channels != out_channels:
            self.conv3 = CausalConv3d(in_channels, out_channels, kernel_size=1, bias=False)
        self.act = _ACTIVATIONS[config.activation_fn]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return h + (self.conv3(x) if hasattr(self, "conv3") else x)


class Encoder(nn.Module):
    """conv_in -> stages of ResBlocks (time-stride-2 convs between some) -> ResBlocks -> 2*latent channels."""

    def __init__(self, config: TemporalVAEConfig) -> None:
        super().__init__()
        widths = [config.filters * m for m in config.channel_multipliers]
        self.conv_in = CausalConv3d(config.in_out_channels, config.filters, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = config.filters
        for i, width in enumerate(widths):
            self.block_res_blocks.append(_res_stack(prev, width, config))
            prev = width
            if i < len(widths) - 1:
                downsample = config.temporal_downsample[i]
                self.conv_blocks.append(CausalConv3d(width, width, time_stride=2) if downsample else nn.Identity())
        self.res_blocks = _res_stack(prev, prev, config)
        self.norm1 = nn.GroupNorm(config.num_groups, prev)
        self.act = _ACTIVATIONS[config.activation_fn]()
        self.conv2 = CausalConv3d(prev, 2 * config.latent_embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, stage in enumerate(self.block_res_blocks):
            x = stage(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        x = self.res_blocks(x)
        return self.conv2(self.act(self.norm1(x)))


class Decoder(nn.Module):
    """Mirror of the encoder; time is upsampled by a conv to 2x channels then depth-to-time."""

    def __init__(self, config: TemporalVAEConfig) -> None:
        super().__init__()
        widths = [config.filters * m for m in config.channel_multipliers]
        self.temporal_upsample = config.temporal_downsample
        self.conv1 = CausalConv3d(config.latent_embed_dim, widths[-1])
        self.res_blocks = _res_stack(widths[-1], widths[-1], config)
        stages, convs = [], []
        prev = widths[-1]
        for i in reversed(range(len(widths))):
            stages.insert(0, _res_stack(prev, widths[i], config))
            prev = widths[i]
            if i > 0:
                upsample = config.temporal_downsample[i - 1]
                convs.insert(0, CausalConv3d(prev, prev * 2) if upsample else nn.Identity())
        self.block_res_blocks = nn.ModuleList(stages)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(config.num_groups, prev)
        self.act = _ACTIVATIONS[config.activation_fn]()
        self.conv_out = CausalConv3d(prev, config.in_out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.res_blocks(self.conv1(z))
        for i in reversed(range(len(self.block_res_blocks))):
            x = self.block_res_blocks[i](x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                if self.temporal_upsample[i - 1]:
                    # Channel c*2 + k becomes time step 2t + k ("B (C ts) T H W -> B C (T ts) H W").
                    b, c, t, h, w = x.shape
                    x = x.view(b, c // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c // 2, t * 2, h, w)
        return self.conv_out(self.act(self.norm1(x)))


@dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior; ``logvar`` is already clamped to [-30, 20]."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise


class TemporalVAE(nn.Module):
    """Encoder/decoder pair; parameter names match ``temporal_vae.*`` of the released VAE."""

    def __init__(self, config: TemporalVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TemporalVAEConfig()
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.latent_embed_dim, 2 * config.embed_dim, kernel_size=1)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.latent_embed_dim, kernel_size=1)
        self.decoder = Decoder(config)

    def latent_frames(self, num_frames: int) -> int:
        """ceil(num_frames / 4): frames are front-padded to a multiple of the time factor."""
        return -(-num_frames // self.config.time_factor)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """[B, C, T, H, W] -> posterior over [B, embed_dim, ceil(T/4), H, W]."""
        _check_video(x, self.config.in_out_channels, "x")
        x = F.pad(x, (0, 0, 0, 0, -x.shape[2] % self.config.time_factor, 0))
        moments = self.quant_conv(self.encoder(x)).to(x.dtype)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B, embed_dim, T_z, H, W] -> [B, C, num_frames, H, W] (leading padding frames dropped)."""
        _check_video(z, self.config.embed_dim, "z")
        if self.latent_frames(num_frames) != z.shape[2]:
            raise ModelInputError(
                f"num_frames={num_frames} needs {self.latent_frames(num_frames)} latent frames, got {z.shape[2]}"
            )
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, -num_frames % self.config.time_factor :]


def _res_stack(in_channels: int, out_channels: int, config: TemporalVAEConfig) -> nn.Sequential:
    blocks = [ResBlock(in_channels, out_channels, config)]
    blocks += [ResBlock(out_channels, out_channels, config) for _ in range(config.num_res_blocks - 1)]
    return nn.Sequential(*blocks)


def _check_video(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ModelInputError(f"{name} must be [B, {channels}, T, H, W], got {list(x.shape)}")
