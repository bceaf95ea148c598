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
