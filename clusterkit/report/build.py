"""Build a report folder: ``index.html``, ``report.json`` and ``media/`` (the videos and posters).

The folder is built under a temporary name next to its destination and renamed into place, so
nobody ever opens half a report; building it again replaces it. A folder that is not a report
(no ``report.json`` of ours) is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from clusterkit.errors import UserError
from clusterkit.launch.records import atomic_write_json, atomic_write_text, process_umask
from clusterkit.report.gallery import OK, Tile, match_rows
from clusterkit.report.media import place_column
from clusterkit.report.page import render_page
from clusterkit.report.sources import Column

SCHEMA = "clusterkit/report/v1"
MARKER = "report.json"
REPORT_DIR = "report"


def default_output(columns: Sequence[Column]) -> Path:
    """Inside the first RUN's folder: ``report/`` for one RUN, ``report-vs-<other labels>/`` for
    several (shortened with a digest when long), so each comparison keeps its own folder."""
    first = Path(columns[0].folder)
    others = [re.sub(r"[^A-Za-z0-9._-]+", "-", c.label).strip("-.") or "run" for c in columns[1:]]
    if not others:
        return first / REPORT_DIR
    name = f"{REPORT_DIR}-vs-" + "-vs-".join(others)
    if len(name) > 100:
        digest = hashlib.sha256("\0".join(c.label for c in columns).encode()).hexdigest()[:8]
        name = f"{REPORT_DIR}-vs-{others[0][:60]}-and-{len(others) - 1}-more-{digest}"
    return first / name


def build_report(columns: Sequence[Column], output: Path, *, match: str = "prompt", title: str | None = None,
                 now: float | None = None) -> dict:
    """Write the report of ``columns`` to the folder ``output`` (atomically); returns what
    ``report.json`` holds: the page, columns, tiles, rows, and the videos skipped (and why)."""
    output = Path(output).expanduser().resolve()
    _check_replaceable(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as exc:
        raise UserError(f"cannot write the report in {str(output.parent)!r}: {exc.strerror or exc}",
                        hint="give a folder you can write with --out DIR") from None
    try:
        os.chmod(building, 0o777 & ~process_umask())  # mkdtemp makes it private
        tiles = [place_column(column, number, building) for number, column in enumerate(columns)]
        rows = match_rows(tiles, match)
        title = title or "clusterkit report: " + " vs ".join(c.label for c in columns)
        generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now if now is not None else time.time()))
        summary = _summary(columns, tiles, rows, output, match, title, generated)
        atomic_write_text(building / "index.html", render_page(title, columns, rows, match=match, generated=generated))
        atomic_write_json(building / MARKER, summary)
        _swap_into_place(building, output)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def _summary(columns, tiles, rows, output: Path, match: str, title: str, generated: str) -> dict:
    flat = [(column, tile) for column, column_tiles in zip(columns, tiles) for tile in column_tiles]
    return {
        "schema": SCHEMA, "title": title, "generated": generated, "match": match,
        "output": str(output), "page": str(output / "index.html"),
        "videos": sum(tile.status == OK for _, tile in flat),
        "skipped": [{"run": c.label, "file": str(t.video.path), "status": t.status, "detail": t.detail}
                    for c, t in flat if t.status != OK],
        "columns": [{"label": c.label, "kind": c.kind, "folder": str(c.folder), "states": [r.state for r in c.runs],
                     "videos": len(c.videos), "notes": list(c.notes)} for c in columns],
        "tiles": [_tile_summary(c, t) for c, t in flat],
        "rows": [{"title": row.title, "subtitle": row.subtitle,
                  "cells": [None if t is None else {"file": t.video.path.name, "status": t.status}
                            for t in row.cells]} for row in rows],
    }


def _tile_summary(column: Column, tile: Tile) -> dict:
    entry = tile.video.entry
    return {"run": column.label, "file": tile.video.path.name, "status": tile.status, "href": tile.href,
            "poster": tile.poster, "prompt": entry.get("prompt"), "refined_prompt": entry.get("refined_prompt"),
            "seed": entry.get("seed"), "node": entry.get("node"), "seconds": entry.get("seconds")}


def _check_replaceable(output: Path) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise UserError(f"--output {str(output)!r} is a file, not a folder")
    marker = output / MARKER
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text(encoding="utf-8")).get("schema") == SCHEMA
        except (OSError, ValueError, AttributeError):
            ours = False
    if not ours and any(output.iterdir()):
        raise UserError(f"--output {str(output)!r} is a folder that holds something other than a report; "
                        "a report replaces its whole folder", hint="give a new or empty folder")


def _swap_into_place(building: Path, output: Path) -> None:
    """Rename ``building`` to ``output``; an old report there is moved aside first and removed after."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.rename(output, old / "report")
    try:
        os.rename(building, output)
    except BaseException:
        if old is not None:
            os.rename(old / "report", output)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

