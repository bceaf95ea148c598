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
# the video size of plan, submit infer and bench infer; upstream's spellings --resolution/--num-frames too
RES_OPT = typer.Option(..., "--res", "--resolution",
                       help="Resolution: 144p 240p 360p 480p 720p 1080p 2k 4k (or 256 512 ...).")
FRAMES_OPT = typer.Option(..., "--frames", "--num-frames",
                          help="2s 4s 8s 16s 32s, 1x … 16x, or a frame count (1 = image).")
ASPECT_RATIO_OPT = typer.Option("9:16", "--aspect-ratio", help="H:W as in Open-Sora (9:16 is landscape).")
CKPT_DIR_OPT = typer.Option(None, "--ckpt-dir", help="Folder with dit/ t5/ vae2d/ vae3d/ (or give the four "
                            "--ckpt-path-* folders).")
CKPT_PATH_DIT_OPT = typer.Option(None, "--ckpt-path-dit", help="The transformer's own folder (a download of "
                                 "hpcai-tech/OpenSora-STDiT-v3); replaces --ckpt-dir's dit/.")
CKPT_PATH_T5_OPT = typer.Option(None, "--ckpt-path-t5", help="The text encoder's own folder (DeepFloyd/t5-v1_1-xxl); "
                                "replaces --ckpt-dir's t5/.")
CKPT_PATH_VAE2D_OPT = typer.Option(None, "--ckpt-path-vae2d", help="The spatial VAE's own folder (PixArt-alpha/"
                                   "pixart_sigma_sdxlvae_T5_diffusers); replaces --ckpt-dir's vae2d/.")
CKPT_PATH_VAE3D_OPT = typer.Option(None, "--ckpt-path-vae3d", help="The video VAE's own folder (hpcai-tech/"
                                   "OpenSora-VAE-v1.2); replaces --ckpt-dir's vae3d/.")


def ckpt_paths(dit: str | None, t5: str | None, vae2d: str | None, vae3d: str | None) -> dict[str, str]:
    """The ``--ckpt-path-<name>`` options given, by component."""
    return {name: path for name, path in (("dit", dit), ("t5", t5), ("vae2d", vae2d), ("vae3d", vae3d))
            if path is not None}


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
