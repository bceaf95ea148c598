"""Collective check and fabric benchmark, run by torchrun on every rank.

Every rank joins the process group (NCCL on GPUs, gloo on CPU), checks all_reduce and
all_to_all for exact values, then times each op over a sweep of message sizes in three
scopes: the whole world, each node on its own (``intra:<node>``), and one rank per node
for every pair of nodes (``inter:<a>-<b>``), so a slow NIC or a bad P2P path shows up
where it is. Rank 0 writes the report (JSON) atomically; exit code 1 when any value was
wrong.

Every rank also writes a heartbeat file before and after each step, so the submit host
can name the ranks that never arrived at a collective long before NCCL's watchdog would.

    torchrun --nproc-per-node 2 -m opensora_core.collective_check --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import torch
import torch.distributed as dist

from clusterkit.diagnose.sizes import parse_sizes

# nccl-tests' bus-bandwidth factors (doc/PERFORMANCE.md), n = ranks in the group
BUSBW_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}
class Heartbeat:
    """``<dir>/rank-NNN.json``: the step this rank is in, rewritten atomically at each change."""

    def __init__(self, directory: Path | None, rank: int, host: str, node: str) -> None:
        self.path = directory / f"rank-{rank:03d}.json" if directory else None
        self.base = {"rank": rank, "host": host, "node": node, "pid": os.getpid()}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def beat(self, step: int, state: str, **what: object) -> None:
        if not self.path:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({**self.base, "step": step, "state": state, "t": time.time(), **what}))
        os.replace(tmp, self.path)


#: Seconds the process group waits beyond --timeout before it aborts a collective itself.
WATCHER_MARGIN_S = 60.0


def _check_all_reduce(world: int, rank: int, device: torch.device) -> dict:
    tensor = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(tensor)
    expected = world * (world + 1) / 2
    ok = bool(torch.all(tensor == expected).item())
    return {"op": "all_reduce", "ok": ok, "expected": expected, "got": float(tensor[0].item())}


def _check_all_to_all(world: int, rank: int, device: torch.device) -> dict:
    chunk = 16
    # rank r sends chunk j (values r*1e6 + j*chunk + k) to rank j
    send = torch.arange(world * chunk, dtype=torch.float64, device=device) + rank * 1e6
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)
    expected = torch.cat([torch.arange(chunk, dtype=torch.float64, device=device) + j * 1e6 + rank * chunk
                          for j in range(world)])
    ok = bool(torch.equal(recv, expected))
    mismatch = None if ok else int((recv != expected).nonzero()[0].item())
    return {"op": "all_to_all", "ok": ok, "first_mismatch_index": mismatch}


def _collective(op: str, nbytes: int, n: int, device: torch.device, group):
    """A closure running ``op`` once on ``nbytes`` (nccl-tests' size convention: the full array)."""
    numel = max(n, nbytes // 4 // n * n)
    data = torch.ones(numel, dtype=torch.float32, device=device)
    if op == "all_reduce":
        return lambda: dist.all_reduce(data, group=group)
    if op == "all_to_all":
        out = torch.empty_like(data)
        return lambda: dist.all_to_all_single(out, data, group=group)
    if op == "all_gather":
        shard = data[: numel // n].clone()
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return lambda: gather(data, shard, group=group)
    shard = torch.empty(numel // n, dtype=torch.float32, device=device)
    return lambda: dist.reduce_scatter_tensor(shard, data, group=group)


def _time(run, device: torch.device, group, iters: int, warmup: int) -> float:
    """Mean seconds per call on this rank (synchronised before and after)."""
    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier(group=group)
    start = time.perf_counter()
    for _ in range(iters):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def build_scopes(ranks: list[dict]) -> list[tuple[str, list[int]]]:
    """(scope name, member ranks): the world, each node alone, one rank per node for each pair."""
    by_node: dict[str, list[int]] = {}
    for r in sorted(ranks, key=lambda r: r["rank"]):
        by_node.setdefault(r["node"] or r["host"], []).append(r["rank"])
    scopes = [("world", [r["rank"] for r in sorted(ranks, key=lambda r: r["rank"])])]
    if len(by_node) > 1:
        scopes += [(f"intra:{node}", members) for node, members in by_node.items() if len(members) > 1]
        scopes += [(f"inter:{a}-{b}", [by_node[a][0], by_node[b][0]]) for a, b in combinations(by_node, 2)]
    return scopes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.collective_check")
    parser.add_argument("--result", type=Path, help="where rank 0 writes the JSON report")
    parser.add_argument("--heartbeat-dir", type=Path, help="where every rank writes its heartbeat")
    parser.add_argument("--sizes", help="8K,1M,64M or a range 8K:1G (default 8K,64K,1M on CPU, 8K:1G on GPU)")
    parser.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter,all_to_all")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a collective counts as hung")
    parser.add_argument("--no-scopes", action="store_true", help="time the whole world only")
    # test hook: make one rank never arrive at a step, to exercise hang detection end to end
    parser.add_argument("--stall-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stall-step", type=int, default=1, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    ops = [o.strip() for o in ns.ops.split(",") if o.strip()]
    for op in ops:
        if op not in BUSBW_FACTOR:
            parser.error(f"--ops {op!r}: valid choices are {', '.join(BUSBW_FACTOR)}")

    use_cuda = torch.cuda.is_available()
    try:
        sizes = parse_sizes(ns.sizes or ("8K:1G" if use_cuda else "8K,64K,1M"))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank_env = int(os.environ.get("RANK", "0"))
    host, node = socket.gethostname(), os.environ.get("CLUSTERKIT_NODE", "")
    heartbeat = Heartbeat(ns.heartbeat_dir, rank_env, host, node)
    heartbeat.beat(0, "enter", op="init_process_group", scope="world",
                   members=list(range(int(os.environ.get("WORLD_SIZE", "1")))))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    t0 = time.perf_counter()
    # The watcher on the submit host names a hung collective after --timeout from the heartbeats and
    # cancels the job; the process group's own timeout is only the backstop for a job nobody
    # watches, so it must not race the watcher (it did: the job sometimes died first, FAILED, on a
    # loaded machine).
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=ns.timeout + WATCHER_MARGIN_S))
    init_s = time.perf_counter() - t0
    rank, world = dist.get_rank(), dist.get_world_size()
    heartbeat.beat(0, "done", op="init_process_group")

    me = {"rank": rank, "local_rank": local_rank, "host": host, "pid": os.getpid(), "node": node,
          "device": str(device), "gpu": torch.cuda.get_device_name(device) if use_cuda else None,
          "init_s": round(init_s, 4)}
    ranks: list = [None] * world
    dist.all_gather_object(ranks, me)
    checks = [_check_all_reduce(world, rank, device), _check_all_to_all(world, rank, device)]
    all_checks: list = [None] * world
    dist.all_gather_object(all_checks, checks)

    scopes = build_scopes(ranks) if not ns.no_scopes else [("world", list(range(world)))]
    groups = {name: (dist.new_group(members) if name != "world" else None, members) for name, members in scopes}
    timings, step = [], 0
    for scope, (group, members) in groups.items():
        for op in ops:
            for nbytes in sizes:
                step += 1
                member = rank in members
                what = {"op": op, "scope": scope, "bytes": nbytes, "members": members}
                if ns.stall_rank == rank and ns.stall_step == step:
                    print(f"[collective_check] rank {rank}: stalling before step {step} (--stall-rank test hook)",
                          flush=True)
                    time.sleep(10**6)
                heartbeat.beat(step, "enter" if member else "idle", **what)
                seconds = _time(_collective(op, nbytes, len(members), device, group), device, group,
                                ns.iters, ns.warmup) if member else None
                heartbeat.beat(step, "done" if member else "idle", **what)
                every: list = [None] * world
                dist.all_gather_object(every, seconds)
                t = max(s for s in every if s is not None)  # a collective ends when its slowest rank does
                algbw = nbytes / t / 1e9
                timings.append({"scope": scope, "ranks": len(members), "op": op, "bytes": nbytes,
                                "time_us": round(t * 1e6, 2), "algbw_gbs": round(algbw, 4),
                                "busbw_gbs": round(algbw * BUSBW_FACTOR[op](len(members)), 4)})

    ok = all(c["ok"] for rank_checks in all_checks for c in rank_checks)
    heartbeat.beat(step + 1, "finished")
    if rank == 0:
        report = {
            "ok": ok, "world_size": world, "backend": backend, "torch": torch.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if use_cuda else None,
            "hosts": sorted({r["host"] for r in ranks}), "ranks": ranks,
            "checks": [{"rank": r, **c} for r, rank_checks in enumerate(all_checks) for c in rank_checks],
            "scopes": [{"name": name, "ranks": members} for name, members in scopes],
            "timings": timings,
        }
        print(json.dumps({k: report[k] for k in ("ok", "world_size", "backend", "hosts")}), flush=True)
        if ns.result:
            from clusterkit.launch.records import atomic_write_json

            atomic_write_json(ns.result, report)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
