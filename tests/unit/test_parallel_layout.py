"""``ParallelLayout`` (replicas x cfg x sp = world) and the communication-volume formula, without
any process group; and the CLI refusing an illegal layout before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opensora_core.errors import LayoutError
from opensora_core.parallel import ParallelLayout, layouts_for, legal_sp_degrees
from opensora_core.parallel.volume import effective_scheme, padded, step_volume, upstream_bytes_per_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("world, sp, cfg, replicas", [
    (1, 1, False, 1),
    (2, 2, False, 1),
    (2, 1, True, 1),
    (4, 2, True, 1),
    (6, 2, False, 3),  # six GPUs: three SP pairs
    (6, 1, True, 3),  # or three CFG pairs
    (8, 4, True, 1),
    (16, 16, False, 1),
    (16, 2, True, 4),
])
def test_legal_layouts_multiply_to_the_world(world, sp, cfg, replicas):
    layout = ParallelLayout.for_world(world, sp=sp, cfg_parallel=cfg)
    assert (layout.world_size, layout.replicas, layout.group_size) == (world, replicas, sp * (2 if cfg else 1))
    ranks = sorted(r for group in layout.sp_groups() for r in group)
    assert ranks == list(range(world))  # every rank in exactly one SP group
    assert sorted(r for g in layout.cfg_groups() for r in g) == list(range(world))
    for rank in range(world):
        assert layout.rank(*layout.coordinates(rank)) == rank


def test_rank_order_keeps_sp_groups_on_neighbouring_ranks():
    layout = ParallelLayout.for_world(8, sp=2, cfg_parallel=True)  # 2 replicas x (cfg2 x sp2)
    assert layout.sp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.cfg_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.replica_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.coordinates(6) == (1, 1, 0)
    assert layout.describe() == "8 ranks: 2 replicas x (cfg2 x sp2), dsp"


@pytest.mark.parametrize("kwargs, words", [
    (dict(world_size=6, sp=6), "--sp 6 is not valid: sequence parallelism splits the model's 16 attention heads "
                               "across the ranks, so --sp must divide 16; valid choices: 1, 2, 4, 8, 16"),
    (dict(world_size=3, sp=3), "--sp 3 is not valid"),
    (dict(world_size=12, sp=12), "valid choices: 1, 2, 4, 8, 16"),
    (dict(world_size=6, sp=4), "--gpus 6 is not a multiple of the group size 4 (sp4)"),
    (dict(world_size=6, sp=2, cfg_parallel=True), "--gpus 6 is not a multiple of the group size 4 (cfg2 x sp2)"),
    (dict(world_size=0), "--gpus 0 must be a positive integer"),
    (dict(world_size=2, sp=0), "--sp 0 must be a positive integer"),
    (dict(world_size=2, sp=2, sp_scheme="ring"), "--sp-scheme 'ring' is not valid; valid choices: dsp, ulysses"),
    (dict(world_size=8, sp=8, num_heads=4), "so --sp must divide 4; valid choices: 1, 2, 4"),
])
def test_illegal_layouts_are_typed_errors_naming_the_rule(kwargs, words):
    world = kwargs.pop("world_size")
    with pytest.raises(LayoutError) as info:
        ParallelLayout.for_world(world, **kwargs)
    assert words in info.value.message
    assert info.value.exit_code == 2


def test_a_6_way_split_hint_lists_the_legal_6_gpu_layouts():
    with pytest.raises(LayoutError) as info:
        ParallelLayout.for_world(6, sp=6)
    assert info.value.hint == ("legal layouts of 6 GPU(s): --gpus 6 --cfg-parallel (3 x cfg2); --gpus 6 --sp 2 "
                               "(3 x sp2); --gpus 6 (6 x 1 GPU each)")


def test_legal_degrees_and_layouts_of_a_world():
    assert legal_sp_degrees(16) == (1, 2, 4, 8, 16) and legal_sp_degrees(4) == (1, 2, 4)
    assert [(layout.replicas, layout.cfg, layout.sp) for layout in layouts_for(8)] == [
        (1, 2, 4), (1, 1, 8), (2, 2, 2), (2, 1, 4), (4, 2, 1), (4, 1, 2), (8, 1, 1)]
    assert all(layout.sp != 3 for layout in layouts_for(6)) and len(layouts_for(6)) == 3


def test_padding_and_the_dsp_fallback():
    assert padded(405, 2) == 406 and padded(405, 4) == 408 and padded(3600, 4) == 3600
    assert effective_scheme("dsp", 4, 15) == "dsp"
    assert effective_scheme("dsp", 4, 1) == "ulysses"  # an image has fewer frames than ranks
    assert effective_scheme("ulysses", 2, 15) == "ulysses"


def test_volume_formula_by_scheme():
    xl = dict(cfg=1, videos=1, frames=30, spatial_tokens=3600, hidden=1152, depth=28, out_dim=32,
              latent_elements=4 * 30 * 90 * 160, elem_bytes=2)
    ulysses, dsp = step_volume(scheme="ulysses", sp=4, **xl), step_volume(scheme="dsp", sp=4, **xl)
    # DSP: 2 hidden-sized tensors per block on 30 frames padded to 32; ulysses: 4 on 30 frames
    assert dsp.attention / ulysses.attention == pytest.approx(2 * 32 / (4 * 30))
    assert dsp.gather == ulysses.gather == 3 * 2 * 30 * 900 * 32 * 2
    assert (dsp.alltoalls, ulysses.alltoalls, dsp.cfg) == (56, 56, 0.0)
    # the upstream reference (performance_facts §3.5): 470 GB per rank per 720p 4s video at sp 4
    upstream = upstream_bytes_per_video(sp=4, samples=2, tokens=108_000, hidden=1152, depth=28, steps=30)
    assert upstream / 1e9 == pytest.approx(470, rel=0.01)
    assert 30 * ulysses.attention == pytest.approx(upstream * 4 / 6)
    cfg = step_volume(scheme="dsp", sp=1, **{**xl, "cfg": 2})
    assert cfg.total == cfg.cfg == 4 * 30 * 90 * 160 * 4  # one fp32 velocity to the other CFG rank


def test_cli_refuses_sp_6_on_a_6_gpu_node_in_under_a_second(tmp_path):
    env = {**os.environ, "CLUSTERKIT_RUNS_DIR": str(tmp_path / "runs"),
           "CLUSTERKIT_INVENTORY": str(ROOT / "nodes.yaml")}
    env.pop("SLURM_CONF", None)
    argv = [sys.executable, "-m", "clusterkit", "submit", "infer", "--frames", "4s", "--res", "720p",
            "--prompt", "a cat", "--node", "worker-1", "--gpus", "6", "--sp", "6", "--json"]
    began = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - began
    assert proc.returncode == 2, proc.stderr
    assert '"kind": "user_error"' in proc.stdout and "--sp must divide 16" in proc.stdout
    assert "valid choices: 1, 2, 4, 8, 16" in proc.stdout and "--gpus 6 --sp 2 (3 x sp2)" in proc.stdout
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted
    assert elapsed < 1.0, f"{elapsed:.2f}s (python start-up included)"
