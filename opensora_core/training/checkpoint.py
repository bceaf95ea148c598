"""Saving, loading and exporting training checkpoints (layout: ``checkpoint_files``).

Every rank writes its part into a hidden ``.step-N.tmp-<attempt>`` folder; when all are done,
rank 0 writes ``train_state.json`` (with the size of every other file) and renames the folder to
``step-N``. A job killed at any moment therefore leaves either a complete ``step-N`` or a hidden
temporary folder that resume skips. Old checkpoints beyond ``keep_last`` are renamed away and
deleted by rank 0 only after the new one is published.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clusterkit.launch.records import atomic_write_json

from . import checkpoint_files as files
from .parallel import barrier


# ---------------------------------------------------------------------------- RNG states


def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG a training step draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- saving


class CheckpointManager:
    """Writes ``step-N`` folders under ``root`` and keeps the newest ``keep_last``."""

    def __init__(self, root: Path, *, rank: int, world_size: int, keep_last: int | None, attempt: str,
                 fault: Callable[[str, int], None] | None = None) -> None:
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.attempt = attempt
        self.fault = fault or (lambda where, step: None)
        self.written: list[Path] = []

    def save(self, step: int, *, plugin, ema, train_state: dict, sampler_state: dict, lr_state: dict,
             model_config: dict, rng: dict) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it) and return its folder."""
        started = time.perf_counter()
        tmp = self.root / files.tmp_dir_name(step, self.attempt)
        final = self.root / files.step_dir_name(step)
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / files.RNG_DIR).mkdir(parents=True)
        barrier()
        plugin.save(tmp / files.DCP_DIR)
        keep = self.rank == 0
        whole = ema.full_state(plugin, keep)
        torch.save(rng, tmp / files.rng_file(self.rank))
        if self.rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in whole.items()}, str(tmp / files.EMA_FILE),
                      metadata={"format": "pt", "step": str(step)})
            (tmp / files.MODEL_CONFIG).write_text(json.dumps(model_config, indent=2) + "\n")
            (tmp / files.SAMPLER).write_text(json.dumps(sampler_state, indent=2) + "\n")
            (tmp / files.LR_SCHEDULER).write_text(json.dumps(lr_state, indent=2) + "\n")
        self.fault("save", step)  # test hook: a job killed in the middle of a save
        barrier()
        if self.rank == 0:
            manifest = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            state = {"format": files.FORMAT, **train_state, "step": step, "world_size": self.world_size,
                     "files": manifest, "saved_at": time.time(), "save_s": round(time.perf_counter() - started, 3)}
            atomic_write_json(tmp / files.TRAIN_STATE, state)
            _fsync_dir(tmp)
            if final.exists():  # left by an attempt that resumed from an older checkpoint: never complete
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self._retain()
        barrier()
        self.written.append(final)
        return final

    def _retain(self) -> None:
        if self.keep_last is None:
            return
        found, _ = files.scan_checkpoints(self.root)
        for old in found[: max(0, len(found) - self.keep_last)]:
            doomed = old.path.with_name(f".deleting-{old.path.name}")
            os.rename(old.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- loading


def load_ema_file(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / files.EMA_FILE))


def load_rng(folder: Path, rank: int) -> dict:
    return torch.load(Path(folder) / files.rng_file(rank), map_location="cpu", weights_only=True)


def read_json_file(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


# ---------------------------------------------------------------------------- export


def export_ema(checkpoint: Path, out_dir: Path, components: Path | None = None) -> Path:
    """Make ``out_dir`` a checkpoint folder inference reads (``--ckpt-dir``): ``dit/`` holds this
    checkpoint's EMA as config.json + model.safetensors (a hard link when possible: the EMA file
    already has the official layout), and t5/ vae2d/ vae3d/ are linked from ``components`` (the
    training's ckpt_dir). Without ``components`` only ``dit/`` is written."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    files.check_checkpoint(checkpoint)
    dit = out_dir / "dit"
    dit.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint / files.MODEL_CONFIG, dit / "config.json")
    target = dit / "model.safetensors"
    target.unlink(missing_ok=True)
    try:
        os.link(checkpoint / files.EMA_FILE, target)
    except OSError:
        shutil.copyfile(checkpoint / files.EMA_FILE, target)
    if components is not None:
        for name in ("t5", "vae2d", "vae3d"):
            link = out_dir / name
            if link.is_symlink() or link.exists():
                link.unlink() if link.is_symlink() else shutil.rmtree(link)
            link.symlink_to(Path(components).resolve() / name, target_is_directory=True)
    return out_dir
