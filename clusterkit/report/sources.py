"""What a report shows: the videos of each RUN argument, read from the files its jobs wrote.

A RUN is a run id of the registry (or a unique prefix), a run folder, or a sweep's output folder.

- a run: its JSON index (``<output>/<run>_index.json``, or ``<output>/runs/<run>_index.json`` for
  a job of a sweep) lists its videos and is kept current while the run goes, so a running run
  shows what it has made so far; ``result.json`` has the per-stage timings once it ended.
- a sweep: one completion record per video (``records/<file>.json``, every field of the job's
  index entry), or ``index.json`` when there are no records; ``sweep.json`` names its runs,
  whose ``result.json`` give the timings.

Nothing here writes to a run's folder (a run id's registry state is refreshed, as `clusterkit status`
does): a report never changes the runs it reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import NotFound, UserError
from clusterkit.launch.records import TERMINAL_STATES
from clusterkit.project import Project
from opensora_core.inference import records

REQUEST = "request.json"
RESULT = "result.json"
PROMPTS = "prompts.json"
_RUN_FILES = (REQUEST, RESULT, "spec.json")


@dataclass(frozen=True)
class Video:
    """One video (or image) a job made: its index entry as written, and where its file should be."""

    entry: dict
    path: Path


@dataclass(frozen=True)
class RunInfo:
    """One job: its id, state (as the registry or its result says) and ``result.json`` ({} when none)."""

    run_id: str
    state: str
    result: dict


@dataclass(frozen=True)
class Column:
    """One RUN argument: a run or a sweep, shown as one column of the gallery."""

    label: str
    kind: str  # "run" | "sweep"
    folder: Path
    header: dict  # the index header: model, seed, steps, cfg_scale, frames, height, width, fps, layout, ...
    runs: tuple[RunInfo, ...]
    videos: tuple[Video, ...]
    notes: tuple[str, ...] = ()


def load_columns(project: Project, names: list[str]) -> list[Column]:
    """One column per RUN, in order. ``NotFound`` for an unknown RUN; ``UserError`` when a RUN is
    given twice or when no RUN has any video yet."""
    if not names:
        raise UserError("name at least one RUN (a run id, a run folder or a sweep folder)",
                        hint="`clusterkit runs` lists the runs")
    columns = [load_column(project, name) for name in names]
    seen: dict[Path, str] = {}
    for name, column in zip(names, columns):
        if column.folder in seen:
            raise UserError(f"RUN {name!r} is the same {column.kind} as {seen[column.folder]!r} ({column.label})")
        seen[column.folder] = name
    if not any(column.videos for column in columns):
        why = "; ".join(f"{c.label}: {' '.join(c.notes)}" for c in columns)
        raise UserError(f"nothing to show: no RUN has a video yet ({why})",
                        hint="`clusterkit status RUN` says where a run stands; `clusterkit logs RUN` why it stopped")
    return columns


def load_column(project: Project, name: str) -> Column:
    """The column of one RUN: a folder when ``name`` is one, else a run id of the registry."""
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / records.INDEX).is_file() or (path / records.MANIFEST).is_file():
            return sweep_column(project, path)
        if any((path / f).is_file() for f in _RUN_FILES):
            return run_column(path)
        raise UserError(f"folder {name!r} is neither a run folder (with {', '.join(_RUN_FILES)}) nor a sweep "
                        f"folder (with {records.INDEX} or {records.MANIFEST})")
    if path.exists():
        raise UserError(f"RUN {name!r} is a file; give a run id, a run folder or a sweep folder")
    registry = project.registry
    try:
        if not registry.path.exists():
            raise NotFound(name)
        record = registry.get(name)
    except NotFound:
        raise NotFound(f"RUN {name!r} is neither a run id in {registry.path} nor a folder; "
                       f"{_recent_runs(registry)}", hint="`clusterkit runs` lists every run") from None
    if record.kind != "infer":
        raise UserError(f"run {record.run_id} is a {record.kind} run; a report shows the videos of "
                        "inference runs (kind infer)")
    from clusterkit.launch.runs import refresh

    [record] = refresh(project, [record])
    return run_column(record.run_dir, state=record.state, run_id=record.run_id)


def run_column(folder: Path, *, state: str | None = None, run_id: str | None = None) -> Column:
    """The column of one run folder (``state``: as the registry says; else from its result)."""
    request = load_json(folder / REQUEST) or {}
    result = load_json(folder / RESULT) or {}
    run_id = run_id or request.get("run_id") or request.get("name") or folder.name
    state = state or _state_from_result(result)
    output_dir = Path(result.get("output_dir") or request.get("output_dir") or folder / "outputs")
    if not output_dir.is_dir() and (folder / "outputs").is_dir():
        output_dir = folder / "outputs"  # the run folder was moved or copied
    index = None
    for candidate in (output_dir / f"{run_id}_index.json", output_dir / records.RUN_INDEXES / f"{run_id}_index.json"):
        index = load_json(candidate)
        if index is not None:
            break
    header = _header(index or result)
    videos = tuple(_video(output_dir, entry, candidate) for entry in (index or {}).get("videos", []))
    notes = []
    expected = _expected(folder, request)
    if not videos:
        error = (result.get("error") or {}).get("message")
        if error:
            notes.append(f"the run failed: {error}")
        else:
            notes.append(f"no videos{'' if state in TERMINAL_STATES else ' yet'} (state {state})")
    elif expected is not None and len(videos) < expected:
        notes.append(f"{len(videos)} of {expected} videos (state {state})")
    writing = _being_written(output_dir)
    if writing:
        notes.append(f"{writing} video file(s) still being written, not shown")
    return Column(label=run_id, kind="run", folder=folder, header=header,
                  runs=(RunInfo(run_id, state, result),), videos=videos, notes=tuple(notes))


def sweep_column(project: Project, folder: Path) -> Column:
    """The column of a sweep's output folder: all its videos, whichever node made them."""
    manifest = load_json(folder / records.MANIFEST) or {}
    index = load_json(folder / records.INDEX) or {}
    entries = _records(folder) or index.get("videos", [])
    entries = sorted(entries, key=lambda e: (e.get("prompt_index", 0), e.get("sample", 0)))
    videos = tuple(_video(folder, entry, folder / records.RECORDS) for entry in entries)
    runs = tuple(_sweep_run(project, row) for row in manifest.get("runs", []))
    first = next((r.result for r in runs if r.result.get("ok")), {})
    header = _header(first) if first else {**manifest.get("settings", {}), "sweep": manifest.get("sweep")}
    expected = len(manifest["videos"]) if isinstance(manifest.get("videos"), list) else index.get("expected")
    notes = []
    if not videos:
        notes.append("no videos yet")
    elif expected is not None and len(videos) < expected:
        notes.append(f"{len(videos)} of {expected} videos done")
    writing = _being_written(folder)
    if writing:
        notes.append(f"{writing} video file(s) still being written, not shown")
    sweep = manifest.get("sweep") or index.get("sweep") or folder.name
    return Column(label=f"sweep {sweep}", kind="sweep", folder=folder, header=header, runs=runs,
                  videos=videos, notes=tuple(notes))


def _recent_runs(registry, limit: int = 8) -> str:
    """The newest inference runs, for an error about a RUN that is not one."""
    recent = [r for r in registry.list() if r.kind == "infer"][:limit]
    if not recent:
        return "the registry has no inference run yet"
    return "recent inference runs: " + ", ".join(f"{r.run_id} ({r.state})" for r in recent)


def load_json(path: Path) -> dict | None:
    """A JSON object file; None when absent; ``UserError`` naming the file when unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} does not hold a JSON object")
    return data


def _video(output_dir: Path, entry: dict, source: Path) -> Video:
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise UserError(f"{str(source)!r} lists a video whose file name {name!r} is not a plain file name")
    return Video(entry=entry, path=output_dir / name)


def _being_written(output_dir: Path) -> int:
    """Videos a writer has not renamed into place yet (``write_video`` writes ``.<name>.tmp``)."""
    if not output_dir.is_dir():
        return 0
    return sum(1 for p in output_dir.glob(".*.tmp") if p.name.endswith((".mp4.tmp", ".png.tmp")))


def _records(folder: Path) -> list[dict]:
    """Every readable completion record of a sweep folder (its file may have gone since)."""
    out = []
    for path in sorted((folder / records.RECORDS).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a record being replaced, or foreign: not a video
        if isinstance(record, dict) and path.name == f"{record.get('file')}.json":
            out.append(record)
    return out


def _sweep_run(project: Project, row: dict) -> RunInfo:
    run_id = str(row.get("run_id"))
    folder = Path(row["run_dir"]) if row.get("run_dir") else project.registry.run_dir(run_id)
    result = load_json(folder / RESULT) or {}
    return RunInfo(run_id, _state_from_result(result), result)


def _state_from_result(result: dict) -> str:
    if not result:
        return "UNKNOWN (no result.json yet)"
    return "COMPLETED" if result.get("ok") else "FAILED"


def _header(data: dict) -> dict:
    return {key: value for key, value in data.items() if key not in ("videos", "outputs")}


def _expected(folder: Path, request: dict) -> int | None:
    """How many videos the run was asked for (None when its inputs are not there)."""
    if isinstance(request.get("items"), list):
        return len(request["items"])
    try:
        prompts = json.loads((folder / PROMPTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return len(prompts) * int(request.get("num_samples") or 1) if isinstance(prompts, list) else None
