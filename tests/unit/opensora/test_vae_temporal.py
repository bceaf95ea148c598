"""Temporal VAE parity with the official VAE_Temporal (vae_temporal_tiny fixture) and causality."""

from __future__ import annotations

import pytest
import torch

from opensora_core.errors import ConfigError, ModelInputError
from opensora_core.models.vae_temporal import CausalConv3d, TemporalVAE, TemporalVAEConfig


def test_fixture_state_dict_loads_strictly(vae_fx, configs):
    model = TemporalVAE(TemporalVAEConfig(**configs.temporal_vae))
    model.load_state_dict(vae_fx.state_dict(), strict=True)
    assert len(model.state_dict()) == 147


@pytest.mark.parametrize("frames", [17, 9])
def test_encode_posterior(tiny_temporal_vae, vae_fx, tol, frames):
    posterior = tiny_temporal_vae.encode(vae_fx[f"input.x_{frames}"])
    tol.check(posterior.mean, vae_fx[f"output.encode_mean_{frames}"], tol.vae)
    tol.check(posterior.logvar, vae_fx[f"output.encode_logvar_{frames}"], tol.vae)


@pytest.mark.parametrize("frames", [17, 9])
def test_decode(tiny_temporal_vae, vae_fx, tol, frames):
    out = tiny_temporal_vae.decode(vae_fx[f"output.encode_mean_{frames}"], num_frames=frames)
    tol.check(out, vae_fx[f"output.decode_{frames}"], tol.vae)


def test_encoder_trunk_and_moments(tiny_temporal_vae, vae_fx, tol):
    padded = torch.cat([torch.zeros(1, 4, 3, 8, 8), vae_fx["input.x_17"]], dim=2)
    trunk = tiny_temporal_vae.encoder(padded)
    tol.check(trunk, vae_fx["debug.encoder_out_17"], tol.vae)
    tol.check(tiny_temporal_vae.quant_conv(trunk), vae_fx["debug.moments_17"], tol.vae)


def test_latent_frames_is_ceil_div_4(tiny_temporal_vae):
    assert [tiny_temporal_vae.latent_frames(n) for n in (1, 2, 4, 5, 9, 16, 17)] == [1, 1, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("time_stride", [1, 2])
def test_convs_are_causal_in_time(time_stride):
    """Output frame k sees input frames <= k*stride only (GroupNorm, which spans all frames, aside)."""
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel_size=3, time_stride=time_stride)
    x = torch.randn(1, 2, 8, 5, 5)
    changed = x.clone()
    changed[:, :, 6:] += 1.0
    a, b = conv(x), conv(changed)
    assert a.shape[2] == 8 // time_stride
    last_unaffected = 6 // time_stride - 1 if time_stride == 2 else 5
    assert torch.equal(a[:, :, : last_unaffected + 1], b[:, :, : last_unaffected + 1])
    assert not torch.allclose(a[:, :, last_unaffected + 1], b[:, :, last_unaffected + 1])


def test_short_clips_are_front_padded_to_a_multiple_of_four(tiny_temporal_vae, vae_fx):
    x = vae_fx["input.x_9"]
    padded = torch.cat([torch.zeros(1, 4, 3, 8, 8), x], dim=2)
    moments = tiny_temporal_vae.quant_conv(tiny_temporal_vae.encoder(padded))
    torch.testing.assert_close(tiny_temporal_vae.encode(x).mean, moments[:, :4])


def test_posterior_sample_uses_the_generator(tiny_temporal_vae, vae_fx):
    posterior = tiny_temporal_vae.encode(vae_fx["input.x_9"])
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, posterior.mean)


def test_decode_checks_num_frames_against_the_latent(tiny_temporal_vae, vae_fx):
    with pytest.raises(ModelInputError, match="num_frames=18 needs 5 latent frames, got 3"):
        tiny_temporal_vae.decode(vae_fx["output.encode_mean_9"], num_frames=18)
    with pytest.raises(ModelInputError, match="z must be"):
        tiny_temporal_vae.decode(torch.zeros(1, 3, 3, 8, 8), num_frames=9)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(temporal_downsample=(True,)), "needs one entry per stage"),
        (dict(filters=8, num_groups=3), "num_groups=3: must divide every stage width"),
        (dict(activation_fn="gelu"), "activation_fn='gelu'"),
    ],
)
def test_invalid_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        TemporalVAEConfig(**changes)
