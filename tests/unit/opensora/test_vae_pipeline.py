"""The video VAE pipeline against the official VideoAutoencoderPipeline (vae_pipeline_tiny fixture)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from opensora_core.errors import CheckpointMismatch, ConfigError, ModelInputError
from opensora_core.models.vae import VideoVAE, VideoVAEConfig


def test_fixture_state_dict_loads_strictly(tiny_video_vae, pipeline_fx):
    assert len(tiny_video_vae.state_dict()) == len(pipeline_fx.state_dict()) == 329
    torch.testing.assert_close(tiny_video_vae.scale.flatten(), torch.tensor([3.85, 2.32, 2.33, 3.06]))


def test_decode_40_frames(tiny_video_vae, pipeline_fx, tol):
    spatial_inputs = []
    decode = tiny_video_vae.spatial_vae.decode
    tiny_video_vae.spatial_vae.decode = lambda z: (spatial_inputs.append(z), decode(z))[1]
    out = tiny_video_vae.decode(pipeline_fx["input.z"], num_frames=40)
    tol.check(out, pipeline_fx["output.decode_40"], tol.vae)
    # The temporal stage: chunks of 5 latent frames decoded to 17, 17 and 6 frames.
    tol.check(spatial_inputs[0], pipeline_fx["debug.temporal_decoded"], tol.vae)


def test_denormalisation(tiny_video_vae, pipeline_fx, tol):
    z = pipeline_fx["input.z"]
    tol.check(z * tiny_video_vae.scale + tiny_video_vae.shift, pipeline_fx["debug.z_unnormalized"], tol.vae)


@pytest.mark.parametrize("micro_batch_size", [1, 3, None])
def test_decode_micro_batch_size_is_settable_and_does_not_change_results(
    tiny_video_vae, pipeline_fx, tol, micro_batch_size
):
    calls = []
    module_decode = tiny_video_vae.spatial_vae.module.decode
    tiny_video_vae.spatial_vae.module.decode = lambda z: (calls.append(len(z)), module_decode(z))[1]
    tiny_video_vae.micro_batch_size = micro_batch_size
    out = tiny_video_vae.decode(pipeline_fx["input.z"], num_frames=40)
    tol.check(out, pipeline_fx["output.decode_40"], tol.vae)
    step = micro_batch_size or 40
    assert calls == [min(step, 40 - start) for start in range(0, 40, step)]


def test_micro_batch_size_rejects_bad_values(tiny_video_vae):
    with pytest.raises(ConfigError, match="micro_batch_size=0"):
        tiny_video_vae.micro_batch_size = 0


def test_latent_size_table(tiny_video_vae, pipeline_fx):
    for n, t, h, w in pipeline_fx["latent_size.n_T_H_W_at_720x1280"].tolist():
        assert tiny_video_vae.get_latent_size(n, 720, 1280) == (t, h, w), n


def test_encode_chunks_17_frames_and_normalises(tiny_video_vae):
    torch.manual_seed(0)
    video = torch.rand(1, 3, 40, 32, 32) * 2 - 1
    z = tiny_video_vae.encode(video, sample_posterior=False)
    assert z.shape == (1, 4, *tiny_video_vae.get_latent_size(40, 32, 32)) == (1, 4, 12, 4, 4)

    # The same thing by hand: per-frame SD latents (posterior mode x 0.18215), then temporal
    # chunks of 17, 17 and 6 frames encoded independently, then (z - shift) / scale.
    frames = video[0].transpose(0, 1)  # [T, 3, H, W]
    sd = tiny_video_vae.spatial_vae.module.encode(frames).latent_dist.mode() * 0.18215
    sd = sd.transpose(0, 1)[None]  # [1, 4, T, h, w]
    temporal = tiny_video_vae.temporal_vae
    expected = torch.cat([temporal.encode(sd[:, :, s : s + 17]).mean for s in (0, 17, 34)], dim=2)
    expected = (expected - tiny_video_vae.shift) / tiny_video_vae.scale
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)

    assert tiny_video_vae.decode(z, num_frames=40).shape == video.shape


def test_encode_samples_by_default_and_follows_the_generator(tiny_video_vae):
    video = torch.zeros(1, 3, 5, 32, 32)
    a = tiny_video_vae.encode(video, generator=torch.Generator().manual_seed(1))
    b = tiny_video_vae.encode(video, generator=torch.Generator().manual_seed(1))
    mean = tiny_video_vae.encode(video, sample_posterior=False)
    assert torch.equal(a, b) and not torch.allclose(a, mean)


def test_decode_checks_num_frames(tiny_video_vae, pipeline_fx):
    with pytest.raises(ModelInputError, match="num_frames=51 needs a latent of 15 frames"):
        tiny_video_vae.decode(pipeline_fx["input.z"], num_frames=51)


def write_official_folder(folder, state, spatial_config, temporal_config, **changes):
    """What upstream's save_pretrained writes, with vae_2d pointing at a local diffusers folder."""
    spatial_dir = folder / "sd-vae"
    (spatial_dir / "vae").mkdir(parents=True)
    (spatial_dir / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **spatial_config}))
    config = {
        "architectures": ["VideoAutoencoderPipeline"],
        "cal_loss": False,
        "freeze_vae_2d": False,
        "from_pretrained": None,
        "micro_frame_size": 17,
        "model_type": "VideoAutoencoderPipeline",
        "scale": [3.85, 2.32, 2.33, 3.06],
        "shift": [-0.1, 0.34, 0.27, 0.98],
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
        "vae_2d": {
            "type": "VideoAutoencoderKL",
            "from_pretrained": str(spatial_dir),
            "subfolder": "vae",
            "micro_batch_size": 4,
            "local_files_only": True,
        },
        "vae_temporal": {"type": "VAE_Temporal", "from_pretrained": None, **temporal_config},
        **changes,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))


def test_from_pretrained_official_folder(tmp_path, pipeline_fx, configs, tol):
    write_official_folder(tmp_path, pipeline_fx.state_dict(), configs.spatial_vae, configs.temporal_vae)
    vae = VideoVAE.from_pretrained(tmp_path, micro_batch_size=2)
    assert vae.micro_batch_size == 2 and not vae.training
    tol.check(vae.decode(pipeline_fx["input.z"], num_frames=40), pipeline_fx["output.decode_40"], tol.vae)


def test_from_pretrained_rejects_wrong_shapes(tmp_path, pipeline_fx, tiny_video_vae_config):
    save_file(pipeline_fx.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match="first mismatching key"):
        VideoVAE.from_pretrained(tmp_path / "model.safetensors")  # the release config: full size
    loaded = VideoVAE.from_pretrained(tmp_path / "model.safetensors", tiny_video_vae_config)
    assert loaded.config == tiny_video_vae_config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(cal_loss=True), "cal_loss=true"),
        (dict(vae_2d={"type": "VideoAutoencoderKL", "from_pretrained": "someone/else"}), "neither"),
        (dict(vae_2d={"type": "VideoAutoencoderKLTemporalDecoder"}), "vae_2d.type"),
        (dict(vae_temporal={"type": "VAE_Temporal_SD", "filters": 8}), "vae_temporal"),
        (dict(vae_temporal={"type": "VAE_Temporal", "filterz": 8}), "bad vae_temporal arguments"),
        (dict(mystery=1), "unknown keys \\['mystery'\\]"),
        (dict(scale=[1.0, 2.0]), "scale/shift have 2/4 values"),
    ],
)
def test_bad_official_configs(tmp_path, pipeline_fx, configs, changes, message):
    write_official_folder(tmp_path, pipeline_fx.state_dict(), configs.spatial_vae, configs.temporal_vae, **changes)
    with pytest.raises(ConfigError, match=message):
        VideoVAE.from_pretrained(tmp_path)


def test_release_config_is_the_default():
    release = {
        "cal_loss": False,
        "freeze_vae_2d": False,
        "from_pretrained": None,
        "micro_frame_size": 17,
        "scale": [3.85, 2.32, 2.33, 3.06],
        "shift": [-0.1, 0.34, 0.27, 0.98],
        "vae_2d": {
            "type": "VideoAutoencoderKL",
            "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
            "subfolder": "vae",
            "micro_batch_size": 4,
            "local_files_only": False,
        },
        "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
    }
    assert VideoVAEConfig.from_hf_config(release) == VideoVAEConfig()


def test_full_size_vae_has_exactly_the_official_tensor_names_and_shapes(data_dir):
    official = {}
    for line in (data_dir / "opensora_vae_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            official[name] = json.loads(shape)
    assert len(official) == 517
    with torch.device("meta"):
        vae = VideoVAE()
    assert {name: list(t.shape) for name, t in vae.state_dict().items()} == official
