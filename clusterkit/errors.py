"""Typed errors. The CLI has one boundary (``cli.py``) that turns these into a message
and an exit code; library code raises, never prints and never calls ``sys.exit``.

Exit codes (the contract in docs/cli.md):
    0  ok
    1  a check failed, a job failed, or the cluster refused (ClusterkitError default)
    2  the user's input is wrong (UserError and subclasses)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2


class ClusterkitError(Exception):
    """Base of every error clusterkit raises on purpose.

    ``hint`` is one line that tells the user what to do next (shown under the message).
    """

    exit_code = EXIT_FAILED
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "kind": self.kind, "message": self.message, "hint": self.hint}


class UserError(ClusterkitError):
    """Bad input: a flag value, a file, a name. Exit code 2."""

    exit_code = EXIT_USER_ERROR
    kind = "user_error"


class InvalidChoice(UserError):
    """A value that must be one of a known set. The message names value and choices."""

    def __init__(
        self,
        what: str,
        value: object,
        choices: Iterable[object],
        *,
        hint: str | None = None,
        suggestion: str | None | bool = True,
    ) -> None:
        # suggestion: True = compute a did-you-mean from choices; a string = use it; None/False = none
        # (e.g. when the value is ambiguous and the hint lists the candidates instead).
        self.what = what
        self.value = value
        self.choices = [str(c) for c in choices]
        if suggestion is True:
            suggestion = did_you_mean(str(value), self.choices)
        self.suggestion = suggestion or None
        message = f"{what} {value!r} is not valid; valid choices: {', '.join(self.choices)}"
        if suggestion:
            message += f". Did you mean {suggestion!r}?"
        super().__init__(message, hint=hint)


class InventoryError(UserError):
    """A mistake in nodes.yaml: names the file, line, key, value and the valid choices."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        key: str | None = None,
        value: object = None,
        choices: Sequence[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.value = value
        self.choices = list(choices) if choices else None
        where = f"{path}:{line}" if line else path
        parts = [f"{where}: {message}"]
        if choices:
            parts.append(f"valid choices: {', '.join(choices)}")
        super().__init__("; ".join(parts), hint=hint)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data.update(path=self.path, line=self.line, key=self.key, value=_jsonable(self.value), choices=self.choices)
        return data


class NotFound(UserError):
    """A run, node or file the user named does not exist."""


class SlurmError(ClusterkitError):
    """Slurm refused or failed (sbatch error, controller unreachable)."""

    kind = "slurm_error"


class LaunchError(ClusterkitError):
    """A job could not be started or its rendezvous could not be set up."""

    kind = "launch_error"


class JobFailed(ClusterkitError):
    """A job ran and failed (non-zero exit of a rank, a failed result check)."""

    kind = "job_failed"


class RefineError(ClusterkitError):
    """A prompt refiner (external command or HTTP endpoint) failed or answered nothing usable. The
    message names the command or the endpoint, never a key or a command's arguments."""

    kind = "refine_error"


def did_you_mean(value: str, choices: Iterable[str]) -> str | None:
    """The closest choice to ``value`` (case-insensitive), or None when nothing is close."""
    import difflib

    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return lowered[value.lower()]
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
