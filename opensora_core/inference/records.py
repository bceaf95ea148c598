"""Completion records of a prompt sweep's videos, and the sweep's merged index (torch-free).

A sweep writes every video into one output folder. A video counts as done only when both
its file and its record exist and agree: ``records/<file>.json`` (prompt, seed, node, layout,
seconds, size of the file in bytes) is written atomically right after the video file was
renamed into place. A partial video is never counted: ``write_video`` renames a finished file
into place (a killed writer leaves only a hidden ``.<name>.tmp``), and a file without a record,
or whose size differs from its record, is made again.

``index.json`` lists every done video; it is rebuilt from the records (by each job when it
ends, and by ``clusterkit submit infer`` when it collects a sweep), so a killed job never
leaves it stale for long and never makes it claim a video that is not there.
"""

from __future__ import annotations

import json
from pathlib import Path

from clusterkit.launch.records import atomic_write_json

RECORDS = "records"
RUN_INDEXES = "runs"  # each job's own index (<run id>_index.json)
INDEX = "index.json"
MANIFEST = "sweep.json"
INDEX_SCHEMA = "clusterkit/sweep-index/v1"


def record_path(output_dir: Path, filename: str) -> Path:
    return Path(output_dir) / RECORDS / f"{filename}.json"


def write_record(records_dir: Path, entry: dict) -> Path:
    """Record one finished video (its file must already be in place next to ``records_dir``)."""
    video = records_dir.parent / entry["file"]
    record = {**entry, "bytes": video.stat().st_size}
    path = records_dir / f"{entry['file']}.json"
    records_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def completed(output_dir: Path) -> dict[str, dict]:
    """Records of the videos that are done (file present, record readable, sizes equal), by file name."""
    folder = Path(output_dir) / RECORDS
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            video = Path(output_dir) / record["file"]
            if path.name == f"{record['file']}.json" and video.is_file() and video.stat().st_size == record["bytes"]:
                out[record["file"]] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable or foreign: not a completion record
    return out


def write_sweep_index(output_dir: Path) -> dict:
    """Rebuild ``index.json`` from the completion records (and ``sweep.json`` when present)."""
    output_dir = Path(output_dir)
    done = sorted(completed(output_dir).values(), key=lambda r: (r["prompt_index"], r["sample"]))
    manifest = _read(output_dir / MANIFEST) or {}
    expected = manifest.get("videos")
    files = {r["file"] for r in done}
    index = {
        "schema": INDEX_SCHEMA,
        "sweep": manifest.get("sweep"),
        "expected": len(expected) if expected is not None else None,
        "done": len(done),
        "missing": [v["file"] for v in expected if v["file"] not in files] if expected is not None else None,
        "videos": [{key: r.get(key) for key in INDEX_KEYS} for r in done],
    }
    atomic_write_json(output_dir / INDEX, index)
    return index


#: What the sweep index keeps of each record.
INDEX_KEYS = ("file", "prompt_index", "sample", "prompt", "refined_prompt", "refiner", "seed", "node", "layout",
              "seconds", "run", "frames", "height", "width", "fps", "bytes", "pixels_sha256")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
