"""Checkpoint folders: written complete or not at all, corrupt ones skipped with the reason, retention,
RNG round trip, and the EMA export that inference loads (one process, gloo)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist

from clusterkit.errors import UserError
from opensora_core.models.stdit3 import STDiT3, STDiT3Config
from opensora_core.presets import TINY
from opensora_core.training import checkpoint_files as files
from opensora_core.training.checkpoint import CheckpointManager, capture_rng, export_ema, restore_rng
from opensora_core.training.ema import EMA
from opensora_core.training.parallel import TorchPlugin


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def trained(one_rank, tmp_path):
    """A tiny STDiT3 under DDP after two optimizer steps, with its EMA."""
    torch.manual_seed(0)
    plugin = TorchPlugin("ddp", torch.device("cpu"))
    plugin.setup(STDiT3(STDiT3Config(**TINY.stdit3_config)), lr=1e-3, weight_decay=0.0, eps=1e-15)
    ema = EMA(plugin.ema_sources())
    for _ in range(2):
        for p in plugin.module.parameters():
            if p.requires_grad:
                p.grad = torch.randn_like(p)
        plugin.step(grad_clip=1.0)
        ema.update(plugin.ema_sources(), 0.9)
    return plugin, ema


def save(manager: CheckpointManager, step: int, plugin, ema, fault=None) -> None:
    manager.save(step, plugin=plugin, ema=ema, train_state={"epoch": 0, "steps_in_epoch": step},
                 sampler_state={"seed": 1, "epoch": 0, "last_micro_batch_access_index": step, "num_replicas": 1},
                 lr_state={"last_epoch": step}, model_config=plugin.module.config.to_dict(), rng=capture_rng({}))


def test_save_publishes_a_complete_folder_and_keeps_the_newest(trained, tmp_path):
    plugin, ema = trained
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(root, rank=0, world_size=1, keep_last=2, attempt="0")
    for step in (3, 6, 9):
        save(manager, step, plugin, ema)
    assert sorted(p.name for p in root.iterdir()) == ["step-6", "step-9"]  # keep_last 2
    info, skipped = files.latest_checkpoint(root)
    assert info.step == 9 and skipped == []
    state = json.loads((root / "step-9" / files.TRAIN_STATE).read_text())
    assert state["format"] == files.FORMAT and state["world_size"] == 1
    assert {"ema.safetensors", "config.json", "sampler.json", "lr_scheduler.json", "rng/rank-000.pt",
            "dcp/.metadata"} <= set(state["files"])


def test_incomplete_and_corrupt_folders_are_skipped_with_the_reason(trained, tmp_path):
    plugin, ema = trained
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(root, rank=0, world_size=1, keep_last=None, attempt="0")
    for step in (2, 4, 6, 8):
        save(manager, step, plugin, ema)
    (root / ".step-10.tmp-0").mkdir()  # a save the job never finished
    ema_file = root / "step-8" / files.EMA_FILE
    ema_file.write_bytes(ema_file.read_bytes()[:1000])  # truncated
    (root / "step-6" / files.TRAIN_STATE).unlink()  # died before the last file
    (root / "step-4" / files.SAMPLER).unlink()
    info, skipped = files.latest_checkpoint(root)
    assert info.step == 2
    text = "\n".join(skipped)
    assert ".step-10.tmp-0: a save that never finished" in text
    assert "step-8 is corrupt: ema.safetensors has 1000 bytes" in text
    assert "step-6 is incomplete: it has no train_state.json" in text
    assert "step-4 is incomplete: sampler.json is missing" in text
    with pytest.raises(UserError, match="step-8 is corrupt"):
        files.resolve_resume_path(root / "step-8")


def test_nothing_to_resume_is_a_clear_error(tmp_path):
    (tmp_path / "run" / "checkpoints" / ".step-3.tmp-0").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        files.resolve_resume_path(tmp_path / "run")
    assert "nothing to resume" in err.value.message and "never finished" in err.value.message
    with pytest.raises(UserError, match="no such file"):
        files.resolve_resume_path(tmp_path / "nope")


def test_the_ema_is_the_official_layout_and_exports_for_inference(trained, tmp_path):
    plugin, ema = trained
    manager = CheckpointManager(tmp_path / "checkpoints", rank=0, world_size=1, keep_last=2, attempt="0")
    save(manager, 5, plugin, ema)
    step_dir = tmp_path / "checkpoints" / "step-5"
    loaded = STDiT3.from_pretrained(step_dir, use_ema=True)  # strict: every name and shape
    for name, tensor in loaded.state_dict().items():
        expected = ema.shadow.get(name, plugin.module.state_dict()[name])
        assert torch.equal(tensor, expected), name
    assert not torch.equal(ema.shadow["t_block.1.weight"], plugin.module.t_block[1].weight)  # an average, not a copy
    out = export_ema(step_dir, tmp_path / "export")
    exported = STDiT3.from_pretrained(out / "dit")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), loaded.state_dict().values()))


def test_model_and_optimizer_load_back_exactly(trained, tmp_path):
    plugin, ema = trained
    manager = CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep_last=2, attempt="0")
    save(manager, 1, plugin, ema)
    before = {k: v.clone() for k, v in plugin.module.state_dict().items()}
    moments = {k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)} for k, s in plugin.optimizer.state.items()}
    for p in plugin.module.parameters():  # disturb everything
        p.data.add_(1.0)
    for state in plugin.optimizer.state.values():
        state["exp_avg"].zero_()
    plugin.load(tmp_path / "c" / "step-1" / files.DCP_DIR)
    assert all(torch.equal(before[k], v) for k, v in plugin.module.state_dict().items())
    for key, state in plugin.optimizer.state.items():
        assert all(torch.equal(moments[key][n], state[n]) for n in moments[key])


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(5)
    state = capture_rng({"train": generator})
    expected = (torch.rand(3), np.random.rand(2), random.random(), torch.rand(2, generator=generator))
    torch.manual_seed(123), np.random.seed(1), random.seed(2), generator.manual_seed(9)
    restore_rng(state, {"train": generator})
    again = (torch.rand(3), np.random.rand(2), random.random(), torch.rand(2, generator=generator))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])


def test_colossalai_plugin_without_the_extra_says_how_to_get_it():
    import importlib.util

    from opensora_core.training.parallel import build_plugin

    if importlib.util.find_spec("colossalai") is not None:
        pytest.skip("colossalai is installed here")
    with pytest.raises(UserError) as err:
        build_plugin("colossalai-zero2", torch.device("cpu"), dtype="bf16", grad_clip=1.0)
    assert "needs ColossalAI" in err.value.message and "clusterkit[colossalai]" in err.value.hint
