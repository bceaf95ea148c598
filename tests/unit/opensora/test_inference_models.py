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


# --- one folder per component (--ckpt-path-dit/-t5/-vae2d/-vae3d), as upstream's demo takes them ---

HF_NAMES = {"dit": "OpenSora-STDiT-v3", "t5": "t5-v1_1-xxl", "vae2d": "pixart_sigma_sdxlvae_T5_diffusers",
            "vae3d": "OpenSora-VAE-v1.2"}


@pytest.fixture()
def component_dirs(tiny_ckpt, tmp_path):
    """The tiny checkpoint's components copied to unrelated folders, named as their downloads."""
    return {name: str(shutil.copytree(tiny_ckpt / name, tmp_path / "downloads" / name[-1] / HF_NAMES[name]))
            for name in HF_NAMES}


def _states(models):
    return {"stdit3": models.stdit3.state_dict(), "vae": models.vae.state_dict(),
            "text_encoder": models.text_encoder.model.state_dict()}


def _same_states(a, b):
    return all(a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
               for part in a)


def test_four_component_folders_load_as_the_checkpoint_folder(tiny_ckpt, component_dirs):
    paths = checkpoint_paths(**component_dirs)
    assert {name: str(getattr(paths, name)) for name in HF_NAMES} == component_dirs
    assert _same_states(_states(load_models(TINY, None, ckpt_paths=component_dirs)), _states(load_models(TINY, tiny_ckpt)))


def test_a_component_folder_beside_ckpt_dir_replaces_that_component(tiny_ckpt, component_dirs):
    other_dit = component_dirs["dit"]
    state = load_file(f"{other_dit}/model.safetensors")
    save_file({k: v + 1 for k, v in state.items()}, f"{other_dit}/model.safetensors")
    paths = checkpoint_paths(tiny_ckpt, dit=other_dit)
    assert str(paths.dit) == other_dit and paths.t5 == tiny_ckpt / "t5" and paths.vae3d == tiny_ckpt / "vae3d"
    mixed, plain = _states(load_models(TINY, tiny_ckpt, ckpt_paths={"dit": other_dit})), _states(load_models(TINY, tiny_ckpt))
    assert all(torch.equal(mixed["stdit3"][k], state[k] + 1) for k in state)
    assert not _same_states({"stdit3": mixed["stdit3"]}, {"stdit3": plain["stdit3"]})
    assert _same_states({p: mixed[p] for p in ("vae", "text_encoder")}, {p: plain[p] for p in ("vae", "text_encoder")})


def test_a_component_without_a_folder_names_its_option(component_dirs):
    given = {name: component_dirs[name] for name in ("dit", "t5")}
    with pytest.raises(CheckpointNotFound, match=r"no folder for the vae2d, vae3d components: give --ckpt-path-vae2d "
                                                 r"DIR, --ckpt-path-vae3d DIR, or --ckpt-dir DIR") as info:
        load_models(TINY, None, ckpt_paths=given)
    assert "--ckpt-path-dit" in info.value.hint and "dit/" in info.value.hint  # both forms shown
    with pytest.raises(CheckpointNotFound, match="no folder for the dit, t5, vae2d, vae3d components"):
        checkpoint_paths()


@pytest.mark.parametrize(
    ("component", "folder", "message"),
    [
        ("dit", "t5", r"--ckpt-path-dit '.*t5-v1_1-xxl' holds the t5 component \(DeepFloyd/t5-v1_1-xxl\), not dit"),
        ("vae3d", "dit", r"--ckpt-path-vae3d '.*OpenSora-STDiT-v3' holds the dit component"),
        ("vae2d", "vae3d", r"--ckpt-path-vae2d '.*OpenSora-VAE-v1.2' holds the vae3d component"),
        ("t5", "vae2d", r"--ckpt-path-t5 '.*pixart_sigma_sdxlvae_T5_diffusers' has no weights .*has no config.json"
                        r".*has no tokenizer .*a download of DeepFloyd/t5-v1_1-xxl"),
        ("vae3d", None, r"--ckpt-path-vae3d '.*nowhere' does not exist \(hpcai-tech/OpenSora-VAE-v1.2\)"),
    ],
)
def test_a_wrong_component_folder_is_named_by_its_option(tiny_ckpt, component_dirs, tmp_path, component, folder,
                                                         message):
    wrong = component_dirs[folder] if folder else str(tmp_path / "nowhere")
    for ckpt_dir in (None, tiny_ckpt):  # alone or beside --ckpt-dir: the option is named, not the folder
        with pytest.raises(CheckpointNotFound, match=message) as info:
            checkpoint_paths(ckpt_dir, **{**component_dirs, component: wrong})
        assert "checkpoint folder" not in info.value.message
        assert all(f"--ckpt-path-{other}" not in info.value.message for other in HF_NAMES if other != component)


def test_a_swapped_sub_folder_is_named(ckpt):
    shutil.rmtree(ckpt / "dit")
    shutil.copytree(ckpt / "vae3d", ckpt / "dit")
    with pytest.raises(CheckpointNotFound, match=r"checkpoint folder '.*': dit/ holds the vae3d component"):
        checkpoint_paths(ckpt)


def test_tiny_with_component_folders_uses_them_not_random_weights(component_dirs):
    assert not TINY.random_weights(None, component_dirs) and TINY.random_weights(None, {})
