"""Model presets and the checkpoint folder: the tiny preset written in the official four-folder
layout and loaded back, and every way a checkpoint folder can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from opensora_core.errors import CheckpointFormatError, CheckpointMismatch, CheckpointNotFound
from opensora_core.inference.models import load_models, save_random_checkpoint
from opensora_core.presets import OPENSORA_V12, TINY, checkpoint_paths, get_preset


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture()
def ckpt(tiny_ckpt, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def test_the_tiny_checkpoint_has_the_official_layout(tiny_ckpt):
    files = sorted(str(p.relative_to(tiny_ckpt)) for p in tiny_ckpt.rglob("*") if p.is_file())
    assert files == [
        "dit/config.json", "dit/model.safetensors",
        "t5/config.json", "t5/model.safetensors", "t5/tokenizer.json", "t5/tokenizer_config.json",
        "vae2d/vae/config.json",
        "vae3d/config.json", "vae3d/model.safetensors",
    ]
    vae = load_file(str(tiny_ckpt / "vae3d" / "model.safetensors"))
    assert any(k.startswith("spatial_vae.module.") for k in vae) and any(k.startswith("temporal_vae.") for k in vae)
    assert json.loads((tiny_ckpt / "dit" / "config.json").read_text())["model_type"] == "STDiT3"


def test_tiny_loads_back_with_its_shapes(tiny_ckpt):
    models = load_models(TINY, tiny_ckpt)
    assert models.stdit3.config.hidden_size == 64 and models.stdit3.config.depth == 2
    assert models.text_encoder.caption_channels == models.stdit3.config.caption_channels == 32
    assert models.vae.micro_batch_size == 4
    assert not models.stdit3.training and not models.vae.training
    saved = load_file(str(tiny_ckpt / "dit" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in models.stdit3.state_dict().items())


def test_random_weights_come_from_the_preset_seed(tiny_ckpt, tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    again = save_random_checkpoint(tmp_path, TINY)
    assert torch.equal(torch.rand(2), expected)  # the global RNG is untouched
    for part in ("dit", "vae3d", "t5"):
        a = load_file(str(tiny_ckpt / part / "model.safetensors"))
        b = load_file(str(again / part / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_dtype_and_micro_batch(tiny_ckpt):
    models = load_models(TINY, tiny_ckpt, dtype=torch.bfloat16, t5_dtype=torch.bfloat16, vae_micro_batch=2)
    assert models.stdit3.x_embedder.proj.weight.dtype == torch.bfloat16
    assert next(models.vae.parameters()).dtype == torch.bfloat16
    assert models.text_encoder.dtype == torch.bfloat16 and models.vae.micro_batch_size == 2


def test_presets():
    assert get_preset("tiny").random_weights(None) and not get_preset("tiny").random_weights("/x")
    assert not OPENSORA_V12.random_weights(None) and OPENSORA_V12.caption_channels == 4096
    assert OPENSORA_V12.stdit3_config == {} and OPENSORA_V12.default_dtype == "bf16"


def test_missing_folder_and_components_are_named_with_the_layout(ckpt, tmp_path):
    with pytest.raises(CheckpointNotFound, match="does not exist") as info:
        checkpoint_paths(tmp_path / "nope")
    assert "dit/" in info.value.hint and "vae3d/" in info.value.hint
    shutil.rmtree(ckpt / "t5")
    shutil.rmtree(ckpt / "vae2d")
    with pytest.raises(CheckpointNotFound, match=r"t5/ is missing .*vae2d/ is missing") as info:
        checkpoint_paths(ckpt)
    assert "DeepFloyd/t5-v1_1-xxl" in info.value.message and "expected layout" in info.value.hint


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("dit/model.safetensors", "dit/ has no weights"),
        ("vae3d/model.safetensors", "vae3d/ has no weights"),
        ("t5/model.safetensors", "t5/ has no weights"),
        ("t5/tokenizer.json", "t5/ has no tokenizer"),
        ("t5/config.json", "t5/config.json is missing"),
        ("vae2d/vae/config.json", "vae2d/ has neither vae/config.json nor config.json"),
    ],
)
def test_missing_files(ckpt, remove, message):
    (ckpt / remove).unlink()
    with pytest.raises(CheckpointNotFound, match=message):
        load_models(TINY, ckpt)


@pytest.mark.parametrize("part", ["dit", "vae3d"])
def test_corrupt_files(ckpt, part):
    weights = ckpt / part / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match=f"{part}/model.safetensors .*corrupt"):
        load_models(TINY, ckpt)


def test_official_preset_on_a_tiny_checkpoint_names_the_first_mismatching_key(tiny_ckpt):
    with pytest.raises(CheckpointMismatch, match=r"does not fit STDiT3\(hidden_size=1152.*first mismatching key 'rope.freqs'"):
        load_models(OPENSORA_V12, tiny_ckpt)


def test_wrong_shape_deep_in_the_vae(ckpt):
    state = load_file(str(ckpt / "vae3d" / "model.safetensors"))
    state["temporal_vae.decoder.conv_out.conv.weight"] = torch.zeros(4, 8, 3, 3, 2)
    save_file(state, str(ckpt / "vae3d" / "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match="first mismatching key 'temporal_vae.decoder.conv_out.conv.weight'"):
        load_models(TINY, ckpt)


def test_text_encoder_of_the_wrong_width(ckpt):
    config = json.loads((ckpt / "t5" / "config.json").read_text())
    (ckpt / "t5" / "config.json").write_text(json.dumps({**config, "d_model": 48}))
    with pytest.raises(CheckpointMismatch, match="d_model=48 but the tiny transformer takes captions of width 32"):
        load_models(TINY, ckpt)


def test_spatial_vae_architecture_comes_from_vae2d(ckpt):
    # the PixArt repository layout (vae/config.json) or the VAE folder itself (config.json)
    shutil.move(ckpt / "vae2d" / "vae" / "config.json", ckpt / "vae2d" / "config.json")
    assert load_models(TINY, ckpt).vae.config.spatial["block_out_channels"] == [8, 16, 16, 16]
    config = json.loads((ckpt / "vae2d" / "config.json").read_text())
    (ckpt / "vae2d" / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 16, 32, 32]}))
    with pytest.raises(CheckpointMismatch, match="first mismatching key 'spatial_vae"):
        load_models(TINY, ckpt)
    (ckpt / "vae2d" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="cannot parse"):
        load_models(TINY, ckpt)
