"""The T5 text encoder: a tiny T5 saved in the HF layout and loaded back from a local folder,
precision, offload, tokenization, and the errors for bad folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from opensora_core.errors import CheckpointFormatError, CheckpointMismatch, CheckpointNotFound, ModelInputError
from opensora_core.models.text_encoder import MAX_LENGTH, T5TextEncoder, build_tiny_tokenizer, save_tiny_t5

D_MODEL = 32


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5"), d_model=D_MODEL, seed=0)


@pytest.fixture(scope="module")
def encoder(t5_dir):
    return T5TextEncoder.from_pretrained(t5_dir)


def copy_of(t5_dir, tmp_path):
    return shutil.copytree(t5_dir, tmp_path / "t5")


def test_saved_in_the_hf_layout_and_loaded_from_the_local_folder(t5_dir, encoder):
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in t5_dir.iterdir()
    }
    assert encoder.caption_channels == D_MODEL and encoder.dtype == torch.float32
    assert not encoder.model.training
    y, mask = encoder.encode(["a beautiful waterfall", "x"])
    assert y.shape == (2, 1, MAX_LENGTH, D_MODEL) and y.dtype == torch.float32
    assert mask.shape == (2, MAX_LENGTH)
    # character-level: "▁a ▁b e a u t i f u l ▁w a t e r f a l l" + </s>
    assert mask.sum(1).tolist() == [20, 2]
    assert mask[0, :20].all() and not mask[0, 20:].any()


def test_weights_come_from_the_seed(t5_dir, tmp_path):
    again = load_file(str(save_tiny_t5(tmp_path / "same", d_model=D_MODEL, seed=0) / "model.safetensors"))
    other = load_file(str(save_tiny_t5(tmp_path / "other", d_model=D_MODEL, seed=1) / "model.safetensors"))
    first = load_file(str(t5_dir / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_building_the_tiny_encoder_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    save_tiny_t5(tmp_path, d_model=D_MODEL, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_is_fixed_and_t5_like():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("A cat!", add_special_tokens=True).input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁a", "▁c", "a", "t", "!", "</s>"]  # lower-cased
    assert build_tiny_tokenizer()("A cat!").input_ids == ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("é€").input_ids)[-2] == "<unk>"


def test_long_prompts_are_truncated_to_300_tokens_with_eos(encoder):
    prompt = "a" * 1000
    assert encoder.count_tokens(prompt) == 1001
    _, mask = encoder.encode([prompt])
    assert mask.sum() == MAX_LENGTH
    ids = encoder.tokenizer([prompt], max_length=MAX_LENGTH, truncation=True, padding="max_length").input_ids[0]
    assert ids[-1] == encoder.tokenizer.eos_token_id


def test_a_prompt_encodes_the_same_alone_and_in_a_batch(encoder):
    alone, _ = encoder.encode(["a red car"])
    batch, _ = encoder.encode(["a cat", "a red car"])
    torch.testing.assert_close(batch[1], alone[0], rtol=0, atol=1e-6)


def test_bf16_and_fp32(t5_dir, encoder):
    bf16 = T5TextEncoder.from_pretrained(t5_dir, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    y16, mask16 = bf16.encode(["a beautiful waterfall"])
    y32, mask32 = encoder.encode(["a beautiful waterfall"])
    assert y16.dtype == torch.bfloat16 and torch.equal(mask16, mask32)
    valid = mask32[0].bool()
    err = (y16.float() - y32)[0, 0, valid].abs().max() / y32[0, 0, valid].abs().max()
    assert 0 < err < 0.05


def test_offload_moves_the_weights_to_the_cpu(t5_dir, monkeypatch):
    encoder = T5TextEncoder.from_pretrained(t5_dir)
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    encoder.offload()
    assert encoder.device.type == "cpu" and freed == []  # nothing to give back from a CPU model


@pytest.mark.gpu
def test_offload_gives_the_gpu_memory_back(t5_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    encoder = T5TextEncoder.from_pretrained(t5_dir, device="cuda")
    y, mask = encoder.encode(["a beautiful waterfall"])
    assert y.device.type == "cuda" and torch.cuda.memory_allocated() > before
    del y, mask
    encoder.offload()
    assert encoder.device.type == "cpu"
    assert torch.cuda.memory_allocated() == before


def test_encode_needs_a_list_of_prompts(encoder):
    with pytest.raises(ModelInputError):
        encoder.encode("a cat")
    with pytest.raises(ModelInputError):
        encoder.encode([])


def test_hub_ids_and_missing_folders_are_not_downloaded(tmp_path):
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        T5TextEncoder.from_pretrained("DeepFloyd/t5-v1_1-xxl")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="no config.json"):
        T5TextEncoder.from_pretrained(tmp_path / "empty")


def test_missing_weights(t5_dir, tmp_path):
    folder = copy_of(t5_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFound, match="has no weights"):
        T5TextEncoder.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights(t5_dir, tmp_path, damage):
    folder = copy_of(t5_dir, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="model.safetensors"):
        T5TextEncoder.from_pretrained(folder)


def test_wrong_shape_names_the_first_mismatching_key(t5_dir, tmp_path):
    folder = copy_of(t5_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 48}))
    with pytest.raises(CheckpointMismatch, match=r"first mismatching key 'encoder\.block\.0\.layer\.1\.DenseReluDense"):
        T5TextEncoder.from_pretrained(folder)


def test_renamed_tensors_are_an_error_not_silently_random(t5_dir, tmp_path):
    folder = copy_of(t5_dir, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.final_norm.weight"] = state.pop("encoder.final_layer_norm.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match="encoder.final_layer_norm.weight"):
        T5TextEncoder.from_pretrained(folder)


def test_tokenizer_larger_than_the_embedding_table(t5_dir, tmp_path):
    folder = copy_of(t5_dir, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    state["shared.weight"] = state["shared.weight"][:100]
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    with pytest.raises(CheckpointMismatch, match="tokenizer .* has 140 tokens but the T5 model only 100"):
        T5TextEncoder.from_pretrained(folder)


def test_a_deepfloyd_style_folder_spiece_model_and_bin_shards(tmp_path):
    """DeepFloyd/t5-v1_1-xxl ships a SentencePiece ``spiece.model`` (no tokenizer.json) and two
    ``pytorch_model-0000N-of-00002.bin`` shards with an index: the same layout, at toy size."""
    import sentencepiece as spm
    from transformers import T5EncoderModel

    from opensora_core.models.text_encoder import tiny_t5_config

    folder = tmp_path / "t5"
    folder.mkdir()
    captions = ["a beautiful waterfall in the forest", "a cat on a sofa", "a red car at night"] * 30
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_prefix=str(folder / "spiece"), vocab_size=30, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512,
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": [],
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>",
                                                                "pad_token": "<pad>"}))
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    config = tiny_t5_config(D_MODEL, vocab_size=pieces.get_piece_size())
    torch.manual_seed(0)
    state = T5EncoderModel(config).state_dict()
    config.to_json_file(str(folder / "config.json"))
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        torch.save({k: state[k].clone() for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    encoder = T5TextEncoder.from_pretrained(folder)
    assert torch.equal(encoder.model.shared.weight, state["shared.weight"])
    y, mask = encoder.encode(["a beautiful waterfall"])
    expected = pieces.encode("a beautiful waterfall") + [1]  # EOS appended, as upstream
    ids = encoder.tokenizer(["a beautiful waterfall"]).input_ids[0]
    assert ids == expected and mask.sum() == len(expected) and y.shape == (1, 1, MAX_LENGTH, D_MODEL)

    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointNotFound, match="pytorch_model-00002-of-00002.bin listed in"):
        T5TextEncoder.from_pretrained(folder)
