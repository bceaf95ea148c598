"""Results are data; this is where they meet the terminal. The ``--json`` envelope is a
contract (schema ``clusterkit/v1``): scripts parse it, so fields are only ever added."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

SCHEMA = "clusterkit/v1"


def envelope(command: str, ok: bool, result: object = None, error: dict | None = None) -> dict:
    return {"schema": SCHEMA, "command": command, "ok": ok, "result": result, "error": error}


def print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def emit(command: str, result: object, render: Callable[[object], None], *, as_json: bool, ok: bool = True) -> None:
    """Print ``result`` as the JSON envelope or through ``render`` (rich)."""
    if as_json:
        print_json(envelope(command, ok, result))
    else:
        render(result)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
