"""The text encoder of Open-Sora v1.2: a T5 encoder and its tokenizer, loaded with transformers
from a local folder only (never the Hub).

Upstream uses DeepFloyd/t5-v1_1-xxl's encoder (d_model 4096) in fp32 during inference, pads
or truncates every prompt to 300 tokens (EOS included) and returns the last hidden state
[B, 1, 300, 4096] with the attention mask [B, 300]. The null caption for guidance is not the
encoder's business: it is STDiT3's learned ``y_embedding``.

T5-XXL holds ~19 GB in fp32, so ``offload()`` moves it to the CPU once the prompts are
encoded; it then holds no GPU memory while the transformer denoises.

``build_tiny_tokenizer`` / ``save_tiny_t5`` make the ``tiny`` preset's encoder: a character-level
T5-style tokenizer with a fixed vocabulary and a small ``T5EncoderModel``, random weights from a
fixed seed, written in the same HF layout as the real one.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CheckpointFormatError, CheckpointMismatch, CheckpointNotFound, ModelInputError
from ..presets import T5_WEIGHT_FILES

#: Caption tokens per prompt (upstream ``model_max_length``); STDiT3's null caption has as many rows.
MAX_LENGTH = 300


class T5TextEncoder:
    """A tokenizer + ``T5EncoderModel`` pair: prompts -> (caption embeddings, mask)."""

    def __init__(self, tokenizer, model, *, max_length: int = MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_length: int = MAX_LENGTH,
    ) -> T5TextEncoder:
        """Load from a local HF folder (config.json, weights, tokenizer files), as downloaded from
        DeepFloyd/t5-v1_1-xxl. Names and shapes are checked before any weight is read; a missing
        folder, file or key, a wrong shape or a corrupt file is a typed error naming it."""
        import transformers
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        config = _read_config(path)
        weights = _weight_file(path)
        _check_weight_shapes(T5EncoderModel, config, path, weights)
        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, ImportError, ...
            raise CheckpointFormatError(
                f"cannot load the T5 tokenizer from {path}: {type(exc).__name__}: {exc}",
                hint="a DeepFloyd/t5-v1_1-xxl download needs the sentencepiece package (pip install sentencepiece)",
            ) from exc
        if len(tokenizer) > config.vocab_size:
            raise CheckpointMismatch(
                f"the tokenizer in {path} has {len(tokenizer)} tokens but the T5 model only "
                f"{config.vocab_size} embeddings"
            )
        # transformers 5 renamed torch_dtype to dtype
        dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, **{dtype_kwarg: dtype})
        except Exception as exc:  # safetensors/pickle/transformers errors for a corrupt or partial file
            raise CheckpointFormatError(
                f"cannot read the T5 weights in {path} (corrupt or incomplete?): {type(exc).__name__}: {exc}"
            ) from exc
        return cls(tokenizer, model.to(device), max_length=max_length)

    @property
    def caption_channels(self) -> int:
        """Width of the embeddings (T5's d_model); STDiT3's ``caption_channels`` must equal it."""
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def count_tokens(self, prompt: str) -> int:
        """Tokens ``prompt`` makes before truncation, EOS included."""
        return len(self.tokenizer(prompt, add_special_tokens=True).input_ids)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [B, 1, max_length, d_model] in the model's dtype, mask [B, max_length] int64 on its device)."""
        if isinstance(prompts, str) or not prompts:
            raise ModelInputError("encode takes a non-empty list of prompts")
        tokens = self.tokenizer(
            list(prompts),
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[:, None], mask

    def to(self, device: str | torch.device) -> T5TextEncoder:
        self.model.to(device)
        return self

    def offload(self) -> None:
        """Move the weights to the CPU and give their GPU memory back to the driver."""
        was_cuda = self.device.type == "cuda"
        self.model.to("cpu")
        if was_cuda:
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- the tiny encoder

#: Characters the tiny tokenizer knows (after lower-casing); anything else becomes <unk>.
TINY_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def build_tiny_tokenizer(max_length: int = MAX_LENGTH):
    """A T5-style (SentencePiece-like Unigram, "▁" word marks, ``</s>`` appended, ``<pad>`` = 0)
    character-level tokenizer with a fixed vocabulary: identical on every machine, no training."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in TINY_ALPHABET:
        vocab += [("▁" + char, -3.0), (char, -3.5)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_t5_config(d_model: int, vocab_size: int, *, num_layers: int = 2, num_heads: int = 4):
    """A T5 v1.1-style encoder config (gated GELU, no dropout) of width ``d_model``."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=2 * d_model,
        num_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=8,
        relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    )


def save_tiny_t5(folder: str | Path, *, d_model: int, seed: int = 0) -> Path:
    """Write a random tiny T5 encoder (weights from ``seed``) and the tiny tokenizer to ``folder``
    in the HF layout ``T5TextEncoder.from_pretrained`` reads. The global RNG is left untouched."""
    import transformers
    from transformers import T5EncoderModel

    transformers.utils.logging.disable_progress_bar()
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    config = tiny_t5_config(d_model, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------- checks before loading


def _read_config(path: Path):
    from transformers import T5Config

    if not path.is_dir():
        raise CheckpointNotFound(f"T5 folder {path} does not exist")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointNotFound(f"T5 folder {path} has no config.json")
    try:
        return T5Config.from_dict(json.loads(config_path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointFormatError(f"cannot parse {config_path}: {exc}") from exc


def _weight_file(path: Path) -> Path:
    for name in T5_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointNotFound(f"T5 folder {path} has no weights: expected one of {', '.join(T5_WEIGHT_FILES)}")


def _check_weight_shapes(model_cls, config, path: Path, weights: Path) -> None:
    """Compare the checkpoint's tensor names and shapes (read from headers, not data) with the model's.

    transformers 5 only *warns* about missing keys (they stay randomly initialised), so this check
    is what keeps a mis-named checkpoint from producing silent garbage. Extra keys (a full T5's
    decoder) are fine; the tied ``encoder.embed_tokens.weight`` may be absent."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in model_cls(config).state_dict().items()}
    stored = _stored_shapes(weights)
    mismatched = [n for n in expected if n in stored and stored[n] != expected[n]]
    if mismatched:
        name = mismatched[0]
        raise CheckpointMismatch(
            f"{path} does not fit T5EncoderModel(d_model={config.d_model}, num_layers={config.num_layers}): "
            f"first mismatching key {name!r} has shape {list(stored[name])} in the checkpoint but "
            f"{list(expected[name])} in the model ({len(mismatched)} shapes differ)",
            hint="config.json and the weights disagree; re-download the folder",
        )
    optional = {"encoder.embed_tokens.weight"}
    missing = [n for n in expected if n not in stored and n not in optional]
    if missing:
        raise CheckpointMismatch(f"{weights} lacks {len(missing)} tensors of the T5 encoder (first {missing[0]!r})")


def _stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointFormatError(f"cannot read the weight_map of {weights}: {exc}") from exc
        shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            shard_path = weights.parent / shard
            if not shard_path.is_file():
                raise CheckpointNotFound(f"shard {shard_path} listed in {weights.name} does not exist")
            shapes.update(_stored_shapes(shard_path))
        return shapes
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt") as handle:
                return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        except (SafetensorError, OSError) as exc:
            raise CheckpointFormatError(f"cannot read {weights} (corrupt or not safetensors): {exc}") from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch.load raises many unrelated types for a bad file
        raise CheckpointFormatError(f"cannot read {weights} (corrupt or not a torch state dict): {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{weights} does not hold a state dict")
    return {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
