"""STDiT3.from_pretrained on every layout Open-Sora v1.2 writes, and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from opensora_core.errors import CheckpointFormatError, CheckpointMismatch, CheckpointNotFound, ConfigError
from opensora_core.models.stdit3 import STDiT3, STDiT3Config


@pytest.fixture()
def weights(stdit_fx):
    return stdit_fx.state_dict()


def forward(model, fx):
    return model(
        fx["input.x"],
        fx["input.timestep"],
        fx["input.y"],
        mask=fx["input.mask"],
        fps=fx["input.fps"],
        height=fx["input.height"],
        width=fx["input.width"],
    )


def assert_reproduces_fixture(model, fx, tol):
    assert not model.training
    tol.check(forward(model, fx), fx["output.noise_pred"], tol.stdit, tol.stdit)


def write_shards(folder, state, fmt):
    """A ColossalAI-style sharded model/ folder: two shards plus an index json."""
    folder.mkdir(parents=True)
    names = list(state)
    halves = {1: names[: len(names) // 2], 2: names[len(names) // 2 :]}
    suffix, index_name = {"safetensors": ("safetensors", "model.safetensors.index.json"),
                          "bin": ("bin", "pytorch_model.bin.index.json")}[fmt]  # fmt: skip
    weight_map = {}
    for part, keys in halves.items():
        shard = f"model-{part:05d}-of-00002.{suffix}"
        tensors = {k: state[k].contiguous() for k in keys}
        save_file(tensors, str(folder / shard)) if fmt == "safetensors" else torch.save(tensors, folder / shard)
        weight_map.update({k: shard for k in keys})
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def test_hf_folder_round_trip(tmp_path, tiny_stdit3, stdit_fx, tol):
    tiny_stdit3.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["hidden_size"] == 64
    model = STDiT3.from_pretrained(tmp_path / "hf")
    assert model.config == tiny_stdit3.config
    assert_reproduces_fixture(model, stdit_fx, tol)


def test_config_overrides_and_dtype(tmp_path, tiny_stdit3):
    tiny_stdit3.save_pretrained(tmp_path)
    model = STDiT3.from_pretrained(tmp_path, enable_flash_attn=True, dtype=torch.bfloat16)
    assert model.config.enable_flash_attn
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not model.rope.freqs.requires_grad
    with pytest.raises(ConfigError, match="unknown keys"):
        STDiT3.from_pretrained(tmp_path, flash=True)


@pytest.mark.parametrize("name", ["ema.pt", "model.pth", "weights.bin", "model.safetensors", "ema.safetensors"])
def test_single_weights_file(tmp_path, weights, tiny_stdit3_config, stdit_fx, tol, name):
    path = tmp_path / name
    save_file(weights, str(path)) if name.endswith(".safetensors") else torch.save(weights, path)
    assert_reproduces_fixture(STDiT3.from_pretrained(path, tiny_stdit3_config), stdit_fx, tol)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_model_folder(tmp_path, weights, tiny_stdit3_config, stdit_fx, tol, fmt):
    write_shards(tmp_path / "model", weights, fmt)
    assert_reproduces_fixture(STDiT3.from_pretrained(tmp_path / "model", tiny_stdit3_config), stdit_fx, tol)


def test_training_checkpoint_folder_loads_model_shards_or_ema(tmp_path, weights, tiny_stdit3_config, stdit_fx, tol):
    ckpt = tmp_path / "epoch0-global_step200"
    write_shards(ckpt / "model", weights, "safetensors")
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save(ema, ckpt / "ema.pt")
    (ckpt / "running_states.json").write_text('{"epoch": 0, "step": 200, "global_step": 200, "batch_size": 1}')

    assert_reproduces_fixture(STDiT3.from_pretrained(ckpt, tiny_stdit3_config), stdit_fx, tol)
    from_ema = STDiT3.from_pretrained(ckpt, tiny_stdit3_config, use_ema=True)
    torch.testing.assert_close(from_ema.t_block[1].weight, weights["t_block.1.weight"] * 0.5)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointNotFound, match="does not exist") as err:
        STDiT3.from_pretrained(tmp_path / "nope")
    assert err.value.hint is None


def test_hub_ids_are_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFound) as err:
        STDiT3.from_pretrained("hpcai-tech/OpenSora-STDiT-v3")
    assert "huggingface-cli download hpcai-tech/OpenSora-STDiT-v3" in err.value.hint


def test_folder_without_weights(tmp_path):
    with pytest.raises(CheckpointFormatError, match="no weights found"):
        STDiT3.from_pretrained(tmp_path)


def test_folder_with_only_ema_suggests_use_ema(tmp_path, weights, tiny_stdit3_config):
    torch.save(weights, tmp_path / "ema.pt")
    with pytest.raises(CheckpointFormatError) as err:
        STDiT3.from_pretrained(tmp_path, tiny_stdit3_config)
    assert "use_ema=True" in err.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match=r"neither ema\.safetensors nor ema\.pt"):
        STDiT3.from_pretrained(tmp_path / "empty", tiny_stdit3_config, use_ema=True)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.pt"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        STDiT3.from_pretrained(tmp_path / name)


def test_truncated_safetensors(tmp_path, weights, tiny_stdit3_config):
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        STDiT3.from_pretrained(path, tiny_stdit3_config)


def test_pickle_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "ema.pt")
    with pytest.raises(CheckpointFormatError, match="does not hold a state dict"):
        STDiT3.from_pretrained(tmp_path / "ema.pt")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="unsupported weights file"):
        STDiT3.from_pretrained(tmp_path / "model.ckpt")


def test_wrong_config_names_the_first_mismatching_key(tmp_path, weights):
    save_file(weights, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(CheckpointMismatch) as err:
        STDiT3.from_pretrained(tmp_path / "tiny.safetensors")  # default config is XL/2
    assert "first mismatching key 'rope.freqs' has shape [8] in the checkpoint but [36] in the model" in str(err.value)


def test_wrong_shape_deep_in_the_model(tmp_path, weights, tiny_stdit3_config):
    weights["temporal_blocks.1.mlp.fc2.weight"] = torch.zeros(64, 128)
    save_file(weights, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"'temporal_blocks\.1\.mlp\.fc2\.weight' has shape \[64, 128\]"):
        STDiT3.from_pretrained(tmp_path / "bad.safetensors", tiny_stdit3_config)


def test_missing_and_unexpected_keys(tmp_path, weights, tiny_stdit3_config):
    del weights["y_embedder.y_embedding"]
    weights["pos_embed.inv_freq"] = torch.zeros(16)
    save_file(weights, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatch) as err:
        STDiT3.from_pretrained(tmp_path / "bad.safetensors", tiny_stdit3_config)
    assert "1 missing keys (first 'y_embedder.y_embedding')" in str(err.value)
    assert "1 unexpected keys (first 'pos_embed.inv_freq')" in str(err.value)


def test_index_pointing_at_a_missing_shard(tmp_path, weights, tiny_stdit3_config):
    write_shards(tmp_path / "model", weights, "safetensors")
    next((tmp_path / "model").glob("model-00002*")).unlink()
    with pytest.raises(CheckpointNotFound, match=r"shard .*model-00002-of-00002\.safetensors"):
        STDiT3.from_pretrained(tmp_path / "model", tiny_stdit3_config)


def test_index_listing_a_tensor_no_shard_holds(tmp_path, weights, tiny_stdit3_config):
    write_shards(tmp_path / "model", weights, "safetensors")
    index = tmp_path / "model" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointFormatError, match=r"first 'ghost\.weight'"):
        STDiT3.from_pretrained(tmp_path / "model", tiny_stdit3_config)


def test_bad_config_json(tmp_path, tiny_stdit3):
    tiny_stdit3.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="cannot parse"):
        STDiT3.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**tiny_stdit3.config.to_dict(), "depth": 0}))
    with pytest.raises(ConfigError, match="depth=0"):
        STDiT3.from_pretrained(tmp_path)


def test_explicit_config_wins_over_config_json(tmp_path, tiny_stdit3):
    tiny_stdit3.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatch):
        STDiT3.from_pretrained(tmp_path, STDiT3Config())
