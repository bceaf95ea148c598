"""Process groups of a ``ParallelLayout`` and a communicator that counts the bytes each rank sends.

``build_context(layout, rank, device)`` creates the SP groups, the CFG pairs and the replica
groups (every rank calls ``new_group`` for every group, in the same order, as torch requires)
and returns this rank's ``ParallelContext``. Groups of one rank get no process group: their
collectives are the identity, so a 1-rank layout needs no ``torch.distributed`` at all.

Every collective goes through ``Comm``, which adds the bytes this rank sends to a
``ByteCounter`` under a kind ("attention", "gather", "cfg", "text", "decode"): the benchmark
compares those counts with ``opensora_core.parallel.volume``'s formula. What counts as sent:
an all-to-all keeps 1/n of its buffer local and sends the rest; an all-gather sends this rank's
part to the n-1 others; a broadcast sends the tensor to n-1 ranks (counted on the source); a
gather sends this rank's part to the destination (counted on every other rank).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from opensora_core.parallel.layout import ParallelLayout


@dataclass
class ByteCounter:
    """Bytes sent, calls made and seconds spent in collectives by this rank, per kind of traffic.

    The seconds are host wall time around each call: the whole collective with gloo (blocking),
    only the enqueue with NCCL (asynchronous), so they are meaningful on CPU only.
    """

    bytes: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    seconds: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, kind: str, nbytes: float) -> None:
        self.bytes[kind] += nbytes
        self.calls[kind] += 1

    @contextmanager
    def timed(self, kind: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - began

    def snapshot(self) -> dict:
        return {"bytes": dict(self.bytes), "calls": dict(self.calls), "seconds": dict(self.seconds)}

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()
        self.seconds.clear()


@dataclass
class Comm:
    """One process group seen from this rank (``group`` None: a group of one, no communication)."""

    group: object | None
    size: int
    rank: int
    ranks: tuple[int, ...]
    counter: ByteCounter

    def all_to_all(self, send: torch.Tensor, kind: str) -> torch.Tensor:
        """``send`` [size, ...]: slice i goes to group rank i; returns [size, ...] where slice i came from rank i."""
        if self.size == 1:
            return send
        assert send.shape[0] == self.size, (send.shape, self.size)
        send = send.contiguous()
        recv = torch.empty_like(send)
        with self.counter.timed(kind):
            dist.all_to_all_single(recv, send, group=self.group)
        self.counter.add(kind, _nbytes(send) * (self.size - 1) / self.size)
        return recv

    def all_gather(self, tensor: torch.Tensor, kind: str) -> torch.Tensor:
        """[size, *tensor.shape]: every rank's ``tensor``, in group-rank order."""
        if self.size == 1:
            return tensor[None]
        tensor = tensor.contiguous()
        out = torch.empty((self.size, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        with self.counter.timed(kind):
            dist.all_gather_into_tensor(out, tensor[None], group=self.group)
        self.counter.add(kind, _nbytes(tensor) * (self.size - 1))
        return out

    def broadcast(self, tensor: torch.Tensor, src: int, kind: str) -> torch.Tensor:
        """``tensor`` of group rank ``src`` on every rank (in place; returned for convenience)."""
        if self.size == 1:
            return tensor
        with self.counter.timed(kind):
            dist.broadcast(tensor, src=self.ranks[src], group=self.group)
        if self.rank == src:
            self.counter.add(kind, _nbytes(tensor) * (self.size - 1))
        return tensor

    def gather(self, tensor: torch.Tensor, kind: str) -> torch.Tensor | None:
        """[size, *tensor.shape] on group rank 0 (every rank's ``tensor``, same shape), None elsewhere."""
        if self.size == 1:
            return tensor[None]
        tensor = tensor.contiguous()
        out = None
        if self.rank == 0:
            out = torch.empty((self.size, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        with self.counter.timed(kind):
            dist.gather(tensor, list(out.unbind(0)) if out is not None else None, dst=self.ranks[0], group=self.group)
        if self.rank != 0:
            self.counter.add(kind, _nbytes(tensor))
        return out

    def gather_object(self, obj: object) -> list | None:
        """Every rank's picklable ``obj`` on group rank 0 (a list in group-rank order), None elsewhere."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=self.ranks[0], group=self.group)
        return out


@dataclass
class ParallelContext:
    """This rank's place in the layout and its communicators."""

    layout: ParallelLayout
    rank: int
    device: torch.device
    sp: Comm
    cfg: Comm
    group: Comm
    """The replica group: every rank making the same videos (cfg x sp ranks)."""
    world: Comm
    counter: ByteCounter

    @property
    def replica(self) -> int:
        return self.layout.coordinates(self.rank)[0]

    @property
    def leader(self) -> bool:
        """True on the first rank of the replica group: it encodes text and writes the videos."""
        return self.group.rank == 0


def build_context(layout: ParallelLayout, rank: int, device: torch.device,
                  counter: ByteCounter | None = None) -> ParallelContext:
    """Create the layout's process groups (collective: every rank of the world must call this)."""
    counter = counter or ByteCounter()
    if layout.world_size > 1 and not dist.is_initialized():
        raise RuntimeError("build_context needs torch.distributed initialised for a layout of several ranks")
    comms = {}
    for name, groups in (("sp", layout.sp_groups()), ("cfg", layout.cfg_groups()),
                         ("group", layout.replica_groups()), ("world", [list(range(layout.world_size))])):
        comms[name] = _comm_for(groups, rank, counter, whole_world=name == "world")
    return ParallelContext(layout, rank, device, comms["sp"], comms["cfg"], comms["group"], comms["world"], counter)


def single_process_context(device: torch.device, layout: ParallelLayout | None = None) -> ParallelContext:
    """The context of a 1-rank ``layout`` (no process group)."""
    layout = layout or ParallelLayout()
    if layout.world_size != 1:
        raise ValueError(f"a single process cannot run {layout.describe()}")
    return build_context(layout, 0, device)


def _comm_for(groups: list[list[int]], rank: int, counter: ByteCounter, *, whole_world: bool) -> Comm:
    mine = next(g for g in groups if rank in g)
    if len(mine) == 1:
        return Comm(None, 1, 0, tuple(mine), counter)
    if whole_world:
        return Comm(dist.group.WORLD, len(mine), mine.index(rank), tuple(mine), counter)
    handle = None
    for ranks in groups:  # every rank creates every group, in the same order
        created = dist.new_group(ranks)
        if rank in ranks:
            handle = created
    return Comm(handle, len(mine), mine.index(rank), tuple(mine), counter)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
