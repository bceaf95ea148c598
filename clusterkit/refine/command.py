"""The external-command refiner: a program the user configures refines each prompt.

The command is an argv list (never a shell string; nothing is ever passed through a shell). For
every prompt it is started once, gets the prompt (UTF-8) on stdin and prints the refined prompt on
stdout; whitespace is collapsed. A non-zero exit, no output or a timeout is a ``RefineError``
naming the program (``argv[0]``; not its arguments, which may carry tokens) and the last line of
its stderr.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.errors import RefineError, UserError

STDERR_TAIL = 300


@dataclass(frozen=True)
class CommandRefiner:
    """Runs ``argv`` once per prompt in ``cwd`` with the environment ``environ``. Neither is in the
    ``repr``: the environment holds keys and the arguments may hold tokens."""

    argv: tuple[str, ...] = field(repr=False)
    timeout_s: float
    environ: Mapping[str, str] = field(repr=False)
    cwd: Path | None = None
    name: str = "command"
    pure = False  # not a field: it runs a program, so a dry run does not call it

    def describe(self) -> str:
        return f"command {self.program!r}"

    @property
    def program(self) -> str:
        return self.argv[0]

    def refine(self, prompt: str) -> str:
        what = f"refine command {self.program!r}"
        try:
            proc = subprocess.run(list(self.argv), input=prompt.encode(), capture_output=True,
                                  timeout=self.timeout_s, env=dict(self.environ), cwd=self.cwd, check=False)
        except FileNotFoundError:
            raise RefineError(f"{what} not found", hint="command.argv[0] must be a program on PATH or a path "
                              "(relative paths start from the config file's folder)") from None
        except PermissionError:
            raise RefineError(f"{what} is not executable") from None
        except subprocess.TimeoutExpired:
            raise RefineError(f"{what} did not answer within {self.timeout_s:g} s (it was stopped)",
                              hint="raise command.timeout_s in the refine config") from None
        if proc.returncode != 0:
            raise RefineError(f"{what} exited with code {proc.returncode}{_stderr_tail(proc.stderr)}")
        text = " ".join(proc.stdout.decode("utf-8", errors="replace").split())
        if not text:
            raise RefineError(f"{what} printed no refined prompt{_stderr_tail(proc.stderr)}",
                              hint="it must print the refined prompt on stdout")
        return text


def _stderr_tail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return f": {last[:STDERR_TAIL]}{'…' if len(last) > STDERR_TAIL else ''}"


def check_argv(argv: object, where: str) -> tuple[str, ...]:
    """A non-empty list of strings; a string (shell text) is refused."""
    if isinstance(argv, str):
        raise UserError(f"{where}: command.argv must be a list of arguments, not a shell string",
                        hint='e.g. argv: ["python3", "refine.py", "--style", "detailed"]')
    if not isinstance(argv, Sequence) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise UserError(f"{where}: command.argv must be a non-empty list of non-empty strings")
    return tuple(argv)
