"""Name the ranks that never arrived at a collective, from the heartbeats every rank writes.

Each rank of the collective check rewrites ``heartbeats/rank-NNN.json`` when it enters and
leaves a step (``{"rank", "host", "node", "step", "state", "op", "scope", "members", "t"}``).
A hang is: some member ranks have been waiting in step S longer than the timeout while
other members of S are still behind it (or never wrote a heartbeat at all). That is known
seconds after the timeout, not after NCCL's 10-30 minute watchdog.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_heartbeats(directory: Path) -> dict[int, dict]:
    beats = {}
    for path in sorted(directory.glob("rank-*.json")) if directory.exists() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now; the next poll reads it
        beats[int(data["rank"])] = data
    return beats


def find_hang(beats: dict[int, dict], *, now: float, timeout: float, world_size: int) -> dict | None:
    """The stuck step and who is missing, or None while everything moves (or nothing started)."""
    active = {r: b for r, b in beats.items() if b.get("state") != "finished"}
    if not active:
        return None
    step = max(b["step"] for b in active.values())
    waiting = {r: b for r, b in active.items()
               if b["step"] == step and b["state"] == "enter" and now - b["t"] >= timeout}
    if not waiting:
        return None
    first = next(iter(waiting.values()))
    members = first.get("members") or list(range(world_size))
    missing = []
    for rank in members:
        beat = beats.get(rank)
        if beat is None:
            missing.append({"rank": rank, "host": None, "node": None, "last": "no heartbeat: never started"})
        elif beat["step"] < step or beat["state"] not in ("enter", "done"):
            missing.append({"rank": rank, "host": beat["host"], "node": beat["node"],
                            "last": f"step {beat['step']} {beat.get('op', '')} ({beat['state']}), "
                                    f"{now - beat['t']:.0f}s ago"})
    return {
        "step": step, "op": first.get("op"), "scope": first.get("scope"), "bytes": first.get("bytes"),
        "waited_s": round(now - min(b["t"] for b in waiting.values()), 1),
        "waiting": sorted(waiting), "missing": missing,
        "verdict": (
            f"{'rank' if len(missing) == 1 else 'ranks'} {', '.join(str(m['rank']) for m in missing)} "
            f"never arrived at step {step} "
            f"({first.get('op')}, {first.get('scope')})" if missing else
            f"every member entered step {step} ({first.get('op')}, {first.get('scope')}) but it never "
            "completed: a link or transport problem, not a missing rank"
        ),
    }
