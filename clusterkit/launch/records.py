"""Run directories and the SQLite run registry.

``runs/<run-id>/`` holds everything about one submission (spec, rendered commands, env,
port, job ids, logs, results); ``runs/registry.sqlite`` indexes them so ``clusterkit
runs``/``status`` answer without walking directories. Every file is written to a
temporary name and renamed, so a reader never sees half a record.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import NotFound, UserError

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "LOST"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    executor    TEXT NOT NULL,
    nodes       TEXT NOT NULL,      -- JSON list of node names
    job_ids     TEXT NOT NULL,      -- JSON list (Slurm job ids or local-<hex>)
    state       TEXT NOT NULL,
    run_dir     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    summary     TEXT NOT NULL DEFAULT ''
);
"""


@functools.cache
def process_umask() -> int:
    """The process's umask (read once: reading it means setting it for a moment)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(private: bool = False) -> int:
    """The mode ``open()`` gives a new file (0644 under umask 022); 0600 when ``private``."""
    return 0o600 if private else 0o666 & ~process_umask()


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory + rename. The file gets
    the mode a plainly created file would (mkstemp's temporary is 0600), or 0600 when ``private``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode(private))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: object, *, private: bool = False) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", private=private)


def read_json(path: Path, default: object = None) -> object:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def new_run_id(kind: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return f"{stamp}-{kind}-{secrets.token_hex(2)}"


def check_runs_root(path: Path) -> Path:
    """Refuse paths that would break an sbatch script (``%`` patterns, control characters)."""
    text = str(path)
    bad = [c for c in text if ord(c) < 32 or c in "%\x7f"]
    if bad:
        raise UserError(
            f"runs directory {text!r} contains {sorted(set(bad))!r}; "
            "Slurm expands '%' in log paths and control characters break job scripts",
            hint="choose a runs directory (CLUSTERKIT_RUNS_DIR) without such characters",
        )
    return path


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    executor: str
    nodes: tuple[str, ...]
    job_ids: tuple[str, ...]
    state: str
    run_dir: Path
    created_at: float
    updated_at: float
    summary: str = ""

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id, "kind": self.kind, "executor": self.executor, "nodes": list(self.nodes),
            "job_ids": list(self.job_ids), "state": self.state, "run_dir": str(self.run_dir),
            "created_at": self.created_at, "updated_at": self.updated_at, "summary": self.summary,
        }

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class Registry:
    """A thin wrapper over one SQLite file; every call opens its own short transaction."""

    def __init__(self, root: Path) -> None:
        self.root = check_runs_root(Path(root))
        self.path = self.root / "registry.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        return conn

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def add(self, record: RunRecord) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (record.run_id, record.kind, record.executor, json.dumps(list(record.nodes)),
                 json.dumps(list(record.job_ids)), record.state, str(record.run_dir),
                 record.created_at, record.updated_at, record.summary),
            )

    def update(self, run_id: str, *, state: str | None = None, job_ids: tuple[str, ...] | None = None,
               summary: str | None = None) -> None:
        sets, values = ["updated_at=?"], [time.time()]
        if state is not None:
            sets.append("state=?")
            values.append(state)
        if job_ids is not None:
            sets.append("job_ids=?")
            values.append(json.dumps(list(job_ids)))
        if summary is not None:
            sets.append("summary=?")
            values.append(summary)
        with closing(self._connect()) as conn, conn:
            conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id=?", (*values, run_id))

    def get(self, run_id: str) -> RunRecord:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                # allow a unique prefix, the way git accepts short hashes
                rows = conn.execute("SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\'",
                                    (_like_prefix(run_id),)).fetchall()
                if len(rows) == 1:
                    row = rows[0]
                elif len(rows) > 1:
                    raise UserError(f"run {run_id!r} is ambiguous: {', '.join(r[0] for r in rows[:5])}")
        if row is None:
            raise NotFound(f"no run {run_id!r} in {self.path}", hint="`clusterkit runs` lists them")
        return _record(row)

    def list(self, limit: int | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs ORDER BY created_at DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            return [_record(row) for row in conn.execute(query)]


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _record(row: tuple) -> RunRecord:
    return RunRecord(
        run_id=row[0], kind=row[1], executor=row[2], nodes=tuple(json.loads(row[3])),
        job_ids=tuple(json.loads(row[4])), state=row[5], run_dir=Path(row[6]),
        created_at=row[7], updated_at=row[8], summary=row[9],
    )


def record_job_failure(exc: BaseException, *, tag: str, rank: int, result_path, log_hint: str) -> int:
    """What a job entry does when it fails: say why in the rank log, let rank 0 write the error
    as the run's result (so `submit`/`train --wait` can show it), and return the exit code.
    A ClusterkitError is the user's to fix (its own message and code); anything else is a bug or
    an environment problem, whose traceback stays in the rank log."""
    import traceback

    from clusterkit.errors import ClusterkitError

    if isinstance(exc, ClusterkitError):
        print(f"[{tag}] error: {exc.message}" + (f"\n[{tag}] hint: {exc.hint}" if exc.hint else ""), flush=True)
        error, code = exc.to_dict(), exc.exit_code
    else:
        traceback.print_exception(exc)
        error = {"type": type(exc).__name__, "kind": "internal_error", "message": f"{type(exc).__name__}: {exc}",
                 "hint": log_hint}
        code = 1
    if rank == 0 and result_path is not None:
        atomic_write_json(Path(result_path), {"ok": False, "error": error})
    return code
