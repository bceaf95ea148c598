"""Buckets and the stateful batch sampler of Open-Sora 1.2 (seed 002; facts §6). Torch-free.

A bucket is (resolution, num_frames, aspect-ratio key). ``Bucket.assign`` puts one sample into
one, exactly as upstream's ``Bucket.get_bucket_id`` does:

1. walk the resolutions from the largest pixel count down, skipping those with
   H*W < 0.8 * S(resolution);
2. an image (T == 1) is kept with the probability of frame key 1, if the resolution has one;
3. a video takes the largest frame key k with T > k * frame_interval (strictly; key 1 excluded);
   with a ``(p_resolution, p_frames)`` pair the key is first skipped with probability 1 - p_frames;
4. it is then kept with probability p (p_resolution for a pair; >= 1 always keeps), else the walk
   goes on with the next smaller resolution; (0.0, None) therefore never keeps and pushes the
   sample down;
5. the aspect key is the closest H/W ratio of that resolution's table.

Randomness is ``numpy.random.default_rng(seed + epoch + id * num_bucket + bucket_id)`` per
(sample, entry), so an assignment depends on nothing but the seed, the epoch and the sample.

``BucketBatchSampler`` is upstream's ``VariableVideoBatchSampler``: per epoch it groups samples by
bucket, pads each bucket to a multiple of its batch size, shuffles, shuffles the order in which
buckets are visited and pads it to a multiple of the data-parallel size; step i gives rank r the
micro-batch at position i * world + r. Its position (``state_dict``) is part of every checkpoint.
Differences from upstream, on purpose: shuffling uses numpy (not torch) so the planner side stays
torch-free; a bucket smaller than half a batch is padded by cycling through it (upstream's
one-shot pad leaves such a bucket short, so it silently yields no batch); and the accesses added to
reach a multiple of the data-parallel size start the bucket over (upstream slices past its end
and hands that rank an empty batch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clusterkit.errors import UserError

from ..geometry import ASPECT_RATIOS, get_closest_ratio
from .config import BucketTable

#: A sample qualifies for a resolution when it has at least this fraction of its pixels.
APPROX = 0.8

BucketId = tuple[str, int, str]  # (resolution, num_frames, aspect-ratio key)


class Bucket:
    """The bucket table of a run: ids, criteria and the assignment of one sample."""

    def __init__(self, table: BucketTable) -> None:
        # upstream: sorted(..., key=pixels, reverse=True) -- a stable sort, so equal pixel counts keep
        # the table's order; frame keys largest first
        names = sorted(table, key=lambda res: ASPECT_RATIOS[res][0], reverse=True)
        self.probs: OrderedDict[str, OrderedDict[int, float | tuple[float, float]]] = OrderedDict()
        self.batch_sizes: dict[tuple[str, int], int | None] = {}
        self.ids: dict[tuple[str, int], int] = {}
        self.num_bucket = 0
        for res in names:
            frames = sorted(table[res], reverse=True)
            self.probs[res] = OrderedDict((k, table[res][k].keep_prob) for k in frames)
            for k in frames:
                self.batch_sizes[(res, k)] = table[res][k].batch_size
                self.ids[(res, k)] = len(self.ids)
                self.num_bucket += len(ASPECT_RATIOS[res][1])

    def assign(self, num_frames: int, height: int, width: int, frame_interval: int, seed: int) -> BucketId | None:
        """The bucket of one sample, or None (dropped for this epoch). ``seed`` is
        seed + epoch + sample_id * num_bucket, as upstream's sampler passes it."""
        pixels = height * width
        chosen = None
        for res, t_probs in self.probs.items():
            if pixels < ASPECT_RATIOS[res][0] * APPROX:
                continue
            if num_frames == 1:
                if 1 in t_probs:
                    rng = np.random.default_rng(seed + self.ids[(res, 1)])
                    if rng.random() < t_probs[1]:
                        chosen = (res, 1)
                        break
                continue  # upstream falls through a loop that can never match an image
            found = None
            for t_id, prob in t_probs.items():
                rng = np.random.default_rng(seed + self.ids[(res, t_id)])
                if isinstance(prob, tuple) and rng.random() > prob[1]:
                    continue
                if num_frames > t_id * frame_interval and t_id != 1:
                    found = (t_id, prob, rng)
                    break
            if found is None:
                continue
            t_id, prob, rng = found
            keep = prob[0] if isinstance(prob, tuple) else prob
            if keep >= 1 or rng.random() < keep:
                chosen = (res, t_id)
                break
        if chosen is None:
            return None
        res, t_id = chosen
        return res, t_id, get_closest_ratio(height, width, res)

    def probabilities(self, num_frames: int, height: int, width: int, frame_interval: int = 1) -> dict:
        """The exact chance of each (resolution, num_frames) entry for one sample, and of None
        (dropped): the same walk as ``assign`` with every draw replaced by its probability."""
        out: dict = {}
        reach = 1.0  # the chance that the walk gets to this resolution
        for res, t_probs in self.probs.items():
            if height * width < ASPECT_RATIOS[res][0] * APPROX:
                continue
            if num_frames == 1:
                if 1 in t_probs:
                    out[(res, 1)] = reach * t_probs[1]
                    reach *= 1 - t_probs[1]
                continue
            passes = 1.0  # the chance that no earlier frame key took the sample at this resolution
            goes_on = 0.0  # the chance that the walk continues at the next resolution
            for t_id, prob in t_probs.items():
                if not (num_frames > t_id * frame_interval and t_id != 1):
                    continue  # skipped or not, this key cannot take the sample
                p_frames = prob[1] if isinstance(prob, tuple) else 1.0
                keep = min(prob[0] if isinstance(prob, tuple) else prob, 1.0)
                taken = passes * p_frames
                out[(res, t_id)] = reach * taken * keep
                goes_on += taken * (1 - keep)
                passes *= 1 - p_frames
            reach *= goes_on + passes
        out[None] = max(0.0, 1.0 - sum(v for k, v in out.items() if k is not None))
        return {k: v for k, v in out.items() if v > 0 or k is None}

    def thw(self, bucket: BucketId) -> tuple[int, int, int]:
        """(num_frames, height, width) every sample of ``bucket`` is cropped to."""
        res, frames, ar = bucket
        height, width = ASPECT_RATIOS[res][1][ar]
        return frames, height, width

    def batch_size(self, bucket: BucketId) -> int:
        size = self.batch_sizes[(bucket[0], bucket[1])]
        assert size is not None, f"disabled bucket {bucket} was assigned a sample"
        return size

    def __len__(self) -> int:
        return self.num_bucket


@dataclass(frozen=True)
class SampleKey:
    """What the sampler hands the dataset for one sample: the row, the bucket's size, the epoch."""

    index: int
    num_frames: int
    height: int
    width: int
    epoch: int


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches: ``accesses[i]`` is the (bucket, [sample ids]) of global micro-batch i."""

    epoch: int
    accesses: tuple[tuple[BucketId, tuple[int, ...]], ...]
    num_replicas: int
    dropped: int
    """Samples no bucket kept this epoch."""
    buckets: dict
    """{bucket: number of samples assigned} (before padding)."""

    @property
    def steps(self) -> int:
        return len(self.accesses) // self.num_replicas


class BucketBatchSampler:
    """Yields, for one rank, the list of ``SampleKey`` of each step, from the current position.

    ``samples`` is a sequence of (num_frames, height, width) per sample id (the dataset's rows).
    """

    def __init__(
        self,
        samples: Sequence[tuple[int, int, int]],
        bucket: Bucket,
        *,
        num_replicas: int,
        rank: int,
        seed: int,
        frame_interval: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.samples = list(samples)
        self.bucket = bucket
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.frame_interval = frame_interval
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_step = 0  # steps of this epoch already consumed
        self._plan: EpochPlan | None = None

    # ------------------------------------------------------------------ the plan of an epoch
    def group_by_bucket(self, epoch: int) -> OrderedDict[BucketId, list[int]]:
        groups: OrderedDict[BucketId, list[int]] = OrderedDict()
        seed = self.seed + epoch
        for sample_id, (frames, height, width) in enumerate(self.samples):
            bucket = self.bucket.assign(frames, height, width, self.frame_interval,
                                        seed + sample_id * self.bucket.num_bucket)
            if bucket is not None:
                groups.setdefault(bucket, []).append(sample_id)
        return groups

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        if self._plan is not None and self._plan.epoch == epoch:
            return self._plan
        groups = self.group_by_bucket(epoch)
        rng = np.random.default_rng(self.seed + epoch)
        batches: OrderedDict[BucketId, list[int]] = OrderedDict()
        counts = {b: len(ids) for b, ids in groups.items()}
        for bucket, ids in groups.items():
            size = self.bucket.batch_size(bucket)
            remainder = len(ids) % size
            if remainder:
                if self.drop_last:
                    ids = ids[: len(ids) - remainder]
                else:
                    ids = ids + [ids[i % len(ids)] for i in range(size - remainder)]
            if self.shuffle and ids:
                ids = [ids[i] for i in rng.permutation(len(ids))]
            batches[bucket] = ids
        order = [bucket for bucket, ids in batches.items() for _ in range(len(ids) // self.bucket.batch_size(bucket))]
        if self.shuffle and order:
            order = [order[i] for i in rng.permutation(len(order))]
        remainder = len(order) % self.num_replicas
        if remainder:
            order = order[: len(order) - remainder] if self.drop_last else order + order[: self.num_replicas - remainder]
        consumed: dict[BucketId, int] = {}
        accesses = []
        for bucket in order:
            size = self.bucket.batch_size(bucket)
            start = consumed.get(bucket, 0) % len(batches[bucket])  # a padded order revisits a bucket
            accesses.append((bucket, tuple(batches[bucket][start:start + size])))
            consumed[bucket] = start + size
        dropped = len(self.samples) - sum(counts.values())
        self._plan = EpochPlan(epoch, tuple(accesses), self.num_replicas, dropped, counts)
        return self._plan

    # ------------------------------------------------------------------ iteration and state
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_step = 0
        self.epoch = epoch

    def steps_per_epoch(self) -> int:
        return self.plan().steps

    def batches(self) -> Iterator[list[SampleKey]]:
        """This rank's micro-batches from ``start_step`` to the end of the epoch."""
        plan = self.plan()
        for step in range(self.start_step, plan.steps):
            bucket, ids = plan.accesses[step * self.num_replicas + self.rank]
            frames, height, width = self.bucket.thw(bucket)
            yield [SampleKey(i, frames, height, width, self.epoch) for i in ids]

    __iter__ = batches

    def state_dict(self, steps_in_epoch: int) -> dict:
        """The position after ``steps_in_epoch`` steps of the current epoch (upstream's format plus
        the data-parallel size it was counted with)."""
        return {"seed": self.seed, "epoch": self.epoch,
                "last_micro_batch_access_index": steps_in_epoch * self.num_replicas,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` stopped. The data-parallel size must be the one it was saved
        with: the position counts micro-batches of the whole world (see ``reset_position``)."""
        if state.get("seed") != self.seed:
            raise UserError(f"the checkpoint's sampler was seeded with {state.get('seed')} but this run uses seed "
                            f"{self.seed}", hint="resume with the same seed")
        saved = state.get("num_replicas")
        if saved != self.num_replicas:
            raise UserError(
                f"the checkpoint was written with data-parallel size {saved} and this run has {self.num_replicas}; "
                "the sampler position cannot carry over",
                hint="resume with the same number of nodes and GPUs, or pass --allow-dp-change to restart the "
                     "sampler at the start of the checkpoint's epoch (weights, optimizer and step are kept)")
        self.set_epoch(int(state["epoch"]))
        index = int(state["last_micro_batch_access_index"])
        if index % self.num_replicas:
            raise UserError(f"sampler position {index} is not a multiple of the data-parallel size {self.num_replicas}")
        self.start_step = index // self.num_replicas

    def reset_position(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (a deliberate change of data-parallel size)."""
        self.set_epoch(epoch)
        self.start_step = 0


def explain_unassigned(bucket: Bucket, samples: Sequence[tuple[int, int, int]], frame_interval: int,
                       dropped: int) -> str:
    """Why ``dropped`` samples fit no bucket this epoch, counted by reason: too small for every
    resolution, images with no image entry, videos too short for every frame key, and the rest,
    which only the keep probabilities turned away."""
    counts = {"too small": 0, "images without an image bucket": 0, "too short": 0, "dropped by keep_prob": 0}
    shortest = None
    for frames, height, width in samples:
        resolutions = [res for res in bucket.probs if height * width >= ASPECT_RATIOS[res][0] * APPROX]
        if not resolutions:
            counts["too small"] += 1
            continue
        keys = [k for res in resolutions for k, p in bucket.probs[res].items()
                if bucket.batch_sizes[(res, k)] is not None]
        if frames == 1:
            if 1 not in keys:
                counts["images without an image bucket"] += 1
            continue
        video_keys = [k for k in keys if k != 1]
        if not any(frames > k * frame_interval for k in video_keys):
            counts["too short"] += 1
            if video_keys:
                need = min(video_keys) * frame_interval
                shortest = need if shortest is None else min(shortest, need)
    counts["dropped by keep_prob"] = max(0, dropped - sum(counts.values()))
    parts = [f"{n} {why}" for why, n in counts.items() if n]
    if counts["too short"] and shortest is not None:
        parts = [p + f" (the smallest video bucket needs more than {shortest} frames)" if "too short" in p else p
                 for p in parts]
    smallest = min(bucket.probs, key=lambda res: ASPECT_RATIOS[res][0])
    if counts["too small"]:
        parts = [p + f" (below 80% of {smallest}'s {ASPECT_RATIOS[smallest][0]} pixels)" if "too small" in p else p
                 for p in parts]
    return "; ".join(parts) or "none"
