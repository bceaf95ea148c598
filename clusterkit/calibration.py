"""Planner calibration: what ``clusterkit bench infer`` measured, against what the cost model
predicted for the same configuration, kept where the project's runs live.

A ``Calibration`` holds, for one model preset, the measured mean seconds of the four stages of
one video (text encoding, one denoising step, VAE decode, writing the file), the cost model's
prediction of the same quantities for the bench's own configuration (request, layout and
settings on that node), the bench run, when it finished and the device it really ran on.
``clusterkit plan`` scales the model's terms by measured / predicted (``costmodel.Timing.calibrated``).

Where a calibration applies follows from what was measured and where, never from the inventory
alone.

``executor``: a bench run through the local executor ran on this host, whatever node it was asked
for, so it describes this host: it applies only to plans whose ranks run here too (``clusterkit
plan --executor local``, ``submit``/``bench``/sweeps with the local executor), and there to every
node alike, since every local job runs here; a Slurm plan shows it as a note instead. A bench run
through Slurm ran on the node and applies to Slurm plans only (a local plan's ranks run here).

``scope``, within that:

- ``gpu-model``: the bench ran on a GPU of the model nodes.yaml gives the node (the device's
  NVML/torch name matches the catalog key). The figure is that GPU model's: it applies to every
  node with that GPU model.
- ``node``: the bench ran on something else: a CPU (no GPU visible to the job, e.g. a simulated
  test node), or a GPU other than the inventory's. That says nothing about the inventory's GPU
  model, only about the benched node, so it applies to that node alone, labelled with the device
  it measured.

For a node, its own benches win over those of its GPU model; among them the one measured nearest
the planned configuration (fewest of resolution, frames and layout differing; the layout includes
the SP scheme when there is SP), then the newest.
Records live in the run registry (``<runs dir>/registry.sqlite``, table ``calibrations``, one row
per bench run, one transaction each); a row that cannot be read is skipped with a note. Torch-free;
reading costs one SQLite query (``clusterkit plan`` reads it on every call).
"""

from __future__ import annotations

import json
import math
import socket
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

from clusterkit.errors import InvalidChoice, UserError
from opensora_core import geometry
from opensora_core.parallel.layout import DEFAULT_SP_SCHEME

SCOPES = ("gpu-model", "node")
EXECUTORS = ("slurm", "local")
"""How the bench was launched: ``local`` ran on this host, ``slurm`` on the node."""
DIFFERENCES = ("resolution", "frames", "layout")
"""What may differ between the benched and the planned configuration (``Calibration.differences``)."""
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
    """How the bench ran: ``slurm`` (on the node) or ``local`` (on ``host``, whatever the node)."""
    host: str = ""
    """The host the job ran on (a local or CPU figure describes that machine)."""
    bench: dict = field(default_factory=dict)
    """The configuration benched: resolution, frames, aspect ratio, steps, layout, settings."""

    def __post_init__(self) -> None:
        for name in ("preset", "node", "gpu_model", "device", "device_name", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise UserError(f"calibration {name} {value!r} must be a non-empty string")
        if self.scope not in SCOPES:
            raise InvalidChoice("calibration scope", self.scope, SCOPES)
        if self.executor not in EXECUTORS:
            raise InvalidChoice("calibration executor", self.executor, EXECUTORS)
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

    def applies_to(self, node: str, gpu_model: str, executor: str = "slurm", host: str | None = None) -> bool:
        """Whether this calibration speaks for ``node`` (whose nodes.yaml GPU is ``gpu_model``) in a
        plan whose ranks run through ``executor`` from ``host`` (default: this machine).

        A local bench describes the machine it ran on, where every local job runs whatever node it
        names: it speaks for every node of a local plan made on that host, and for no Slurm plan. A
        Slurm bench describes a real node: it speaks for Slurm plans only (its node, or its GPU model)."""
        if (self.executor == "local") != (executor == "local"):
            return False
        if self.executor == "local":
            return not self.host or self.host == (host if host is not None else socket.gethostname())
        if self.scope == "node":
            return node == self.node
        return gpu_model == self.gpu_model

    def differences(self, target: Configuration | None) -> tuple[str, ...]:
        """Which of ``DIFFERENCES`` the benched configuration does not share with ``target`` (all of
        them when either is unknown)."""
        mine = self.configuration
        if target is None or mine is None:
            return DIFFERENCES
        out = []
        if (mine.height, mine.width) != (target.height, target.width):
            out.append("resolution")
        if mine.num_frames != target.num_frames:
            out.append("frames")
        if mine.layout != target.layout:
            out.append("layout")
        return tuple(out)

    @property
    def configuration(self) -> Configuration | None:
        """What the bench measured: its video and the layout of its replica group; None when the
        record does not say (an older record, or one without the bench's request)."""
        bench, layout = self.bench, self.bench.get("layout") or {}
        try:
            if "height" in bench and "width" in bench:
                size = (int(bench["height"]), int(bench["width"]))
            else:
                size = geometry.get_image_size(bench["resolution"], bench["aspect_ratio"])
            return Configuration(size[0], size[1], int(bench["num_frames"]), int(layout["sp"]),
                                 int(layout["cfg"]) == 2, layout.get("sp_scheme") or DEFAULT_SP_SCHEME)
        except (KeyError, TypeError, ValueError, UserError):
            return None

    @property
    def measured_at(self) -> str:
        """The benched configuration in words, e.g. "144p 9:16 17f, 1 GPU"."""
        mine = self.configuration
        if mine is None:
            return "an unrecorded configuration"
        video = " ".join(str(self.bench[k]) for k in ("resolution", "aspect_ratio") if k in self.bench)
        return f"{video or f'{mine.height}x{mine.width}'} {mine.num_frames}f, {mine.describe_layout()}"

    @property
    def when(self) -> str:
        """When the bench finished, "YYYY-MM-DD HH:MM" local time (run ids use local time too)."""
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created_at))

    @property
    def source(self) -> str:
        """One line: which bench, when, on what. E.g. "bench run R (2026-01-02 10:00) on worker-5,
        tiny, measured on cpu (x86_64) of host vm (local executor)"."""
        local = self.executor == "local" or self.device == "cpu"
        device = self.device_name + (f" of host {self.host}" if local and self.host else "")
        how = " (local executor)" if self.executor == "local" else ""
        return f"bench run {self.run_id} ({self.when}) on {self.node}, {self.preset}, measured on {device}{how}"

    def to_dict(self) -> dict:
        """Every field plus the ratios, the time as text and the one-line source."""
        return {**asdict(self), "ratios": {k: round(v, 6) for k, v in self.ratios.items()}, "when": self.when,
                "source": self.source, "measured_at": self.measured_at}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """The record ``to_dict`` wrote (derived keys are recomputed, not read)."""
        names = cls.__dataclass_fields__
        missing = [name for name, f in names.items() if name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"the record lacks {', '.join(missing)}")
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Configuration:
    """A video and the layout of one replica group: what a bench measured, or what a plan runs."""

    height: int
    width: int
    num_frames: int
    sp: int | None
    """Sequence-parallel degree; None when the plan has no layout (no candidate)."""
    cfg_parallel: bool | None
    sp_scheme: str | None = None
    """dsp | ulysses: which all-to-alls SP sends (irrelevant without SP)."""

    @property
    def layout(self) -> tuple:
        """What decides the communication: the degrees, and the scheme when there is SP."""
        return (self.sp, self.cfg_parallel, self.sp_scheme if (self.sp or 1) > 1 else None)

    def describe_layout(self) -> str:
        """E.g. "1 GPU", "sp2 (2 GPUs)", "cfg+sp4 (8 GPUs)"."""
        if self.sp is None:
            return "no layout"
        gpus = self.sp * (2 if self.cfg_parallel else 1)
        if gpus == 1:
            return "1 GPU"
        parts = [p for p in ("cfg" if self.cfg_parallel else "", f"sp{self.sp}" if self.sp > 1 else "") if p]
        return f"{'+'.join(parts)} ({gpus} GPUs)"


def pick(calibrations: Iterable[Calibration], node: str, gpu_model: str, executor: str = "slurm",
         target: Configuration | None = None) -> Calibration | None:
    """The calibration that speaks for ``node`` in a plan run through ``executor``: its own benches,
    else those of its GPU model; among them the one measured nearest ``target`` (fewest
    ``differences``), then the newest."""
    found = [c for c in calibrations if c.applies_to(node, gpu_model, executor)]
    own = [c for c in found if c.node == node]
    newest_first = sorted(own or found, key=lambda c: (c.created_at, c.run_id), reverse=True)
    return min(newest_first, key=lambda c: len(c.differences(target)), default=None)


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
        """Every readable calibration (of ``preset``), newest first (``read`` without its notes)."""
        return self.read(preset)[0]

    def read(self, preset: str | None = None) -> tuple[list[Calibration], list[str]]:
        """Every stored calibration (of ``preset``), newest first, and a note for each row that
        could not be read (skipped) or for a registry that could not be queried: one bad row must
        not stop ``plan`` or ``submit``, which then use the model alone where it would have applied.
        Empty lists when nothing was benched yet."""
        if not self.path.exists():
            return [], []  # plan must not create the registry
        query, args = "SELECT run_id, record FROM calibrations", ()
        if preset is not None:
            query, args = query + " WHERE preset=?", (preset,)
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                rows = conn.execute(query + " ORDER BY created_at DESC, run_id DESC", args).fetchall()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return [], []
            return [], [f"calibrations in {self.path} cannot be read ({exc}); planning with the cost model alone"]
        records, notes = [], []
        for run_id, record in rows:
            try:
                data = json.loads(record)
                if not isinstance(data, dict):
                    raise ValueError(f"the record is JSON {type(data).__name__}, not an object")
                records.append(Calibration.from_dict(data))
            except (ValueError, TypeError, UserError) as exc:
                message = exc.message if isinstance(exc, UserError) else str(exc)
                notes.append(f"calibration of bench run {run_id} in {self.path} skipped: {message}")
        return records, notes


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"calibration {name} {value!r} must be a finite number")
