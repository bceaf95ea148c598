"""The checkpoint folder layout and how the newest complete one is found (torch-free).

    <run>/checkpoints/
      step-12/                  published by renaming .step-12.tmp-<attempt> once every file is written
        train_state.json        written last: step, epoch, world size, plugin, and {file: size} of the rest
        sampler.json            the batch sampler's position (seed, epoch, micro-batches consumed)
        lr_scheduler.json       the warm-up schedule's state
        dcp/                    model and optimizer (torch.distributed.checkpoint: one file per rank)
        ema.safetensors         the EMA weights, fp32, in the official STDiT3 layout (all tensors)
        config.json             the STDiT3 config: STDiT3.from_pretrained(step_dir, use_ema=True) loads it
        rng/rank-000.pt ...     each rank's RNG states (torch, numpy, python, the training generator)
      .step-15.tmp-1/           a save that never finished (the job died): ignored, reported

A folder counts only when ``train_state.json`` parses and every file it lists has the recorded
size; anything else is skipped with the reason (torchtitan accepts a step only when complete too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import UserError

FORMAT = "clusterkit-train-checkpoint/1"
TRAIN_STATE = "train_state.json"
SAMPLER = "sampler.json"
LR_SCHEDULER = "lr_scheduler.json"
DCP_DIR = "dcp"
EMA_FILE = "ema.safetensors"
MODEL_CONFIG = "config.json"
RNG_DIR = "rng"
CHECKPOINTS = "checkpoints"

_STEP = re.compile(r"^step-(\d+)$")
_TMP = re.compile(r"^\.step-(\d+)\.tmp-.*$")


def step_dir_name(step: int) -> str:
    return f"step-{step}"


def tmp_dir_name(step: int, attempt: str) -> str:
    return f".step-{step}.tmp-{attempt}"


def rng_file(rank: int) -> str:
    return f"{RNG_DIR}/rank-{rank:03d}.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint folder and its train state."""

    path: Path
    step: int
    state: dict

    @property
    def world_size(self) -> int:
        return int(self.state["world_size"])

    def to_dict(self) -> dict:
        return {"path": str(self.path), "step": self.step, "epoch": self.state.get("epoch"),
                "world_size": self.state.get("world_size"), "plugin": self.state.get("plugin")}


def check_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint at ``path``, or ``UserError`` saying why it is incomplete or corrupt."""
    path = Path(path)
    match = _STEP.match(path.name)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a folder")
    state_path = path / TRAIN_STATE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is incomplete: it has no {TRAIN_STATE} (the save never finished)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt: {TRAIN_STATE} does not parse ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a clusterkit training checkpoint ({TRAIN_STATE} format "
                        f"{state.get('format') if isinstance(state, dict) else None!r}, expected {FORMAT!r})")
    for name, size in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise UserError(f"{path} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise UserError(f"{path} is corrupt: {name} has {file.stat().st_size} bytes, {size} were written")
    step = int(state["step"])
    if match and int(match.group(1)) != step:
        raise UserError(f"{path} is corrupt: its folder says step {match.group(1)} but {TRAIN_STATE} says {step}")
    return CheckpointInfo(path=path, step=step, state=state)


def scan_checkpoints(root: Path) -> tuple[list[CheckpointInfo], list[str]]:
    """Complete checkpoints under ``root`` (oldest first) and one message per folder skipped."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    found: list[CheckpointInfo] = []
    skipped: list[str] = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if _TMP.match(child.name):
            skipped.append(f"skipped {child}: a save that never finished")
        elif _STEP.match(child.name):
            try:
                found.append(check_checkpoint(child))
            except UserError as exc:
                skipped.append(f"skipped {exc.message}")
    found.sort(key=lambda c: c.step)
    return found, skipped


def latest_checkpoint(root: Path) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint under ``root`` (None if there is none) and the skip messages."""
    found, skipped = scan_checkpoints(root)
    return (found[-1] if found else None), skipped


def resolve_resume_path(path: Path) -> tuple[CheckpointInfo, list[str]]:
    """What ``--resume PATH`` names: a ``step-N`` folder, a ``checkpoints/`` folder, or a run folder
    (its ``checkpoints/``, newest complete first). ``UserError`` when there is nothing to resume."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--resume {str(path)!r}: no such file or folder",
                        hint="give a run id, a run folder, its checkpoints/ folder or a step-N folder")
    if _STEP.match(path.name) or (path / TRAIN_STATE).exists():
        return check_checkpoint(path), []
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    info, skipped = latest_checkpoint(root)
    if info is None:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise UserError(f"nothing to resume: {root} holds no complete checkpoint{detail}",
                        hint="checkpoints are written every ckpt_every steps; start a fresh run instead")
    return info, skipped
