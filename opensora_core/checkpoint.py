"""Reading and writing model weights in the layouts Open-Sora v1.2 produces.

Accepted ``path`` forms:
- a file: ``.safetensors`` or a torch pickle of a state dict (``.pt``/``.pth``/``.bin``, e.g. ``ema.pt``);
- an HF folder: ``config.json`` + ``model.safetensors`` (or shards + ``*.index.json``);
- a folder of shards with one ``*.index.json`` (``{"weight_map": {name: shard file}}``), as ColossalAI's
  booster writes into a training checkpoint's ``model/``;
- a training checkpoint ``epochE-global_stepG/``: its ``model/`` shards, or ``ema.safetensors``/``ema.pt``
  with ``use_ema=True``.
Loading is strict: names and shapes must match the model exactly, or a typed error names the first
offending key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointFormatError, CheckpointMismatch, CheckpointNotFound

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def read_config_json(path: str | Path) -> dict | None:
    """The parsed ``config.json`` of a model folder, or None when ``path`` is a file or has none."""
    path = Path(path)
    config_path = path / "config.json"
    if not path.is_dir() or not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot parse {config_path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{config_path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors stored at ``path`` (see the module docstring) and a description of where they came from."""
    path = Path(path)
    if not path.exists():
        hint = None
        if len(path.parts) == 2 and not str(path).startswith((".", "/", "~")):  # looks like a Hub id
            hint = f"download it first, e.g. `huggingface-cli download {path} --local-dir DIR`"
        raise CheckpointNotFound(f"checkpoint {path} does not exist", hint=hint)
    if path.is_file():
        if use_ema:
            raise CheckpointFormatError(f"use_ema=True needs a training checkpoint folder, got the file {path}")
        return _read_file(path), str(path)
    if use_ema:
        for name in ("ema.safetensors", "ema.pt"):
            if (path / name).is_file():
                return _read_file(path / name), str(path / name)
        raise CheckpointNotFound(f"use_ema=True but {path} has neither ema.safetensors nor ema.pt")
    if (path / "model.safetensors").is_file():
        return _read_file(path / "model.safetensors"), str(path / "model.safetensors")
    if list(path.glob("*.index.json")):
        return _read_shards(path), str(path)
    if (path / "model").is_dir():
        return read_state_dict(path / "model")
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("ema."))
    if len(weights) == 1:
        return _read_file(weights[0]), str(weights[0])
    hint = "it has an EMA copy; pass use_ema=True to load it" if list(path.glob("ema.*")) else None
    raise CheckpointFormatError(
        f"no weights found in {path}: expected model.safetensors, shards with a *.index.json, a model/ folder "
        f"(training checkpoint) or a single {'/'.join(WEIGHT_SUFFIXES)} file",
        hint=hint,
    )


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Raise ``CheckpointMismatch`` unless ``state`` has exactly the model's names and shapes."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    mismatched = [name for name in expected if name in state and tuple(state[name].shape) != expected[name]]
    problems = []
    if mismatched:
        name = mismatched[0]
        problems.append(
            f"first mismatching key {name!r} has shape {list(state[name].shape)} in the checkpoint "
            f"but {list(expected[name])} in the model ({len(mismatched)} shapes differ)"
        )
    if missing:
        problems.append(f"{len(missing)} missing keys (first {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
    if problems:
        raise CheckpointMismatch(
            f"{source} does not fit {what}: " + "; ".join(problems),
            hint="check the model config (sizes) against the checkpoint" if mismatched or missing else None,
        )


def load_pretrained(
    build: Callable[[], nn.Module],
    path: str | Path,
    *,
    what: str,
    use_ema: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a model without allocating weights, then fill it strictly from ``path``; eval mode."""
    state, source = read_state_dict(path, use_ema=use_ema)
    with torch.device("meta"):
        model = build()
    check_state_dict(model, state, source, what)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not leftover, f"tensors not restored from the checkpoint: {leftover[:3]}"
    return model.to(device=device, dtype=dtype).eval()


def save_hf_folder(folder: str | Path, config: dict, state: Mapping[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (each atomically: temp file, then rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    tensors = {name: t.detach().contiguous().cpu() for name, t in state.items()}
    _atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointFormatError(f"cannot read {path} (corrupt or not safetensors): {exc}") from exc
    if path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many unrelated types for a bad file
            raise CheckpointFormatError(f"cannot read {path} (corrupt or not a torch state dict): {exc}") from exc
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CheckpointFormatError(f"{path} does not hold a state dict (a mapping of names to tensors)")
        return dict(state)
    raise CheckpointFormatError(f"{path}: unsupported weights file; expected one of {', '.join(WEIGHT_SUFFIXES)}")


def _read_shards(folder: Path) -> dict[str, torch.Tensor]:
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) > 1:
        raise CheckpointFormatError(f"{folder} has several index files ({', '.join(p.name for p in indexes)})")
    index_path = indexes[0]
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointFormatError(f"cannot read the weight_map of {index_path}: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointNotFound(f"shard {shard_path} listed in {index_path.name} does not exist")
        state.update(_read_file(shard_path))
    absent = [name for name in weight_map if name not in state]
    if absent:
        raise CheckpointFormatError(
            f"{index_path.name} lists {len(absent)} tensors its shards do not hold (first {absent[0]!r})"
        )
    return state


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
