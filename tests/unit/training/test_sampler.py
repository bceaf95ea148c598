"""The stateful bucket batch sampler: what an epoch holds, how ranks split it, and that its position
(saved in checkpoints) continues exactly."""

from __future__ import annotations

import pytest

from clusterkit.errors import UserError
from opensora_core.training.buckets import Bucket, BucketBatchSampler
from opensora_core.training.config import parse_bucket_config

CONFIG = {"144p": {1: (1.0, 3), 17: (1.0, 2), 34: ((1.0, 0.5), 1)}, "240p": {17: (0.5, 2)}}
# 13 samples: images, short and long videos, two resolutions, one too short for any bucket
SAMPLES = [(1, 144, 256), (24, 144, 256), (40, 144, 256), (1, 160, 240), (20, 240, 426), (50, 240, 426),
           (10, 144, 256), (30, 144, 256), (1, 144, 256), (60, 144, 256), (25, 144, 256), (18, 256, 144),
           (1, 240, 426)]


def sampler(rank: int = 0, world: int = 2, seed: int = 7, samples=SAMPLES) -> BucketBatchSampler:
    return BucketBatchSampler(samples, Bucket(parse_bucket_config(CONFIG)), num_replicas=world, rank=rank, seed=seed)


def all_steps(world: int, epoch: int = 0, seed: int = 7) -> list[list[list]]:
    """steps[i][r] = rank r's batch at step i."""
    per_rank = []
    for rank in range(world):
        s = sampler(rank, world, seed)
        s.set_epoch(epoch)
        per_rank.append(list(s))
    assert len({len(b) for b in per_rank}) == 1, "every rank must get the same number of steps"
    return [list(step) for step in zip(*per_rank)]


def test_every_assigned_sample_appears_and_batches_have_their_buckets_size():
    s = sampler()
    plan = s.plan(0)
    assigned = sum(plan.buckets.values())
    assert plan.dropped == len(SAMPLES) - assigned and plan.dropped >= 1  # the 10-frame video fits nothing
    seen = set()
    for bucket_id, ids in plan.accesses:
        assert len(ids) == s.bucket.batch_size(bucket_id)
        seen.update(ids)
    groups = s.group_by_bucket(0)
    assert seen == {i for ids in groups.values() for i in ids}
    assert 6 not in seen  # (10 frames) shorter than every video key


def test_ranks_split_each_step_and_keys_carry_the_bucket_size():
    steps = all_steps(world=2)
    for step in steps:
        for batch in step:
            assert len({(k.num_frames, k.height, k.width) for k in batch}) == 1
            assert all(k.epoch == 0 for k in batch)
    s = sampler()
    assert len(steps) == s.steps_per_epoch() == len(s.plan(0).accesses) // 2


def test_same_seed_same_epoch_same_batches_and_another_epoch_reshuffles():
    assert all_steps(2) == all_steps(2)
    assert all_steps(2, epoch=0) != all_steps(2, epoch=1)
    assert all_steps(2, seed=7) != all_steps(2, seed=8)


def test_resuming_from_a_position_gives_the_remaining_batches_exactly():
    full = [list(sampler(rank=r)) for r in range(2)]
    for done in range(len(full[0]) + 1):
        for rank in range(2):
            original = sampler(rank=rank)
            state = original.state_dict(steps_in_epoch=done)
            assert state == {"seed": 7, "epoch": 0, "last_micro_batch_access_index": done * 2, "num_replicas": 2}
            resumed = sampler(rank=rank)
            resumed.load_state_dict(state)
            assert list(resumed) == full[rank][done:]


def test_world_padding_reuses_batches_instead_of_handing_out_empty_ones():
    for world in (1, 2, 3, 5, 8):
        for step in all_steps(world):
            assert all(len(batch) > 0 for batch in step)


def test_a_bucket_smaller_than_half_a_batch_still_yields_a_full_batch():
    s = BucketBatchSampler([(20, 144, 256)], Bucket(parse_bucket_config({"144p": {17: (1.0, 4)}})),
                           num_replicas=1, rank=0, seed=0)
    [batch] = list(s)
    assert [k.index for k in batch] == [0, 0, 0, 0]


def test_a_different_data_parallel_size_is_refused_unless_the_position_is_reset():
    state = sampler(world=2).state_dict(steps_in_epoch=3)
    other = sampler(rank=0, world=3)
    with pytest.raises(UserError) as err:
        other.load_state_dict(state)
    assert "data-parallel size 2" in err.value.message and "--allow-dp-change" in err.value.hint
    other.reset_position(epoch=state["epoch"])
    assert list(other) == list(sampler(rank=0, world=3))


def test_another_seed_is_refused():
    with pytest.raises(UserError, match="seeded with 7"):
        sampler(seed=8).load_state_dict(sampler(seed=7).state_dict(1))


def test_set_epoch_moves_to_the_start_of_the_next_epoch():
    s = sampler()
    s.load_state_dict(s.state_dict(2))
    assert s.start_step == 2
    s.set_epoch(0)
    assert s.start_step == 2  # the same epoch keeps its position
    s.set_epoch(1)
    assert s.start_step == 0
