"""Log diagnosis: read a run's logs, order every line in time, find the first error, say the fix.

``clusterkit diagnose nccl --run RUN`` / ``--log PATH...`` end here:

* ``load_run(run_dir)`` / ``load_files(paths)`` read files (the only I/O in this module,
  besides ``render``'s console): per-rank logs, node (torchrun agent) logs, submitit/Slurm
  logs, per-process NCCL debug files, ``ranks/*.json``, ``results/*.json``, ``spec.json`` and
  flight-recorder dumps in ``comm_traces/``.
* ``diagnose(logs, context)`` is pure: it parses timestamps (c10/glog, Python logging, ISO,
  Slurm), attributes each line to a rank and host, merges everything into one time-ordered
  stream, matches the catalogue (``signatures.py``), derives what no single line says
  (mixed NCCL versions, P2P hangs, each node forming its own world), picks the first root
  error and summarises the NCCL INFO lines (versions, interfaces, transports, Init COMPLETE).
* ``render(report, console)`` prints it with rich.

Lines without a timestamp (NCCL's ``host:pid:tid [dev] NCCL INFO …``, tracebacks) take the
time of the nearest earlier timestamped line of the same file. A file with no timestamp at
all (``nccl/%h.%p.log``) is placed just before the earliest timed error of the same rank:
NCCL prints its WARN before the error it returns to torch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from clusterkit.diagnose.signatures import (
    CATALOGUE,
    Signature,
    Variant,
    match_line,
    signature,
)

#: lines after a generic match (N5, X3) searched for the specific message that explains it
GENERIC_WINDOW = 8
#: continuation lines shown after a matched line ("Last error:" + the reason)
CONTINUATION_LINES = 3
#: at most this many bytes are read from one log file (the tail is what matters most)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: flight-recorder dumps larger than this are skipped
MAX_TRACE_BYTES = 256 * 1024 * 1024

# ------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LogSource:
    """One file's lines and what its name says about who wrote it."""

    name: str  # as shown in reports: relative to the run directory when there is one
    lines: tuple[str, ...]
    kind: str = "other"  # rank | node | nccl | slurm | other
    rank: int | None = None
    host: str | None = None
    pid: int | None = None
    node: str | None = None


@dataclass(frozen=True)
class RunLogs:
    """Everything ``diagnose`` reads, already loaded (build it by hand in tests)."""

    sources: tuple[LogSource, ...]
    ranks: Mapping[int, Mapping] = field(default_factory=dict)  # ranks/rank-NNN.json
    results: Mapping[str, Mapping] = field(default_factory=dict)  # results/node-<name>.json by node
    spec: Mapping | None = None  # spec.json
    flight_records: Mapping[int, Mapping] = field(default_factory=dict)  # comm_traces/rank_N, unpickled
    notes: tuple[str, ...] = ()  # what could not be read
    default_year: int = 1970  # for c10/glog timestamps, which have no year
    root: str | None = None


@dataclass(frozen=True)
class HostHardware:
    """What the inventory says about a host, for signatures that need context (N8/N9)."""

    node: str | None = None
    gpu: str | None = None  # GPU name, e.g. "NVIDIA GeForce RTX 4090"
    p2p: bool | None = None  # GPU peer-to-peer works on this host (nodes.yaml interconnect.p2p, else catalog)


@dataclass(frozen=True)
class DiagnoseContext:
    """Facts from outside the logs. ``hosts`` is keyed by short hostname and by node name."""

    expected_world_size: int | None = None
    hosts: Mapping[str, HostHardware] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    file: str
    line: int
    text: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "text": self.text}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Finding:
    """One signature seen at one place (a line, or for derived signatures the line that shows it)."""

    signature: Signature
    variant: Variant | None = None
    rank: int | None = None
    host: str | None = None
    file: str | None = None
    line: int | None = None
    time: datetime | None = None
    time_estimated: bool = False
    evidence: tuple[Evidence, ...] = ()
    detail: str = ""  # what the analysis saw, for derived signatures
    severity: str | None = None  # overrides the signature's (a derived N8 without a failure is a warning)

    @property
    def id(self) -> str:
        return self.signature.id

    @property
    def level(self) -> str:
        return self.severity or self.signature.severity

    @property
    def cause(self) -> str:
        return self.variant.cause if self.variant else self.signature.cause

    @property
    def fix(self) -> str:
        return self.variant.fix if self.variant else self.signature.fix

    @property
    def env(self) -> dict[str, str]:
        return dict(self.variant.env if self.variant and self.variant.env else self.signature.env)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else ""

    def to_dict(self) -> dict:
        return {
            "id": self.id, "title": self.signature.title, "severity": self.level,
            "variant": self.variant.name if self.variant else None,
            "rank": self.rank, "host": self.host, "file": self.file, "line": self.line,
            "time": self.time.isoformat() if self.time else None, "time_estimated": self.time_estimated,
            "cause": self.cause, "fix": self.fix, "env": self.env, "detail": self.detail,
            "evidence": [e.to_dict() for e in self.evidence],
        }


@dataclass(frozen=True)
class SignatureGroup:
    """Every finding of one signature."""

    signature: Signature
    count: int
    ranks: tuple[int, ...]
    hosts: tuple[str, ...]
    findings: tuple[Finding, ...]  # the first few, in time order

    def to_dict(self) -> dict:
        return {
            "id": self.signature.id, "title": self.signature.title, "severity": self.findings[0].level,
            "first_error_capable": self.signature.first_error, "count": self.count,
            "ranks": list(self.ranks), "hosts": list(self.hosts),
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class NcclSummary:
    """What the NCCL INFO lines say was chosen."""

    versions: Mapping[str, str]  # "rank 3" / "host:pid" -> "2.21.5+cuda12.4"
    bootstrap: Mapping[str, tuple[str, ...]]  # host -> interfaces ("eth0:10.0.0.1<0>")
    net: Mapping[str, tuple[str, ...]]  # host -> NET/IB or NET/Socket devices ("IB mlx5_0:1/IB", "Socket eth0:…")
    network: Mapping[str, str]  # host -> "IB" | "Socket" (Using network …)
    transports: Mapping[str, int]  # P2P | SHM | NET/IB | NET/Socket | … -> channel lines
    transport_details: Mapping[str, int]  # "P2P/IPC", "SHM/direct/direct", "NET/IB/0/GDRDMA" -> lines
    transports_by_host: Mapping[str, Mapping[str, int]]
    init_complete: tuple[int, ...]  # ranks that printed Init COMPLETE
    init_hosts: tuple[str, ...]  # hosts with an Init COMPLETE line whose rank is unknown
    nranks: tuple[int, ...]  # communicator sizes seen in Init lines
    env: Mapping[str, Mapping[str, str]]  # host -> NCCL_* "set by environment" values

    @property
    def empty(self) -> bool:
        return not (self.versions or self.bootstrap or self.net or self.transports or self.init_complete
                    or self.init_hosts)

    def to_dict(self) -> dict:
        return {
            "versions": dict(self.versions), "bootstrap": {h: list(v) for h, v in self.bootstrap.items()},
            "net": {h: list(v) for h, v in self.net.items()}, "network": dict(self.network),
            "transports": dict(self.transports), "transport_details": dict(self.transport_details),
            "transports_by_host": {h: dict(v) for h, v in self.transports_by_host.items()},
            "init_complete": list(self.init_complete), "init_hosts": list(self.init_hosts),
            "nranks": list(self.nranks), "env": {h: dict(v) for h, v in self.env.items()},
        }


@dataclass(frozen=True)
class RankTrace:
    """One rank's flight-recorder dump, reduced to what shows who is behind."""

    rank: int
    host: str | None
    pg_status: Mapping[str, Mapping[str, int]]  # pg id -> last_enqueued/started/completed_collective
    last_op: str | None  # profiling_name of the newest entry, e.g. "nccl:all_reduce"
    last_seq: int | None
    last_state: str | None
    nccl_version: str | None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "host": self.host, "pg_status": {k: dict(v) for k, v in self.pg_status.items()},
                "last_op": self.last_op, "last_seq": self.last_seq, "last_state": self.last_state,
                "nccl_version": self.nccl_version}


@dataclass(frozen=True)
class FlightRecorderSummary:
    ranks: tuple[RankTrace, ...]
    pg: str | None  # the process group compared (the default one when present)
    stuck_seq: int | None  # the newest collective some rank enqueued
    stuck_op: str | None
    missing_ranks: tuple[int, ...]  # ranks that never enqueued it
    behind_ranks: tuple[int, ...]  # ranks whose last completed collective is older than the others'

    def to_dict(self) -> dict:
        return {"ranks": [r.to_dict() for r in self.ranks], "pg": self.pg, "stuck_seq": self.stuck_seq,
                "stuck_op": self.stuck_op, "missing_ranks": list(self.missing_ranks),
                "behind_ranks": list(self.behind_ranks)}


@dataclass(frozen=True)
class LogReport:
    sources: tuple[str, ...]
    first_error: Finding | None
    groups: tuple[SignatureGroup, ...]
    nccl: NcclSummary
    flight_recorder: FlightRecorderSummary | None
    expected_world_size: int | None
    ranks_seen: tuple[int, ...]
    hosts_seen: tuple[str, ...]
    lines: int
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No error-severity finding at all."""
        return self.first_error is None

    def group(self, sig_id: str) -> SignatureGroup | None:
        return next((g for g in self.groups if g.signature.id == sig_id), None)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "first_error": self.first_error.to_dict() if self.first_error else None,
            "matches": [g.to_dict() for g in self.groups],
            "nccl": self.nccl.to_dict(),
            "flight_recorder": self.flight_recorder.to_dict() if self.flight_recorder else None,
            "expected_world_size": self.expected_world_size, "ranks_seen": list(self.ranks_seen),
            "hosts_seen": list(self.hosts_seen), "sources": list(self.sources), "lines": self.lines,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------- parsing

_RANK_PREFIX = re.compile(r"^\[(?:rank|default)(?P<rank>\d+)\]:\s?")
_C10 = re.compile(
    r"^\[?(?P<lvl>[IWEF])(?P<date>\d{8}|\d{4}) (?P<clock>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))?"
    r"(?:\s+\d+)?(?:\s+[^\]\s]+)?\]\s?"
)
_ISO = re.compile(r"(?P<date>\d{4}-\d\d-\d\d)[T ](?P<clock>\d\d:\d\d:\d\d)(?:[.,](?P<frac>\d{1,9}))?")
_ISO_HEAD = 48  # a date further into the line is part of the message, not its timestamp
_C10_FIRST = frozenset("[IWEF")
_COLOSSAL = re.compile(r"^\[(?P<mo>\d\d)/(?P<d>\d\d)/(?P<y>\d\d) (?P<clock>\d\d:\d\d:\d\d)\]")  # rich/colossalai
_SLURM_AT = re.compile(r"CANCELLED AT (?P<date>\d{4}-\d\d-\d\d)T(?P<clock>\d\d:\d\d:\d\d)")
_NCCL = re.compile(
    r"^(?P<host>[^\s:\[\]]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>[^\]]*)\] NCCL (?P<level>INFO|WARN|TRACE|ABORT)\b ?"
    r"(?P<msg>.*)$"
)
_PG_RANK = re.compile(r"\[(?:PG [^\]]*?)?Rank (?P<rank>\d+)\]")
_BANNER = re.compile(r"\[clusterkit\] rank (?P<rank>\d+)/(?P<world>\d+) on (?P<host>\S+) pid (?P<pid>\d+)")
_PG_INIT = re.compile(
    r"\[PG (?:ID )?0\b[^\]]*\] ProcessGroupNCCL initialization options: size: (?P<world>\d+), global rank: (?P<rank>\d+)"
)
_VERSION = re.compile(r"\bNCCL version:? (?P<version>\d+\.\d+\.\d+(?:\+cuda[\d.]+)?)")
_BOOTSTRAP = re.compile(r"Bootstrap ?: Using (?P<ifs>.+?)\s*$")
_NET = re.compile(r"NET/(?P<kind>IB|Socket) ?: Using (?P<ifs>.+?)\s*$")
_NETWORK = re.compile(r"Using network (?P<net>\w+)")
_CHANNEL = re.compile(
    r"Channel (?P<ch>\d+)(?:/\d+)? ?: (?P<src>\d+)\[[^\]]*\] -> (?P<dst>\d+)\[[^\]]*\]"
    r"(?: \[(?:send|receive)\])? via (?P<via>\S+)"
)
_INIT_COMPLETE = re.compile(r"Init COMPLETE")
_COMM_RANK = re.compile(r"\brank (?P<rank>\d+) nranks (?P<nranks>\d+)\b")
_NCCL_ENV = re.compile(r"\b(?P<var>NCCL_\w+) set by environment to (?P<value>\S*)")
_RANK_FILE = re.compile(r"^rank-(?P<rank>\d+)\.log$")
_NODE_FILE = re.compile(r"^node-(?P<node>.+)\.log$")
_NCCL_FILE = re.compile(r"^(?P<host>[^/]+?)\.(?P<pid>\d+)\.log$")
_SLURM_FILE = re.compile(r"_log\.(?:out|err)$|^slurm-\d+.*\.out$")
_YEAR = re.compile(r"(?P<iso>20\d\d)-\d\d-\d\d[T ]\d\d:\d\d|\b[IWEF](?P<glog>20\d\d)\d{4} \d\d:\d\d:\d\d")
_FRAME = re.compile(r'^File "[^"]+", line \d+, in \S+$')
_TRACE_FILE = re.compile(r"(?P<rank>\d+)(?:\.\w+)?$")
# one cheap search over every catalogue pattern; only lines it hits are matched signature by signature
_ANY = re.compile("|".join(f"(?:{re.sub(r'[(][?]P<[a-z]+>', '(?:', p)})" for s in CATALOGUE for p in s.patterns))


@dataclass(frozen=True)
class _Line:
    src: int  # index into sources
    no: int  # 1-based line number
    text: str
    message: str  # without rank prefix, c10 header or NCCL header
    time: datetime | None
    rank: int | None
    host: str | None
    pid: int | None
    nccl_level: str | None


@lru_cache(maxsize=4096)
def short_host(host: str | None) -> str | None:
    """Hostnames are compared without their domain (NCCL prints the short name)."""
    if not host:
        return None
    return host.split(".", 1)[0] if not re.fullmatch(r"[\d.]+", host) else host


@lru_cache(maxsize=65536)
def _second(year: int, month: int, day: int, clock: str) -> datetime:
    h, mi, s = (int(x) for x in clock.split(":"))
    return datetime(year, month, day, h, mi, s)


def _micro(frac: str | None) -> int:
    return int((frac or "0")[:6].ljust(6, "0"))


def parse_timestamp(text: str, default_year: int) -> tuple[datetime | None, str]:
    """The timestamp a line starts with, and the line without the c10/glog header.

    Formats: c10/glog ``[W1122 02:08:11.123456 file.cpp:12]`` and ``I0527 15:16:51.665375 58626 f.cpp:869]``
    (``default_year`` supplies the missing year; ``I20241209 …`` has one), Python logging
    ``2026-11-22 02:08:11,123``, ISO ``2026-11-22T02:08:11.123``, bracketed ``[2026-11-22 02:08:11,123]``,
    submitit ``submitit INFO (2026-11-22 02:08:11,123)``, ColossalAI/rich ``[11/22/26 02:08:11]`` and Slurm
    ``… CANCELLED AT 2026-11-22T02:08:11 ***``.
    """
    first = text[:1]
    m = _C10.match(text) if first in _C10_FIRST else None
    if m:
        date = m.group("date")
        year, monthday = (int(date[:4]), date[4:]) if len(date) == 8 else (default_year, date)
        try:
            stamp = _second(year, int(monthday[:2]), int(monthday[2:]), m.group("clock"))
            return stamp.replace(microsecond=_micro(m.group("frac"))), text[m.end():]
        except ValueError:
            pass
    m = _COLOSSAL.match(text) if first == "[" else None
    if m:
        try:
            return _second(2000 + int(m.group("y")), int(m.group("mo")), int(m.group("d")), m.group("clock")), text
        except ValueError:
            pass
    head = "-" in text[:_ISO_HEAD]
    for m in (_ISO.search(text, 0, _ISO_HEAD) if head else None,
              _SLURM_AT.search(text) if "CANCELLED AT" in text else None):
        if m:
            try:
                stamp = datetime.fromisoformat(f"{m.group('date')}T{m.group('clock')}")
                frac = m.groupdict().get("frac")
                return stamp.replace(microsecond=_micro(frac)), text
            except ValueError:
                continue
    return None, text


def _parse_line(src_index: int, source: LogSource, no: int, raw: str, year: int,
                rank_host: Mapping[int, str | None]) -> _Line:
    text = raw.rstrip("\r\n")
    rest = text
    rank = source.rank
    m = _RANK_PREFIX.match(rest) if rest[:1] == "[" else None
    if m:
        rest = rest[m.end():]
        if rank is None:
            rank = int(m.group("rank"))
    stamp, rest = parse_timestamp(rest, year)
    host, pid, level = source.host, source.pid, None
    n = _NCCL.match(rest.lstrip()) if " NCCL " in rest else None
    if n:
        host, pid, level = short_host(n.group("host")), int(n.group("pid")), n.group("level")
        rest = n.group("msg")
    elif rank is None and "Rank " in rest:
        pg = _PG_RANK.search(rest)
        if pg:
            rank = int(pg.group("rank"))
    if host is None and rank is not None:
        host = rank_host.get(rank)
    return _Line(src_index, no, text, rest.strip(), stamp, rank, host, pid, level)


# ------------------------------------------------------------------------------------- loading


def _classify(path: Path) -> tuple[str, dict]:
    name = path.name
    parent = path.parent.name
    if m := _RANK_FILE.match(name):
        return "rank", {"rank": int(m.group("rank"))}
    if m := _NODE_FILE.match(name):
        return "node", {"node": m.group("node")}
    if _SLURM_FILE.search(name) or parent == "submitit":
        return "slurm", {}
    if parent == "nccl" and (m := _NCCL_FILE.match(name)):
        # NCCL_DEBUG_FILE=<run>/nccl/%h.%p.log: host and pid are in the name
        return "nccl", {"host": short_host(m.group("host")), "pid": int(m.group("pid"))}
    return "other", {}


def _read_text(path: Path) -> tuple[str, str | None]:
    """A file's text (the last MAX_FILE_BYTES of a huge one) and a note when it was cut."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size > MAX_FILE_BYTES:
            handle.seek(size - MAX_FILE_BYTES)
            data = handle.read()
            data = data[data.find(b"\n") + 1:]
            return data.decode("utf-8", errors="replace"), f"{path}: only the last {MAX_FILE_BYTES} bytes were read"
        return handle.read().decode("utf-8", errors="replace"), None


def _read_json_dir(folder: Path, pattern: str) -> dict[str, Mapping]:
    out = {}
    for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, Mapping):
            out[path.stem] = data
    return out


_ALLOWED_GLOBALS = {
    # torch's C++ pickler wraps lists and dicts in these; they are identity functions for us
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type=None: value,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _TraceUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a flight-recorder dump is dicts, lists, strings and numbers,
    so any other global (a class, a function) is refused instead of imported and called."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a flight-recorder dump") from None


def parse_flight_record(data: bytes) -> Mapping:
    """A flight-recorder dump (pickle, or JSON for ``TORCH_NCCL_USE_JSON``-style dumps) as plain data."""
    stripped = data.lstrip()
    if stripped[:1] in (b"{", b"["):
        value = json.loads(stripped.decode("utf-8", errors="replace"))
    else:
        value = _TraceUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, Mapping):
        raise TypeError(f"a flight-recorder dump is a dict, not {type(value).__name__}")
    return value


def _load_traces(folder: Path) -> tuple[dict[int, Mapping], list[str]]:
    records, notes = {}, []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _TRACE_FILE.search(path.name)
        if not path.is_file() or not m or path.name.startswith("."):
            continue
        try:
            if path.stat().st_size > MAX_TRACE_BYTES:
                notes.append(f"{path}: larger than {MAX_TRACE_BYTES} bytes; skipped")
                continue
            records[int(m.group("rank"))] = parse_flight_record(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a damaged dump is reported, never fatal to the diagnosis
            notes.append(f"{path}: not a readable flight-recorder dump ({type(exc).__name__}: {exc})")
    return records, notes


def _infer_year(texts: Iterable[str], fallback: int) -> int:
    """The year of the first full date in the logs (c10 lines have none of their own)."""
    for text in texts:
        m = _YEAR.search(text, 0, 200_000)
        if m:
            return int(m.group("iso") or m.group("glog"))
    return fallback


def _run_log_paths(root: Path) -> list[Path]:
    """Every log file of a run directory, in a stable order (rank logs first)."""
    logs = root / "logs"
    paths = sorted(logs.glob("rank-*.log")) + sorted(logs.glob("node-*.log"))
    paths += sorted(p for p in logs.glob("*.log") if p not in paths) if logs.is_dir() else []
    paths += sorted((root / "nccl").glob("*.log")) if (root / "nccl").is_dir() else []
    sub = root / "submitit"
    paths += sorted(sub.glob("*_log.out")) + sorted(sub.glob("*_log.err")) if sub.is_dir() else []
    return [p for p in paths if p.is_file()]


def load_run(run_dir: Path) -> RunLogs:
    """Read a clusterkit run directory: ``logs/``, ``nccl/``, ``submitit/``, ``ranks/``, ``results/``,
    ``spec.json`` and the flight-recorder dumps in ``comm_traces/`` (only there: unpickling is
    restricted to plain data anyway)."""
    root = Path(run_dir)
    if not root.is_dir():
        from clusterkit.errors import NotFound

        raise NotFound(f"run directory {root} does not exist")
    ranks = {}
    for stem, data in _read_json_dir(root / "ranks", "rank-*.json").items():
        m = re.search(r"(\d+)$", stem)
        if m:
            ranks[int(m.group(1))] = data
    results = {stem.removeprefix("node-"): data for stem, data in _read_json_dir(root / "results", "node-*.json").items()}
    spec = None
    try:
        spec = json.loads((root / "spec.json").read_text())
    except (OSError, ValueError):
        pass
    traces, trace_notes = _load_traces(root / "comm_traces")
    logs = _load_sources(_run_log_paths(root), root)
    return RunLogs(
        sources=logs.sources, ranks=ranks, results=results, spec=spec if isinstance(spec, Mapping) else None,
        flight_records=traces, notes=logs.notes + tuple(trace_notes), default_year=logs.default_year,
        root=str(root),
    )


def load_files(paths: Sequence[Path]) -> RunLogs:
    """Read explicit log files (``--log PATH...``). A directory is read as a run directory when it
    looks like one (``logs/`` or ``spec.json``), else every ``*.log``/``*.out``/``*.err`` in it."""
    files: list[Path] = []
    runs: list[RunLogs] = []
    for path in map(Path, paths):
        if path.is_dir():
            if (path / "logs").is_dir() or (path / "spec.json").exists():
                runs.append(load_run(path))
            else:
                files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err"))
        elif path.is_file():
            files.append(path)
        else:
            from clusterkit.errors import NotFound

            raise NotFound(f"log file {path} does not exist")
    loaded = _load_sources(files, None)
    if not runs:
        return loaded
    # merge: sources of every run plus the loose files; metadata of the first run
    first = runs[0]
    sources = tuple(s for r in runs for s in r.sources) + loaded.sources
    return RunLogs(sources=sources, ranks=first.ranks, results=first.results, spec=first.spec,
                   flight_records=first.flight_records, notes=tuple(n for r in runs for n in r.notes) + loaded.notes,
                   default_year=first.default_year, root=first.root)


def _load_sources(paths: Sequence[Path], root: Path | None) -> RunLogs:
    sources, notes, texts, mtimes = [], [], [], []
    for path in paths:
        try:
            text, note = _read_text(path)
            mtimes.append(path.stat().st_mtime)
        except OSError as exc:
            notes.append(f"{path}: {exc.strerror or exc}")
            continue
        if note:
            notes.append(note)
        texts.append(text)
        kind, attrs = _classify(path)
        name = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
        sources.append(LogSource(name=name, lines=tuple(text.splitlines()), kind=kind, **attrs))
    fallback = datetime.fromtimestamp(min(mtimes)).year if mtimes else datetime.now().year
    return RunLogs(sources=tuple(sources), notes=tuple(notes), default_year=_infer_year(texts, fallback))


def logs_from_texts(texts: Mapping[str, str], **kwargs) -> RunLogs:
    """``RunLogs`` from in-memory files (name -> text), classified by name as on disk (for tests)."""
    sources = []
    for name, text in texts.items():
        kind, attrs = _classify(Path(name))
        sources.append(LogSource(name=name, lines=tuple(text.splitlines()), kind=kind, **attrs))
    kwargs.setdefault("default_year", _infer_year(texts.values(), 1970))
    return RunLogs(sources=tuple(sources), **kwargs)


def context_from_inventory(inventory, expected_world_size: int | None = None) -> DiagnoseContext:
    """The hardware context of every inventory node, keyed by node name and short hostname."""
    hosts: dict[str, HostHardware] = {}
    for node in inventory.nodes:
        spec = node.gpu.spec
        p2p = node.interconnect.p2p if node.interconnect.p2p is not None else spec.p2p_pcie
        hw = HostHardware(node=node.name, gpu=spec.name, p2p=p2p)
        hosts[node.name] = hw
        hosts.setdefault(short_host(node.hostname) or node.name, hw)
    return DiagnoseContext(expected_world_size=expected_world_size, hosts=hosts)


# ------------------------------------------------------------------------------------- analysis


@dataclass
class _Hit:
    sig: Signature
    variant: Variant | None
    line: _Line
    order: tuple  # sort key in the merged stream
    time: datetime | None
    estimated: bool
    detail: str = ""
    severity: str | None = None
    evidence: tuple[Evidence, ...] = ()  # derived signatures: the lines that show them
    wrapper: _Line | None = None  # the generic line (N5, X3) this specific message explains
    groups: Mapping[str, str | None] = field(default_factory=dict)  # the regex's named groups


def _expected_world_size(logs: RunLogs, context: DiagnoseContext) -> int | None:
    if context.expected_world_size:
        return context.expected_world_size
    spec = logs.spec or {}
    try:
        nodes = len(spec["nodes"])
        per_node = spec.get("procs_per_node") or spec["gpus_per_node"]
        return int(nodes) * int(per_node)
    except (KeyError, TypeError, ValueError):
        return None


def _source_attrs(logs: RunLogs) -> tuple[LogSource, ...]:
    """Fill in rank/host/pid the run's records know (ranks/*.json, results, spec)."""
    by_hostpid = {(short_host(d.get("host")), d.get("pid")): r for r, d in logs.ranks.items()}
    node_host = {n.get("name"): short_host(n.get("hostname")) for n in (logs.spec or {}).get("nodes", [])
                 if isinstance(n, Mapping)}
    node_host.update({node: short_host(d.get("host")) for node, d in logs.results.items() if d.get("host")})
    out = []
    for s in logs.sources:
        rank, host, pid = s.rank, s.host, s.pid
        if s.kind == "rank" and rank in logs.ranks:
            host = host or short_host(logs.ranks[rank].get("host"))
            pid = pid or logs.ranks[rank].get("pid")
        elif s.kind == "nccl" and rank is None:
            rank = by_hostpid.get((host, pid))
            if rank is None:
                for line in s.lines[:400]:
                    m = _COMM_RANK.search(line)
                    if m and "Init" in line:
                        rank = int(m.group("rank"))
                        break
        elif s.kind == "node" and s.node:
            host = host or node_host.get(s.node) or short_host(s.node)
        out.append(LogSource(s.name, s.lines, s.kind, rank, host, pid, s.node))
    return tuple(out)


def _estimate_times(lines: list[_Line]) -> tuple[list[datetime | None], list[bool]]:
    """Each line's own time, else the last earlier timestamp in the file, else the next one."""
    times: list[datetime | None] = [ln.time for ln in lines]
    estimated = [False] * len(lines)
    last = None
    for i, ln in enumerate(lines):
        if ln.time is not None:
            last = ln.time
        elif last is not None:
            times[i], estimated[i] = last, True
    nxt = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].time is not None:
            nxt = lines[i].time
        elif times[i] is None and nxt is not None:
            times[i], estimated[i] = nxt, True
    return times, estimated


_FAR_FUTURE = datetime.max
#: first errors where the interfaces NCCL chose are the likely culprit
_INTERFACE_SIGNATURES = frozenset({"N11", "N12", "N13"})
#: interface names that are never the link between nodes
_ODD_INTERFACE = re.compile(r"^(?:docker|veth|virbr|br-|lo\b|cni|flannel)|fe80:", re.IGNORECASE)
#: info signatures that explain a teardown: Slurm requeued or cancelled the job on purpose
_DELIBERATE_STOPS = frozenset({"S5", "S8"})


def diagnose(logs: RunLogs, context: DiagnoseContext | None = None) -> LogReport:
    """Match every line against the catalogue, derive the multi-line signatures, and pick the first error."""
    context = context or DiagnoseContext()
    sources = _source_attrs(logs)
    world = _expected_world_size(logs, context)
    rank_host = _rank_hosts(logs, sources)

    parsed: list[list[_Line]] = []
    for i, s in enumerate(sources):
        parsed.append([_parse_line(i, s, no, raw, logs.default_year, rank_host)
                       for no, raw in enumerate(s.lines, start=1)])

    est, untimed_sources = _timeline(parsed)
    hits = _match_lines(parsed, est, world)
    anchored = _anchor_untimed(untimed_sources, sources, parsed, hits, est)
    for h in hits:
        h.time, h.estimated = est[(h.line.src, h.line.no)]
        h.order = _order(h.line, h.time, h.line.src in anchored)

    nccl, facts = _nccl_summary(parsed)
    fr = _flight_recorder(logs.flight_records, rank_host)
    hits += _derived(parsed, est, anchored, hits, facts, logs, context, world, sources)
    hits.sort(key=lambda h: h.order)

    explained = _explanations(hits, parsed)
    first = _first_error(hits, explained)
    # an unrecognised exception line that a known message explains is not worth its own row
    groups = _groups([h for h in hits if not (h.sig.id == "X3" and id(h) in explained)], sources, parsed)
    ranks_seen = sorted({ln.rank for lines in parsed for ln in lines if ln.rank is not None} | set(logs.ranks))
    hosts_seen = sorted({ln.host for lines in parsed for ln in lines if ln.host})
    notes = list(logs.notes)
    if untimed_sources:
        more = f" and {len(untimed_sources) - 1} more" if len(untimed_sources) > 1 else ""
        notes.append(f"no timestamps in {sources[untimed_sources[0]].name}{more}: their lines are placed just before "
                     "the first error of their rank, or after all timed lines")
    finding = _finding(first, sources, parsed) if first else None
    if finding is not None and (finding.id in _INTERFACE_SIGNATURES or (finding.id == "N1" and finding.variant)):
        odd = _odd_interfaces(nccl)
        if odd:
            finding = dataclasses.replace(finding, detail="; ".join(x for x in (finding.detail, odd) if x))
    return LogReport(
        sources=tuple(s.name for s in sources),
        first_error=finding,
        groups=groups, nccl=nccl, flight_recorder=fr, expected_world_size=world,
        ranks_seen=tuple(ranks_seen), hosts_seen=tuple(hosts_seen),
        lines=sum(len(s.lines) for s in sources), notes=tuple(notes),
    )


_Times = dict[tuple[int, int], tuple[datetime | None, bool]]  # (source, line) -> (time, estimated)


def _timeline(parsed: list[list[_Line]]) -> tuple[_Times, list[int]]:
    """Every line's time (own or estimated within its file), and the files with no timestamp at all."""
    est: _Times = {}
    untimed = []
    for i, lines in enumerate(parsed):
        times, flags = _estimate_times(lines)
        if lines and all(t is None for t in times):
            untimed.append(i)
        for ln, t, f in zip(lines, times, flags):
            est[(ln.src, ln.no)] = (t, f)
    return est, untimed


def _match_lines(parsed: list[list[_Line]], est: _Times, world: int | None) -> list[_Hit]:
    hits = []
    for lines in parsed:
        for ln in lines:
            # NCCL INFO lines only feed the summary: no signature is an INFO line
            found = match_line(ln.message, world) if ln.nccl_level != "INFO" and _ANY.search(ln.message) else None
            if found:
                sig, m = found
                t, f = est[(ln.src, ln.no)]
                hits.append(_Hit(sig, sig.variant_for(m), ln, (), t, f, detail=_match_detail(m.groupdict())))
    return hits


def _match_detail(groups: Mapping[str, str | None]) -> str:
    """What a matched message itself says, in a few words (the ranks a barrier waited for, …)."""
    if groups.get("missing"):
        ranks = groups["missing"].strip()
        return f"rank{'s' if ',' in ranks else ''} {ranks} never arrived (torch's monitored barrier)"
    if groups.get("workers") and groups.get("world"):
        return f"{groups['workers']} workers arrived for a world of {groups['world']}"
    if groups.get("op") and groups.get("seq"):
        return f"collective #{groups['seq']} ({groups['op']}) never completed"
    return ""


def _anchor_untimed(untimed: list[int], sources: Sequence[LogSource], parsed: list[list[_Line]],
                    hits: list[_Hit], est: _Times) -> set[int]:
    """Files without timestamps (NCCL_DEBUG_FILE) go just before their rank's first timed error;
    returns the indices of the files so placed (updates ``est``)."""
    first_timed_error: dict[int, datetime] = {}
    for h in hits:
        if h.time is not None and h.sig.severity == "error" and h.line.rank is not None:
            prev = first_timed_error.get(h.line.rank)
            if prev is None or h.time < prev:
                first_timed_error[h.line.rank] = h.time
    anchored = set()
    for i in untimed:
        rank = sources[i].rank
        anchor = first_timed_error.get(rank) if rank is not None else None
        if anchor is not None:
            anchored.add(i)
            for ln in parsed[i]:
                est[(ln.src, ln.no)] = (anchor, True)
    return anchored


def _rank_hosts(logs: RunLogs, sources: Sequence[LogSource]) -> dict[int, str | None]:
    """rank -> short hostname: ranks/*.json, else the rank file's clusterkit banner or first NCCL line."""
    hosts = {r: short_host(d.get("host")) for r, d in logs.ranks.items() if d.get("host")}
    for s in sources:
        if s.kind != "rank" or s.rank is None or s.rank in hosts:
            continue
        for line in s.lines[:2000]:
            m = _BANNER.search(line) or _NCCL.match(_RANK_PREFIX.sub("", line, count=1))
            if m:
                hosts[s.rank] = short_host(m.group("host"))
                break
    return hosts


def _order(ln: _Line, t: datetime | None, anchored: bool) -> tuple:
    # untimed lines sort after every timed one; an anchored NCCL file sorts before its anchor
    return (t is None, t or _FAR_FUTURE, 0 if anchored else 1, ln.src, ln.no)


def _explanations(hits: list[_Hit], parsed: list[list[_Line]]) -> dict[int, _Hit]:
    """For each generic hit (by ``id``), the specific message a few lines below it that explains it."""
    by_place = {(h.line.src, h.line.no): h for h in hits if not h.sig.derived}
    out = {}
    for h in hits:
        if h.sig.generic:
            specific = _explanation(h, by_place, parsed)
            if specific is not None:
                out[id(h)] = specific
    return out


def _first_error(hits: list[_Hit], explained: Mapping[int, _Hit]) -> _Hit | None:
    errors = [h for h in hits if (h.severity or h.sig.severity) == "error"]
    resolved: list[_Hit] = []
    for h in errors:
        if h.sig.generic:
            specific = explained.get(id(h))
            if specific is not None:
                # the wrapper counts with the specific message's meaning but keeps its own place in time
                resolved.append(_Hit(specific.sig, specific.variant, specific.line, h.order, h.time, h.estimated,
                                     detail=specific.detail, wrapper=h.line))
                continue
        resolved.append(h)
    roots = [h for h in resolved if h.sig.first_error]
    if not roots and any(h.sig.id in _DELIBERATE_STOPS for h in hits):
        # only teardown lines, and the scheduler says the job was requeued or cancelled on purpose
        return None
    pool = roots or resolved
    return min(pool, key=lambda h: h.order) if pool else None


def _explanation(h: _Hit, by_place: Mapping, parsed: list[list[_Line]]) -> _Hit | None:
    for no in range(h.line.no + 1, min(h.line.no + GENERIC_WINDOW, len(parsed[h.line.src])) + 1):
        other = by_place.get((h.line.src, no))
        if other is not None and not other.sig.generic and other.sig.severity == "error":
            return other
    return None


def _finding(h: _Hit, sources: Sequence[LogSource], parsed: list[list[_Line]]) -> Finding:
    ln = h.line
    # derived findings carry the lines that show them; a line match shows its line and context
    evidence = list(h.evidence) if h.evidence else _line_evidence(h, sources, parsed)
    if h.wrapper is not None:
        # the wrapper's own line (N5 "unhandled system error") first: it is what the user saw
        w = Evidence(sources[h.wrapper.src].name, h.wrapper.no, h.wrapper.text)
        evidence = [w] + [e for e in evidence if (e.file, e.line) != (w.file, w.line)]
    return Finding(
        signature=h.sig, variant=h.variant, rank=ln.rank, host=ln.host, file=sources[ln.src].name, line=ln.no,
        time=h.time, time_estimated=h.estimated, evidence=tuple(evidence), detail=h.detail, severity=h.severity,
    )


def _line_evidence(h: _Hit, sources: Sequence[LogSource], parsed: list[list[_Line]]) -> list[Evidence]:
    lines = parsed[h.line.src]
    name = sources[h.line.src].name
    out = []
    # related lines before the match (the interface NCCL was told to use, …)
    for pattern in h.sig.compiled_related:
        for ln in reversed(lines[: h.line.no - 1]):
            if pattern.search(ln.text):
                out.append(Evidence(name, ln.no, ln.text))
                break
    # the innermost traceback frame above an exception line ("File …, line N, in f" + its code)
    above = lines[max(0, h.line.no - 3): h.line.no - 1]
    for k, ln in enumerate(above):
        if _FRAME.match(ln.message) and ln.time is None:
            out += [Evidence(name, x.no, x.text) for x in above[k:] if (name, x.no) not in {(o.file, o.line) for o in out}]
            break
    out.sort(key=lambda e: e.line)
    out.append(Evidence(name, h.line.no, h.line.text))
    for ln in lines[h.line.no: h.line.no + CONTINUATION_LINES]:
        if not ln.text.strip() or ln.time is not None or ln.nccl_level == "INFO":
            break
        out.append(Evidence(name, ln.no, ln.text))
    return out


def _groups(hits: list[_Hit], sources, parsed) -> tuple[SignatureGroup, ...]:
    by_sig: dict[str, list[_Hit]] = defaultdict(list)
    for h in hits:
        by_sig[h.sig.id].append(h)
    order = {s.id: i for i, s in enumerate(CATALOGUE)}
    sev = {"error": 0, "warning": 1, "info": 2}
    groups = []
    first_seen = {sig_id: items[0].order for sig_id, items in by_sig.items()}
    for sig_id, items in by_sig.items():
        findings = tuple(_finding(h, sources, parsed) for h in items[:5])
        groups.append(SignatureGroup(
            signature=signature(sig_id), count=len(items),
            ranks=tuple(sorted({h.line.rank for h in items if h.line.rank is not None})),
            hosts=tuple(sorted({h.line.host for h in items if h.line.host})),
            findings=findings,
        ))
    groups.sort(key=lambda g: (sev[g.findings[0].level], first_seen[g.signature.id], order[g.signature.id]))
    return tuple(groups)


# ------------------------------------------------------------------------------------- NCCL INFO


@dataclass
class _Facts:
    """Per-line facts the derived signatures need (with the line that shows each)."""

    versions: list[tuple[str, str, _Line]] = field(default_factory=list)  # (who, version, line)
    p2p_lines: dict[str, list[_Line]] = field(default_factory=lambda: defaultdict(list))  # host -> via P2P lines
    net_used: bool = False
    init_lines: dict[str, list[_Line]] = field(default_factory=lambda: defaultdict(list))  # host -> Init COMPLETE
    worlds: list[tuple[int, int, str | None, _Line]] = field(default_factory=list)  # (rank, world, host, line)


def _who(ln: _Line) -> str:
    if ln.rank is not None:
        return f"rank {ln.rank}"
    if ln.host:
        return f"{ln.host}:{ln.pid}" if ln.pid else ln.host
    return "?"


def _nccl_summary(parsed: list[list[_Line]]) -> tuple[NcclSummary, _Facts]:
    facts = _Facts()
    versions: dict[str, str] = {}
    bootstrap: dict[str, list[str]] = defaultdict(list)
    net: dict[str, list[str]] = defaultdict(list)
    network: dict[str, str] = {}
    transports: Counter = Counter()
    details: Counter = Counter()
    by_host: dict[str, Counter] = defaultdict(Counter)
    init_ranks: set[int] = set()
    init_hosts: set[str] = set()
    nranks: set[int] = set()
    env: dict[str, dict[str, str]] = defaultdict(dict)
    for lines in parsed:
        for ln in lines:
            text = ln.message
            host = ln.host or "?"
            if "NCCL version" in text:
                m = _VERSION.search(text)
                if m:
                    who = _who(ln)
                    version, known = m.group("version"), versions.get(who)
                    # keep the most precise spelling ("2.21.5+cuda12.4" over torch's "2.21.5")
                    if known is None or (len(version) > len(known) and version.startswith(known)):
                        versions[who] = version
                    facts.versions.append((who, m.group("version"), ln))
            if "[clusterkit] rank" in text and (m := _BANNER.search(text)):
                facts.worlds.append((int(m.group("rank")), int(m.group("world")), short_host(m.group("host")), ln))
            if "initialization options" in text and (m := _PG_INIT.search(text)):
                facts.worlds.append((int(m.group("rank")), int(m.group("world")), ln.host, ln))
            if ln.nccl_level is None:
                continue
            if text.startswith("Channel") and (m := _CHANNEL.search(text)):
                via = m.group("via")
                parts = via.split("/")
                kind = "/".join(parts[:2]) if parts[0] == "NET" and len(parts) > 1 else parts[0]
                transports[kind] += 1
                details[via] += 1
                by_host[host][kind] += 1
                if kind == "P2P":
                    facts.p2p_lines[host].append(ln)
                if kind.startswith(("NET", "Coll")):
                    facts.net_used = True
            elif "Using" not in text and "COMPLETE" not in text and "set by environment" not in text:
                continue
            elif m := _BOOTSTRAP.search(text):
                if m.group("ifs") not in bootstrap[host]:
                    bootstrap[host].append(m.group("ifs"))
            elif m := _NET.search(text):
                item = f"{m.group('kind')} {m.group('ifs')}"
                if item not in net[host]:
                    net[host].append(item)
            elif m := _NETWORK.search(text):
                network[host] = m.group("net")
            elif _INIT_COMPLETE.search(text):
                cm = _COMM_RANK.search(text)
                if cm:
                    nranks.add(int(cm.group("nranks")))
                if ln.rank is not None:
                    init_ranks.add(ln.rank)
                elif cm:
                    init_ranks.add(int(cm.group("rank")))
                else:
                    init_hosts.add(host)
                facts.init_lines[host].append(ln)
            elif m := _NCCL_ENV.search(text):
                env[host][m.group("var")] = m.group("value")
    summary = NcclSummary(
        versions=dict(sorted(versions.items(), key=lambda kv: _who_key(kv[0]))),
        bootstrap={h: tuple(v) for h, v in sorted(bootstrap.items())},
        net={h: tuple(v) for h, v in sorted(net.items())}, network=dict(sorted(network.items())),
        transports=dict(transports.most_common()), transport_details=dict(details.most_common()),
        transports_by_host={h: dict(c.most_common()) for h, c in sorted(by_host.items())},
        init_complete=tuple(sorted(init_ranks)), init_hosts=tuple(sorted(init_hosts)),
        nranks=tuple(sorted(nranks)), env={h: dict(sorted(v.items())) for h, v in sorted(env.items())},
    )
    return summary, facts


def _odd_interfaces(nccl: NcclSummary) -> str:
    """"worker-5 bootstraps on docker0:172.17.0.1<0>" for interfaces no other node can route to."""
    odd = [f"{host} uses {item}" for host, items in nccl.bootstrap.items() for item in items if _ODD_INTERFACE.search(item)
           or _ODD_INTERFACE.search(item.split(":", 1)[-1])]
    if not odd:
        return ""
    return "NCCL bootstrap: " + "; ".join(odd) + " (a bridge, loopback or link-local address other nodes cannot reach)"


def _who_key(who: str) -> tuple:
    m = re.fullmatch(r"rank (\d+)", who)
    return (0, int(m.group(1)), "") if m else (1, 0, who)


def _numeric_version(version: str) -> str:
    return version.split("+", 1)[0]


# ------------------------------------------------------------------------------------- derived


def _derived(parsed, est, anchored, hits: list[_Hit], facts: _Facts, logs: RunLogs, context: DiagnoseContext,
             world: int | None, sources: Sequence[LogSource]) -> list[_Hit]:
    """Findings no single line shows: N14 mixed versions, R5 separate worlds, N8/N9 P2P hangs."""
    out: list[_Hit] = []

    def hit(sig_id: str, ln: _Line, detail: str, evidence: list[_Line], severity: str | None = None) -> _Hit:
        t, f = est.get((ln.src, ln.no), (None, False))
        ev = tuple(Evidence(sources[e.src].name, e.no, e.text) for e in evidence)
        return _Hit(signature(sig_id), None, ln, _order(ln, t, ln.src in anchored), t, f, detail, severity, ev)

    # N14: one numeric NCCL version per rank; more than one across the job is a mismatch
    distinct: dict[str, list[tuple[str, _Line]]] = defaultdict(list)
    for who, version, ln in facts.versions:
        distinct[_numeric_version(version)].append((who, ln))
    if len(distinct) > 1:
        ordered = sorted(distinct.items(), key=lambda kv: -len({w for w, _ in kv[1]}))
        counts = [len({w for w, _ in items}) for _, items in ordered]
        minority_lines = [ln for v, items in ordered[1:] for _, ln in items]
        first = min(minority_lines, key=lambda ln: _order(ln, est[(ln.src, ln.no)][0], ln.src in anchored))
        detail = "; ".join(f"{v} on {_who_list(sorted({w for w, _ in items}, key=_who_key))}" for v, items in ordered)
        if counts[0] > counts[1]:
            detail += f" - most use {ordered[0][0]}"
        evidence = [items[0][1] for _, items in ordered]
        out.append(hit("N14", first, f"NCCL versions differ: {detail}", evidence))

    # R5: each node formed its own world
    out += _each_node_own_world(facts, world, logs, hit, parsed)

    # N8 / N9: P2P chosen on a host that cannot do it, or a hang right after Init COMPLETE with P2P
    run_failed = any((h.severity or h.sig.severity) == "error" for h in hits) or any(
        d.get("exit_code") not in (0, None) for d in logs.results.values())
    seq1 = [h for h in hits if h.sig.id == "N1" and h.variant is not None]
    for host, p2p_lines in sorted(facts.p2p_lines.items()):
        hw = context.hosts.get(host) or _hw_by_node(context, host, logs)
        capable = hw.p2p if hw else None
        init = facts.init_lines.get(host, [])
        stalled = _stalled_after_init(host, parsed, logs) if init else []
        hang = bool(init) and (bool(seq1) or bool(stalled)) and (not facts.net_used or capable is False)
        gpu = f"{hw.gpu} " if hw and hw.gpu else ""
        kinds = ", ".join(sorted({ln.message.split(" via ", 1)[-1] for ln in p2p_lines}))
        evidence = [p2p_lines[0]] + init[:1] + [h.line for h in seq1[:1]] + stalled[:1]
        if capable is False:
            severity = "error" if (run_failed or hang) else "warning"
            detail = (f"{host}: NCCL chose {kinds} between {gpu}GPUs that have no peer-to-peer"
                      + (" and the job then hung" if hang else ""))
            out.append(hit("N8", p2p_lines[0], detail, evidence, severity))
        elif hang:
            sig_id = "N9" if capable else "N8"
            detail = (f"{host}: P2P channels ({kinds}) and no progress after Init COMPLETE"
                      + (f" on {gpu.strip()}" if gpu else "; the GPU model is unknown (pass the inventory)"))
            out.append(hit(sig_id, p2p_lines[0], detail, evidence))
    return out


def _hw_by_node(context: DiagnoseContext, host: str, logs: RunLogs) -> HostHardware | None:
    for node, data in logs.results.items():
        if short_host(data.get("host")) == host and node in context.hosts:
            return context.hosts[node]
    for n in (logs.spec or {}).get("nodes", []):
        if isinstance(n, Mapping) and short_host(n.get("hostname")) == host and n.get("name") in context.hosts:
            return context.hosts[n["name"]]
    return None


def _stalled_after_init(host: str, parsed, logs: RunLogs) -> list[_Line]:
    """Ranks on ``host`` whose own log ends in NCCL init lines (nothing ran after Init COMPLETE) in a
    run that did not end cleanly; returns the last line of each such log."""
    ended_badly = any(d.get("exit_code") not in (0, None) for d in logs.results.values())
    if not ended_badly:
        return []
    out = []
    for lines in parsed:
        content = [ln for ln in lines if ln.text.strip()]
        if not content or content[-1].host != host:
            continue
        seen_init = any(_INIT_COMPLETE.search(ln.message) for ln in content if ln.nccl_level)
        if not seen_init:
            continue
        tail_start = max(i for i, ln in enumerate(content) if ln.nccl_level and _INIT_COMPLETE.search(ln.message))
        if all(ln.nccl_level == "INFO" for ln in content[tail_start:]):
            out.append(content[-1])
    return out


def _each_node_own_world(facts: _Facts, world: int | None, logs: RunLogs, hit, parsed) -> list[_Hit]:
    worlds = list(facts.worlds)
    hosts_by_rank: dict[int, dict[str, _Line]] = defaultdict(dict)
    for rank, _w, host, ln in worlds:
        if host:
            hosts_by_rank[rank].setdefault(host, ln)
    duplicated = {r: h for r, h in hosts_by_rank.items() if len(h) > 1}
    small = [(r, w, h, ln) for r, w, h, ln in worlds if world and w < world]
    json_small = sorted({(r, d.get("world_size")) for r, d in logs.ranks.items()
                         if world and isinstance(d.get("world_size"), int) and d["world_size"] < world})
    if not (duplicated or small or json_small):
        return []
    parts = []
    if duplicated:
        rank, hosts = sorted(duplicated.items())[0]
        parts.append(f"global rank {rank} exists on {', '.join(sorted(hosts))}")
        evidence = list(hosts.values())
    else:
        evidence = []
    if small:
        seen = sorted({(h or "?", w) for _r, w, h, _ln in small})
        parts.append(f"world size {', '.join(f'{w} on {h}' for h, w in seen)} but the job has {world} ranks")
        evidence += [ln for *_rest, ln in small[:3]]
    elif json_small:
        rank, size = json_small[0]
        parts.append(f"ranks/rank-{rank:03d}.json records world_size {size} but the job has {world} ranks")
        # point at the rank's own log: the record has no line of its own
        evidence += [lines[0] for lines in parsed if lines and lines[0].rank == rank][:1]
    anchor = min(evidence, key=lambda ln: (ln.time is None, ln.time or _FAR_FUTURE, ln.src, ln.no)) if evidence else None
    if anchor is None:
        return []
    return [hit("R5", anchor, "; ".join(parts), evidence[:4])]


# ------------------------------------------------------------------------------------- flight recorder


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _flight_recorder(records: Mapping[int, Mapping], rank_host: Mapping[int, str | None]) -> FlightRecorderSummary | None:
    if not records:
        return None
    traces = []
    for rank, dump in sorted(records.items()):
        status: dict[str, dict[str, int]] = {}
        raw_status = dump.get("pg_status") if isinstance(dump.get("pg_status"), Mapping) else {}
        for pg, values in raw_status.items():
            if isinstance(values, Mapping):
                status[str(pg)] = {k: v for k, v in ((k, _int(v)) for k, v in values.items()) if v is not None}
        entries = [e for e in dump.get("entries") or [] if isinstance(e, Mapping)]
        if not status:
            # older dumps: derive from the entries
            for e in entries:
                pg = str(e.get("pg_id", "0"))
                seq = _int(e.get("collective_seq_id"))
                if seq is None:
                    continue
                st = status.setdefault(pg, {})
                st["last_enqueued_collective"] = max(st.get("last_enqueued_collective", 0), seq)
                if e.get("state") in ("started", "completed"):
                    st["last_started_collective"] = max(st.get("last_started_collective", 0), seq)
                if e.get("state") == "completed":
                    st["last_completed_collective"] = max(st.get("last_completed_collective", 0), seq)
        last = entries[-1] if entries else {}
        traces.append(RankTrace(
            rank=rank, host=rank_host.get(rank), pg_status=status,
            last_op=str(last.get("profiling_name")) if last.get("profiling_name") is not None else None,
            last_seq=_int(last.get("collective_seq_id")), last_state=last.get("state") if last else None,
            nccl_version=str(dump.get("comm_lib_version") or dump.get("nccl_version") or "") or None,
        ))
    pgs = Counter(pg for t in traces for pg in t.pg_status)
    pg = "0" if "0" in pgs else (pgs.most_common(1)[0][0] if pgs else None)
    stuck = missing = behind = ()
    stuck_op = None
    if pg is not None:
        enq = {t.rank: t.pg_status.get(pg, {}).get("last_enqueued_collective", -1) for t in traces}
        done = {t.rank: t.pg_status.get(pg, {}).get("last_completed_collective", -1) for t in traces}
        stuck = max(enq.values())
        missing = tuple(sorted(r for r, v in enq.items() if v < stuck))
        top_done = max(done.values())
        behind = tuple(sorted(r for r, v in done.items() if v < top_done))
        for t in traces:
            if enq[t.rank] == stuck and t.last_seq == stuck:
                stuck_op = t.last_op
                break
    return FlightRecorderSummary(
        ranks=tuple(traces), pg=pg, stuck_seq=stuck if pg is not None else None, stuck_op=stuck_op,
        missing_ranks=tuple(missing), behind_ranks=tuple(behind),
    )


# ------------------------------------------------------------------------------------- entry points


def diagnose_run(run_dir: Path, context: DiagnoseContext | None = None) -> LogReport:
    """``clusterkit diagnose nccl --run RUN``: the CLI resolves RUN to its directory."""
    return diagnose(load_run(Path(run_dir)), context)


def diagnose_files(paths: Sequence[Path], context: DiagnoseContext | None = None) -> LogReport:
    """``clusterkit diagnose nccl --log PATH...``."""
    return diagnose(load_files(paths), context)


# ------------------------------------------------------------------------------------- render


_SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def render(report: LogReport, console) -> None:
    """Print ``report`` on a rich ``console``: first error (cause, evidence, fix), every match,
    the NCCL summary and the flight-recorder table."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    first = report.first_error
    console.print(f"[bold]log diagnosis[/bold]: {len(report.sources)} files, {report.lines} lines, "
                  f"ranks {_ranges(report.ranks_seen) or '-'}, hosts {', '.join(report.hosts_seen) or '-'}"
                  + (f", expected world size {report.expected_world_size}" if report.expected_world_size else ""))
    if first is None:
        console.print("[green]no error found[/green]" + (" (warnings below)" if report.groups else ""))
    else:
        where = ", ".join(x for x in (
            f"rank {first.rank}" if first.rank is not None else "",
            first.host or "", first.where,
            (first.time.isoformat(sep=" ") + (" (estimated)" if first.time_estimated else "")) if first.time else "",
        ) if x)
        variant = f" [{escape(first.variant.name)}]" if first.variant else ""
        console.print(f"[bold red]first error[/bold red]: [bold]{first.id}[/bold]{variant} "
                      f"{escape(first.signature.title)}")
        console.print(f"  at {escape(where)}")
        if first.detail:
            console.print(f"  [bold]seen[/bold]: {escape(first.detail)}")
        console.print(f"  [bold]cause[/bold]: {escape(first.cause)}")
        for e in first.evidence:
            console.print(f"    [dim]{escape(str(e))}[/dim]")
        console.print(f"  [bold green]fix[/bold green]: {escape(first.fix)}")
        if first.env:
            console.print("  env: " + " ".join(f"{k}={v}" for k, v in first.env.items()))

    if report.groups:
        table = Table(title="all matches", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("id", "severity", "count", "ranks", "hosts", "first at", "signature"):
            table.add_column(column)
        for g in report.groups:
            f = g.findings[0]
            style = _SEVERITY_STYLE.get(f.level, "")
            root = "" if g.signature.first_error else " (consequence)"
            table.add_row(g.signature.id, f"[{style}]{f.level}[/{style}]", str(g.count), _ranges(g.ranks) or "-",
                          ", ".join(g.hosts) or "-", escape(f.where), escape(g.signature.title + root))
        console.print(table)

    _render_nccl(report.nccl, console, Table, box, escape)
    fr = report.flight_recorder
    if fr:
        table = Table(title=f"flight recorder (process group {fr.pg})", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("rank", "host", "last enqueued", "last completed", "last op", "state"):
            table.add_column(column)
        for t in fr.ranks:
            st = t.pg_status.get(fr.pg or "", {})
            mark = " [red]behind[/red]" if t.rank in fr.missing_ranks or t.rank in fr.behind_ranks else ""
            table.add_row(f"{t.rank}{mark}", t.host or "-", str(st.get("last_enqueued_collective", "-")),
                          str(st.get("last_completed_collective", "-")), escape(t.last_op or "-"), t.last_state or "-")
        console.print(table)
        if fr.missing_ranks:
            console.print(f"[red]ranks {_ranges(fr.missing_ranks)} never enqueued collective #{fr.stuck_seq}"
                          f"{' (' + escape(fr.stuck_op) + ')' if fr.stuck_op else ''}[/red]: start with their logs")
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")


def _render_nccl(nccl: NcclSummary, console, Table, box, escape) -> None:
    if nccl.empty:
        console.print("[dim]no NCCL INFO lines (run with `--nccl-profile debug` for NCCL_DEBUG=INFO)[/dim]")
        return
    if nccl.versions:
        by_version: dict[str, list[str]] = defaultdict(list)
        for who, version in nccl.versions.items():
            by_version[version].append(who)
        console.print("NCCL version: " + "; ".join(f"{v} ({_who_list(whos)})" for v, whos in by_version.items()))
    hosts = sorted(set(nccl.bootstrap) | set(nccl.net) | set(nccl.transports_by_host) | set(nccl.network))
    if hosts:
        table = Table(title="NCCL per host", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("host", "bootstrap", "network", "NET devices", "transports (channel lines)"):
            table.add_column(column)
        for host in hosts:
            table.add_row(host, escape(", ".join(nccl.bootstrap.get(host, ())) or "-"), nccl.network.get(host, "-"),
                          escape(", ".join(nccl.net.get(host, ())) or "-"),
                          ", ".join(f"{k} {n}" for k, n in nccl.transports_by_host.get(host, {}).items()) or "-")
        console.print(table)
    if nccl.transport_details:
        console.print("transports: " + ", ".join(f"{k} {n}" for k, n in nccl.transport_details.items()))
    init = _ranges(nccl.init_complete)
    console.print(f"Init COMPLETE: ranks {init or '-'}"
                  + (f" (communicator sizes {', '.join(map(str, nccl.nranks))})" if nccl.nranks else ""))


def _who_list(whos: Sequence[str]) -> str:
    ranks = [int(w.split()[1]) for w in whos if re.fullmatch(r"rank \d+", w)]
    others = [w for w in whos if not re.fullmatch(r"rank \d+", w)]
    label = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {_ranges(ranks)}"
    return ", ".join(([label] if ranks else []) + others)


def _ranges(values: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    items = sorted(set(values))
    out, start = [], None
    for i, v in enumerate(items):
        if start is None:
            start = v
        if i + 1 == len(items) or items[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)
