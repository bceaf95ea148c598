"""``LaunchSpec``: everything needed to start one torchrun job on one or more nodes.

It is frozen, JSON round-trippable (it travels to the nodes as ``spec.json``) and
validated on construction, so a bad spec fails on the submit host, never on a node.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError
from clusterkit.launch.ports import DEFAULT_PORT_RANGE, validate_range

EXECUTORS = ("local", "slurm")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class NodeSlot:
    """One node of the job as the inventory describes it."""

    name: str
    hostname: str
    gpu_count: int
    partition: str | None = None
    gres_type: str | None = None  # set only when nodes.yaml names it explicitly
    nccl_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchSpec:
    run_id: str
    kind: str  # "collective", "infer", "train", ...
    nodes: tuple[NodeSlot, ...]
    gpus_per_node: int
    entry: str  # python module run by every rank
    args: tuple[str, ...] = ()
    executor: str = "local"
    base_profile: str = "default"  # the command's default NCCL profile
    nccl_profile: str | None = None  # --nccl-profile (wins over node overrides)
    env: dict[str, str] = field(default_factory=dict)  # --env KEY=VALUE (wins over everything)
    time_limit_min: int = 60
    cpus_per_task: int | None = None
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    rdzv_timeout_s: int = 300
    procs_per_node: int | None = None  # ranks per node; default one per GPU (probes use 1)
    # Slurm: times the job is requeued after reaching its time limit; it checkpoints on SIGUSR2 first
    # (submitit's max_num_timeout). 0: USR2 is not handled and the job is never requeued.
    requeue: int = 0
    signal_delay_s: int = 120  # seconds before the time limit Slurm sends SIGUSR2

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.run_id):
            raise UserError(f"run id {self.run_id!r} must match {_SAFE_NAME.pattern}")
        if not _SAFE_NAME.match(self.kind):
            raise UserError(f"job kind {self.kind!r} must match {_SAFE_NAME.pattern}")
        if self.executor not in EXECUTORS:
            raise InvalidChoice("executor", self.executor, EXECUTORS)
        if not self.nodes:
            raise UserError("a job needs at least one node")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise UserError(f"node listed twice in {','.join(names)}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise UserError(f"--gpus-per-node {self.gpus_per_node!r} must be a positive integer")
        for node in self.nodes:
            if self.gpus_per_node > node.gpu_count:
                raise UserError(
                    f"--gpus-per-node {self.gpus_per_node} is more than {node.name} has ({node.gpu_count} GPUs)",
                    hint=f"use --gpus-per-node {min(n.gpu_count for n in self.nodes)} or fewer",
                )
        if self.procs_per_node is not None and (not isinstance(self.procs_per_node, int) or self.procs_per_node < 1):
            raise UserError(f"processes per node {self.procs_per_node!r} must be a positive integer")
        if not _MODULE.match(self.entry):
            raise UserError(f"entry {self.entry!r} is not a python module path")
        if self.time_limit_min < 1:
            raise UserError(f"time limit {self.time_limit_min} min must be at least 1")
        if isinstance(self.requeue, bool) or not isinstance(self.requeue, int) or self.requeue < 0:
            raise UserError(f"requeue {self.requeue!r} must be a non-negative integer")
        if not isinstance(self.signal_delay_s, int) or not 1 <= self.signal_delay_s < self.time_limit_min * 60:
            raise UserError(
                f"signal delay {self.signal_delay_s!r}s must be at least 1 and shorter than the time limit "
                f"({self.time_limit_min} min): Slurm would send the checkpoint signal as soon as the job starts",
                hint=f"raise the time limit above {self.signal_delay_s // 60 + 1} min")
        validate_range(self.port_range)
        partitions = {n.partition for n in self.nodes}
        if self.executor == "slurm" and len(partitions) > 1:
            raise UserError(
                f"nodes {','.join(names)} are in different Slurm partitions ({', '.join(sorted(map(str, partitions)))}); "
                "one job runs in one partition"
            )

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def nproc_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["port_range"] = list(self.port_range)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> LaunchSpec:
        data = dict(data)
        data["nodes"] = tuple(NodeSlot(**n) for n in data["nodes"])
        data["args"] = tuple(data.get("args", ()))
        data["port_range"] = tuple(data.get("port_range", DEFAULT_PORT_RANGE))
        return cls(**data)

    def write(self, path: Path) -> None:
        from clusterkit.launch.records import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: Path) -> LaunchSpec:
        return cls.from_dict(json.loads(path.read_text()))


def node_slots(inventory, names: list[str] | str) -> tuple[NodeSlot, ...]:
    """Inventory nodes -> NodeSlots (explicit GRES type only when nodes.yaml sets it)."""
    return tuple(
        NodeSlot(
            name=node.name,
            hostname=node.hostname,
            gpu_count=node.gpu.count,
            partition=node.slurm.partition,
            gres_type=node.slurm.gres_type,
            nccl_env=dict(node.nccl_env),
        )
        for node in inventory.select(names)
    )
