"""STDiT3Config validation and the full-size XL/2 parameter layout (built on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from opensora_core.errors import ConfigError
from opensora_core.models.stdit3 import STDiT3, STDiT3Config

# config.json of hpcai-tech/OpenSora-STDiT-v3 (after the "Update config.json" edit).
HF_CONFIG = {
    "architectures": ["STDiT3"],
    "caption_channels": 4096,
    "class_dropout_prob": 0.1,
    "depth": 28,
    "drop_path": 0.0,
    "enable_flash_attn": False,
    "enable_layernorm_kernel": False,
    "enable_sequence_parallelism": False,
    "freeze_y_embedder": True,
    "hidden_size": 1152,
    "in_channels": 4,
    "input_size": [None, None, None],
    "input_sq_size": 512,
    "mlp_ratio": 4.0,
    "model_max_length": 300,
    "model_type": "STDiT3",
    "num_heads": 16,
    "only_train_temporal": False,
    "patch_size": [1, 2, 2],
    "pred_sigma": True,
    "qk_norm": True,
    "skip_y_embedder": False,
    "torch_dtype": "float32",
    "transformers_version": "4.36.2",
}


def read_key_list(path):
    keys = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            keys[name] = json.loads(shape)
    return keys


def test_xl2_has_exactly_the_official_tensor_names_and_shapes(data_dir):
    official = read_key_list(data_dir / "opensora_stdit3_keys.txt")
    assert len(official) == 973
    with torch.device("meta"):
        model = STDiT3(STDiT3Config())
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert ours == official
    assert list(ours) == list(official)  # same order as the released file's state_dict


def test_official_hf_config_parses_to_xl2():
    config = STDiT3Config.from_dict(HF_CONFIG)
    assert config == STDiT3Config(freeze_y_embedder=True)
    assert (config.head_dim, config.out_channels, config.patch_size) == (72, 8, (1, 2, 2))


def test_to_dict_round_trips_and_keeps_the_official_keys():
    config = STDiT3Config(hidden_size=64, depth=2, num_heads=4)
    data = config.to_dict()
    assert set(data) == set(HF_CONFIG) - {"transformers_version"}
    assert STDiT3Config.from_dict(json.loads(json.dumps(data))) == config


def test_from_dict_rejects_unknown_keys_and_applies_overrides():
    with pytest.raises(ConfigError, match="unknown keys \\['hiden_size'\\]"):
        STDiT3Config.from_dict({"hiden_size": 1152})
    assert STDiT3Config.from_dict(HF_CONFIG, enable_flash_attn=True).enable_flash_attn


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(hidden_size=100, num_heads=16), "hidden_size=100: must be divisible by num_heads=16"),
        (dict(hidden_size=60, num_heads=4), "head_dim 15 must be even"),
        (dict(depth=0), "depth=0: must be a positive integer"),
        (dict(num_heads=True), "num_heads=True: must be a positive integer"),
        (dict(patch_size=(1, 2)), "patch_size=\\(1, 2\\): must be three positive integers"),
        (dict(mlp_ratio=0), "mlp_ratio=0: must be a number > 0"),
        (dict(mlp_ratio="4"), "mlp_ratio='4': must be a number > 0"),
        (dict(class_dropout_prob=1.0), "class_dropout_prob=1.0: must be a number in \\[0, 1\\)"),
        (dict(drop_path=-0.1), "drop_path=-0.1: must be a number in \\[0, 1\\)"),
        (dict(qk_norm="yes"), "qk_norm='yes': must be true or false"),
        (dict(enable_sequence_parallelism=True), "enable_sequence_parallelism=True: not supported"),
    ],
)
def test_invalid_configs_name_field_value_and_rule(changes, message):
    with pytest.raises(ConfigError, match=message):
        STDiT3Config(**changes)


def test_config_error_is_a_value_error_and_a_user_error():
    from clusterkit.errors import UserError

    with pytest.raises(ValueError):
        STDiT3Config(depth=-1)
    with pytest.raises(UserError):
        STDiT3Config(depth=-1)
