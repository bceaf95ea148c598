"""Talking to Slurm's command-line tools: one call per pass for all jobs or nodes.

``Runner`` is the seam: tests pass a fake that returns recorded output; the parsers are
pure functions of that output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clusterkit.errors import SlurmError

Runner = Callable[[list[str], float], "CommandResult"]

# squeue/sacct state -> the state clusterkit reports (None: keep Slurm's word)
_STATE_MAP = {"COMPLETING": "RUNNING", "CONFIGURING": "PENDING", "REQUEUED": "PENDING", "REQUEUE_HOLD": "PENDING",
              "REQUEUE_FED": "PENDING", "RESIZING": "RUNNING", "SUSPENDED": "SUSPENDED", "STAGE_OUT": "RUNNING",
              "SIGNALING": "RUNNING", "STOPPED": "RUNNING", "CANCELLED+": "CANCELLED", "BOOT_FAIL": "FAILED",
              "DEADLINE": "TIMEOUT", "SPECIAL_EXIT": "FAILED", "REVOKED": "CANCELLED"}


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def run_command(argv: list[str], timeout: float) -> CommandResult:
    """Run a Slurm client command (argv list, never a shell) with a hard timeout."""
    if shutil.which(argv[0]) is None:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]} timed out after {timeout:g}s")
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def controller_answers(runner: Runner = run_command, timeout: float = 3.0) -> bool:
    """True when a Slurm controller answers ``scontrol ping`` within ``timeout`` seconds."""
    result = runner(["scontrol", "ping"], timeout)
    return result.returncode == 0 and "UP" in result.stdout


def normalise_state(state: str) -> str:
    state = state.strip().split()[0] if state.strip() else "UNKNOWN"
    if state.startswith("CANCELLED"):
        return "CANCELLED"
    return _STATE_MAP.get(state, state)


def parse_squeue(text: str) -> dict[str, str]:
    """``squeue -h -o %i|%T`` output -> {job_id: state}."""
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.split("|", 1)
            states[job_id.strip()] = normalise_state(state)
    return states


def parse_sacct(text: str) -> dict[str, str]:
    """``sacct -n -P -o JobID,State`` -> {job_id: state}, ignoring step lines (``123.0``, ``123.batch``)."""
    states = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 2 and "." not in parts[0]:
            states[parts[0].strip()] = normalise_state(parts[1])
    return states


def job_states(job_ids: Iterable[str], runner: Runner = run_command) -> tuple[dict[str, str], list[str]]:
    """States of many jobs with one squeue call, then one sacct call for those squeue forgot.

    Returns (states, notes). Jobs neither tool knows are absent: the caller falls back to
    the result files the job writes itself (accounting is often disabled: no slurmdbd).
    """
    ids = sorted(set(job_ids))
    if not ids:
        return {}, []
    notes: list[str] = []
    result = runner(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)], 10.0)
    states = parse_squeue(result.stdout) if result.returncode == 0 else {}
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        notes.append(f"squeue failed: {result.stderr.strip() or result.returncode}")
    missing = [i for i in ids if i not in states]
    if missing:
        result = runner(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)], 10.0)
        if result.returncode == 0:
            states.update({k: v for k, v in parse_sacct(result.stdout).items() if k in missing})
        else:
            notes.append("sacct unavailable (" + (result.stderr.strip().splitlines() or ["no output"])[-1] + ")")
    return {i: states[i] for i in ids if i in states}, notes


def parse_sinfo_nodes(text: str) -> dict[str, dict]:
    """``sinfo -N -h -o %N|%T|%G|%P`` -> {node: {state, gres, partitions}}."""
    nodes: dict[str, dict] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        name, state, gres, partition = (p.strip() for p in parts[:4])
        entry = nodes.setdefault(name, {"state": state.lower(), "gres": gres, "partitions": []})
        entry["partitions"].append(partition.rstrip("*"))
    return nodes


def node_states(runner: Runner = run_command, timeout: float = 3.0) -> dict[str, dict] | None:
    """Live node states from one sinfo call, or None when no controller answers in time."""
    result = runner(["sinfo", "-N", "-h", "-o", "%N|%T|%G|%P"], timeout)
    if result.returncode != 0:
        return None
    return parse_sinfo_nodes(result.stdout)


def cancel(job_ids: Iterable[str], runner: Runner = run_command) -> None:
    ids = list(job_ids)
    if not ids:
        return
    result = runner(["scancel", *ids], 30.0)
    if result.returncode != 0:
        raise SlurmError(f"scancel {' '.join(ids)} failed: {result.stderr.strip()}")
