"""What torchrun starts on every rank: ``python -m clusterkit.launch.rank_main RUN_DIR MODULE ARGS...``.

It sends the rank's stdout/stderr (Python and C level, so NCCL's own prints too) to
``RUN_DIR/logs/rank-NNN.log``, records who and where the rank is in
``RUN_DIR/ranks/rank-NNN.json`` (host, pid, rendezvous address) and then runs MODULE as
``__main__`` with ARGS. Importing this module does not import torch.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import time
from pathlib import Path


def _redirect_output(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        sys.exit("usage: python -m clusterkit.launch.rank_main RUN_DIR MODULE [ARGS...]")
    run_dir, module, args = Path(argv[0]), argv[1], argv[2:]
    from clusterkit.launch.records import atomic_write_json
    from clusterkit.launch.render import RunPaths

    paths = RunPaths(run_dir)
    rank = int(os.environ.get("RANK", "0"))
    _redirect_output(paths.rank_log(rank))
    info = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "host": socket.gethostname(),
        "node": os.environ.get("CLUSTERKIT_NODE", ""),
        "pid": os.getpid(),
        "master_addr": os.environ.get("MASTER_ADDR"),
        "master_port": os.environ.get("MASTER_PORT"),
        "restart": int(os.environ.get("CLUSTERKIT_RESTART", "0")),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started_at": time.time(),
    }
    atomic_write_json(paths.ranks / f"rank-{rank:03d}.json", info)
    print(f"[clusterkit] rank {rank}/{info['world_size']} on {info['host']} pid {info['pid']}: "
          f"{module} {' '.join(args)}", flush=True)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
