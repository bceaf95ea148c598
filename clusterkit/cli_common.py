"""What every CLI command module shares: the global state and the common options.

Command modules (``cli.py`` and ``cli_*.py``) import from here, never from each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import typer

JSON_OPT = typer.Option(False, "--json", help="Print the versioned JSON envelope instead of tables.")
EXECUTOR_OPT = typer.Option("auto", "--executor", help="auto (Slurm when a controller answers) | slurm | local.")


@dataclass
class State:
    """Global options, set by the top-level callback."""

    inventory: Optional[str] = None
    json: bool = False
    debug: bool = False

    def project(self):
        from clusterkit.project import Project

        return Project.from_options(self.inventory, dict(os.environ))


def get_state(ctx: typer.Context, json_flag: bool = False) -> State:
    """The global state, with a command-level ``--json`` folded in."""
    state = ctx.find_object(State) or State()
    state.json = state.json or json_flag
    return state


class JobProgressBar:
    """A transient rich progress bar (on stderr) over a waited-for job, fed from its progress.json.

    Subclasses say what to print once the job is submitted (``announce``) and how an event moves
    the bar (``advance``); ``start``/``update``/``stop`` are the ``on_submitted``/``on_progress``
    hooks of the submit functions and the ``finally`` of the command."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None

    def announce(self, submitted: dict) -> None:
        """Print what was submitted, before the bar appears."""

    def advance(self, event: dict) -> None:
        """Move the bar for one progress event (the default: name the stage)."""
        stage = event.get("stage", "")
        if stage:
            self.show(description=stage.replace("_", " "))

    def show(self, **fields) -> None:
        """``rich.progress.Progress.update`` of the bar's one task."""
        self._progress.update(self._task, **fields)

    def start(self, submitted: dict) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from clusterkit.output import console

        self.announce(submitted)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task("waiting for the job", total=None)

    def update(self, event: dict) -> None:
        if self._progress is not None:
            self.advance(event)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
