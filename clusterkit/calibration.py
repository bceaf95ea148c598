"""Planner calibration: what ``clusterkit bench infer`` measured, against what the cost model
predicted for the same configuration, kept where the project's runs live.

A ``Calibration`` holds, for one model preset, the measured mean seconds of the four stages of
one video (text encoding, one denoising step, VAE decode, writing the file), the cost model's
prediction of the same quantities for the bench's own configuration (request, layout and
settings on that node), the bench run, when it finished and the device it really ran on.
``clusterkit plan`` scales the model's terms by measured / predicted (``costmodel.Timing.calibrated``).

Where a calibration applies (``scope``) follows from what was measured, never from the
inventory alone:

- ``gpu-model``: the bench ran on a GPU of the model nodes.yaml gives the node (the device's
  NVML/torch name matches the catalog key). The figure is that GPU model's: it applies to every
  node with that GPU model.
- ``node``: the bench ran on something else: a CPU (no GPU visible to the job, e.g. the local
  executor on a machine without one, or a simulated test node), or a GPU other than the
  inventory's. That says nothing about the inventory's GPU model, only about where this node's
  jobs run, so it applies to the benched node alone, labelled with the device it measured.

For a node, the newest calibration measured on that node wins; without one, the newest
``gpu-model`` calibration of its GPU model. Records live in the run registry
(``<runs dir>/registry.sqlite``, table ``calibrations``, one row per bench run, one transaction
each). Torch-free; reading costs one SQLite query (``clusterkit plan`` reads it on every call).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError

SCOPES = ("gpu-model", "node")
STAGES = ("text_s", "step_s", "decode_s", "write_s")
"""Measured per video: text encoding, one denoising step, VAE decode, writing the file. The cost
model's matching terms: text, denoising / steps, vae, fixed (set-up and writing)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    run_id      TEXT PRIMARY KEY,
    preset      TEXT NOT NULL,      -- model preset benched (tiny, opensora-v1.2)
    scope       TEXT NOT NULL,      -- gpu-model | node
    gpu_model   TEXT NOT NULL,      -- catalog key of the benched node's GPU (nodes.yaml)
    node        TEXT NOT NULL,      -- the benched node
    created_at  REAL NOT NULL,      -- when the bench finished (epoch seconds)
    record      TEXT NOT NULL       -- the Calibration as JSON
);
"""


@dataclass(frozen=True)
class Calibration:
    """One bench's measured stage times against the cost model's, and where they apply."""

    preset: str
    node: str
    """The benched node."""
    gpu_model: str
    """Catalog key of the benched node's GPU in nodes.yaml (what the prediction was made for)."""
    scope: str
    """``gpu-model`` (every node with ``gpu_model``) or ``node`` (``node`` only); see the module doc."""
    device: str
    """The torch device the bench computed on: "cuda:0", or "cpu" when the job had no GPU."""
    device_name: str
    """What the device calls itself: the NVML/CUDA name, or "cpu (<machine>)"."""
    run_id: str
    created_at: float
    """When the bench finished (epoch seconds); the newest record wins."""
    measured: dict
    """Mean seconds over the eval iterations: ``text_s``, ``step_s``, ``decode_s``, ``write_s``."""
    predicted: dict
    """The cost model's seconds for the bench's configuration on ``gpu_model``, same keys."""
    executor: str = ""
    host: str = ""
    """The host the job ran on (a CPU figure describes that machine)."""
    bench: dict = field(default_factory=dict)
    """The configuration benched: resolution, frames, aspect ratio, steps, layout, settings."""

    def __post_init__(self) -> None:
        for name in ("preset", "node", "gpu_model", "device", "device_name", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise UserError(f"calibration {name} {value!r} must be a non-empty string")
        if self.scope not in SCOPES:
            raise InvalidChoice("calibration scope", self.scope, SCOPES)
        _check_number("created_at", self.created_at)
        for what, stages in (("measured", self.measured), ("predicted", self.predicted)):
            if set(stages) != set(STAGES):
                raise UserError(f"calibration {what} has stages {sorted(stages)}; expected {list(STAGES)}")
            for stage in STAGES:
                _check_number(f"{what} {stage}", stages[stage])
                if stages[stage] <= 0:
                    raise UserError(f"calibration {what} {stage} {stages[stage]!r} must be > 0 seconds")

    def ratio(self, stage: str) -> float:
        """Measured / predicted seconds of ``stage`` (one of ``STAGES``)."""
        return self.measured[stage] / self.predicted[stage]

    @property
    def ratios(self) -> dict:
        return {stage: self.ratio(stage) for stage in STAGES}

    def applies_to(self, node: str, gpu_model: str) -> bool:
        """Whether this calibration speaks for ``node`` (whose nodes.yaml GPU is ``gpu_model``)."""
        if self.scope == "node":
            return node == self.node
        return gpu_model == self.gpu_model

    @property
    def when(self) -> str:
        """When the bench finished, "YYYY-MM-DD HH:MM" local time (run ids use local time too)."""
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created_at))

    @property
    def source(self) -> str:
        """One line: which bench, when, on what. E.g. "bench run R (2026-01-02 10:00) on worker-5,
        tiny, measured on cpu (x86_64) of host vm"."""
        device = self.device_name + (f" of host {self.host}" if self.device == "cpu" and self.host else "")
        return f"bench run {self.run_id} ({self.when}) on {self.node}, {self.preset}, measured on {device}"

    def to_dict(self) -> dict:
        """Every field plus the ratios, the time as text and the one-line source."""
        return {**asdict(self), "ratios": {k: round(v, 6) for k, v in self.ratios.items()}, "when": self.when,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """The record ``to_dict`` wrote (derived keys are recomputed, not read)."""
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})


def pick(calibrations: Iterable[Calibration], node: str, gpu_model: str) -> Calibration | None:
    """The calibration that speaks for ``node``: its own newest bench, else the newest of its GPU model."""
    found = [c for c in calibrations if c.applies_to(node, gpu_model)]
    own = [c for c in found if c.node == node]
    pool = own or found
    return max(pool, key=lambda c: (c.created_at, c.run_id)) if pool else None


class CalibrationStore:
    """The ``calibrations`` table of the run registry (``<runs dir>/registry.sqlite``)."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = Path(runs_dir) / "registry.sqlite"

    def add(self, calibration: Calibration) -> None:
        """Store one bench's calibration (one transaction; a bench run is stored once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            c = calibration
            conn.execute("INSERT OR REPLACE INTO calibrations VALUES (?,?,?,?,?,?,?)",
                         (c.run_id, c.preset, c.scope, c.gpu_model, c.node, c.created_at,
                          json.dumps(c.to_dict(), default=str)))

    def all(self, preset: str | None = None) -> list[Calibration]:
        """Every stored calibration (of ``preset``), newest first; none when nothing was benched yet."""
        if not self.path.exists():
            return []  # plan must not create the registry
        query, args = "SELECT record FROM calibrations", ()
        if preset is not None:
            query, args = query + " WHERE preset=?", (preset,)
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                rows = conn.execute(query + " ORDER BY created_at DESC, run_id DESC", args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return [Calibration.from_dict(json.loads(row[0])) for row in rows]


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"calibration {name} {value!r} must be a finite number")
