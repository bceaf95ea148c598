"""Rendezvous ports for multi-node jobs.

Every node must agree on the port before torchrun starts, and two jobs on one head node
must never share it (EADDRINUSE, or worse: two jobs joining one store). The rule:

1. the first candidate is derived from the job id and the requeue count, inside a
   configurable range that excludes torch's defaults 29500 (static) and 29400 (c10d);
2. the head node probes candidates by binding the wildcard address (a probe on
   ``localhost`` misses a port held on another interface) and steps to the next one on a
   collision, wrapping inside the range;
3. the chosen port and every candidate tried are recorded with the run.

Single-node jobs use ``torchrun --standalone``, where the OS picks a free port.
"""

from __future__ import annotations

import errno
import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

from clusterkit.errors import LaunchError, UserError

DEFAULT_PORT_RANGE = (20000, 29000)
TORCH_DEFAULT_PORTS = frozenset({29500, 29400})


@dataclass(frozen=True)
class PortChoice:
    port: int
    first_candidate: int
    tried: tuple[int, ...]  # candidates found busy, in order

    def to_dict(self) -> dict:
        return {"port": self.port, "first_candidate": self.first_candidate, "busy": list(self.tried)}


def validate_range(port_range: tuple[int, int]) -> tuple[int, int]:
    low, high = port_range
    if not (1024 <= low < high <= 65536):
        raise UserError(f"port range {low}-{high} is invalid: need 1024 <= low < high <= 65536")
    return low, high


def first_candidate(job_id: str, restart_count: int, port_range: tuple[int, int] = DEFAULT_PORT_RANGE) -> int:
    """Deterministic per (job, attempt): every node computes the same number without talking."""
    low, high = validate_range(port_range)
    digest = hashlib.sha256(f"{job_id}:{restart_count}".encode()).digest()
    port = low + int.from_bytes(digest[:8], "big") % (high - low)
    while port in TORCH_DEFAULT_PORTS:  # only reachable when the range is configured to include them
        port = low + (port + 1 - low) % (high - low)
    return port


def port_is_free(port: int) -> bool:
    """True when the wildcard address can be bound on ``port`` right now (TCP)."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if family == socket.AF_INET6:
                continue  # IPv6 present but unusable; the IPv4 probe decides
            raise
        finally:
            sock.close()
    return True


def choose_port(
    job_id: str,
    restart_count: int,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
    is_free: Callable[[int], bool] = port_is_free,
) -> PortChoice:
    """Probe from the derived candidate upwards (wrapping) until a free port is found."""
    low, high = validate_range(port_range)
    start = first_candidate(job_id, restart_count, (low, high))
    busy: list[int] = []
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port in TORCH_DEFAULT_PORTS:
            continue
        if is_free(port):
            return PortChoice(port=port, first_candidate=start, tried=tuple(busy))
        busy.append(port)
    raise LaunchError(
        f"no free rendezvous port in {low}-{high - 1} on {socket.gethostname()} ({len(busy)} busy)",
        hint="widen port_range in the job preset or free ports on the head node",
    )
