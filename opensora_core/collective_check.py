"""Collective check: the first real workload, run by torchrun on every rank.

Every rank joins the process group (NCCL on GPUs, gloo on CPU), runs all_reduce and
all_to_all, verifies the numbers exactly, times each op at a few message sizes and
reports world size, ranks, hosts and timings. Rank 0 writes the report (JSON) atomically;
the exit code is 1 when any rank saw a wrong value.

    torchrun --nproc-per-node 2 -m opensora_core.collective_check --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# nccl-tests' bus-bandwidth factors (doc/PERFORMANCE.md), n = ranks
BUSBW_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def parse_size(text: str) -> int:
    """``8K`` / ``1M`` / ``4096`` -> bytes."""
    text = text.strip().upper()
    digits = text.rstrip("KMGB")
    unit = text[len(digits):]
    if not digits.isdigit() or unit not in _UNITS or int(digits) <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is not like 8K, 1M, 64M or 4096")
    return int(digits) * _UNITS[unit]


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


def _time_op(op: str, nbytes: int, world: int, device: torch.device, iters: int, warmup: int) -> float:
    """Mean seconds per call on this rank (synchronised before and after)."""
    numel = max(world, nbytes // 4 // world * world)  # all_to_all needs a multiple of world
    data = torch.ones(numel, dtype=torch.float32, device=device)
    out = torch.empty_like(data)

    def run() -> None:
        if op == "all_reduce":
            dist.all_reduce(data)
        else:
            dist.all_to_all_single(out, data)

    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.collective_check")
    parser.add_argument("--result", type=Path, help="where rank 0 writes the JSON report")
    parser.add_argument("--sizes", default="8K,1M", help="comma-separated message sizes, e.g. 8K,1M,64M")
    parser.add_argument("--ops", default="all_reduce,all_to_all")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a collective counts as hung")
    ns = parser.parse_args(argv)
    sizes = [parse_size(s) for s in ns.sizes.split(",") if s.strip()]
    ops = [o.strip() for o in ns.ops.split(",") if o.strip()]
    for op in ops:
        if op not in BUSBW_FACTOR:
            parser.error(f"--ops {op!r}: valid choices are {', '.join(BUSBW_FACTOR)}")

    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    t0 = time.perf_counter()
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=ns.timeout))
    init_s = time.perf_counter() - t0
    rank, world = dist.get_rank(), dist.get_world_size()

    me = {
        "rank": rank, "local_rank": local_rank, "host": socket.gethostname(), "pid": os.getpid(),
        "node": os.environ.get("CLUSTERKIT_NODE", ""), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if use_cuda else None, "init_s": round(init_s, 4),
    }
    ranks: list = [None] * world
    dist.all_gather_object(ranks, me)

    checks = [_check_all_reduce(world, rank, device), _check_all_to_all(world, rank, device)]
    all_checks: list = [None] * world
    dist.all_gather_object(all_checks, checks)

    timings = []
    for op in ops:
        for nbytes in sizes:
            seconds = _time_op(op, nbytes, world, device, ns.iters, ns.warmup)
            slowest: list = [None] * world
            dist.all_gather_object(slowest, seconds)
            t = max(slowest)  # a collective ends when its slowest rank does
            algbw = nbytes / t / 1e9
            timings.append({
                "op": op, "bytes": nbytes, "time_us": round(t * 1e6, 2), "algbw_gbs": round(algbw, 4),
                "busbw_gbs": round(algbw * BUSBW_FACTOR[op](world), 4),
            })

    ok = all(c["ok"] for rank_checks in all_checks for c in rank_checks)
    if rank == 0:
        report = {
            "ok": ok, "world_size": world, "backend": backend,
            "torch": torch.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if use_cuda else None,
            "hosts": sorted({r["host"] for r in ranks}),
            "ranks": ranks,
            "checks": [{"rank": r, **c} for r, rank_checks in enumerate(all_checks) for c in rank_checks],
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
