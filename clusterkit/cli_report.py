"""``clusterkit report RUN [RUN...]``: a static HTML gallery of inference runs, side by side
(``clusterkit/report/``). No torch here; PyAV is imported only to make the posters."""

from __future__ import annotations

from typing import Optional

import typer

from clusterkit.cli_common import JSON_OPT, get_state
from clusterkit.output import console, emit


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report_command)


def report_command(
    ctx: typer.Context,
    runs: list[str] = typer.Argument(..., metavar="RUN...",
                                     help="Run ids (or unique prefixes), run folders or sweep output folders."),
    output: Optional[str] = typer.Option(None, "--out", "--output", metavar="DIR",
                                         help="Report folder (default: FIRST_RUN_DIR/report, or "
                                         "report-vs-<other runs> for several); replaced if it holds an older report."),
    match: str = typer.Option("prompt", "--match", help="Rows by: prompt (original prompt text and sample) | "
                              "index (prompt index and sample)."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title (default: the run labels)."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Write a self-contained HTML gallery (index.html + videos + posters) comparing runs side by side."""
    from pathlib import Path

    from clusterkit.errors import InvalidChoice
    from clusterkit.report.build import build_report, default_output
    from clusterkit.report.gallery import MATCH_CHOICES
    from clusterkit.report.sources import load_columns

    state = get_state(ctx, json_flag)
    if match not in MATCH_CHOICES:
        raise InvalidChoice("--match", match, MATCH_CHOICES)
    project = state.project()
    columns = load_columns(project, list(runs))
    folder = Path(output) if output else default_output(columns)
    result = build_report(columns, folder, match=match, title=title)
    emit("report", result, _render, as_json=state.json)


def _render(result: dict) -> None:
    from rich.markup import escape

    out = console()
    for column in result["columns"]:
        for note in column["notes"]:
            out.print(f"[yellow]note:[/yellow] {escape(column['label'])}: {escape(note)}")
    for skipped in result["skipped"]:
        out.print(f"[yellow]skipped:[/yellow] {escape(skipped['run'])}: {escape(skipped['detail'])}")
    out.print(f"report: {result['videos']} video(s) from {len(result['columns'])} run(s) in "
              f"{len(result['rows'])} row(s), rows matched by {result['match']}")
    out.out(result["page"], highlight=False)
