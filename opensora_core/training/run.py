"""The training job, run by torchrun on every rank (``jobs/train-*.yaml``)::

    python -m opensora_core.training.run --config train_config.json --result result.json
        [--resume-from PATH] [--allow-dp-change]

``train_config.json`` (a ``TrainConfig``) is written into the run folder by ``clusterkit train``;
checkpoints, ``metrics.jsonl``, ``progress.json`` and ``train_attempts.json`` go next to it. A run
always continues from its own newest complete checkpoint when it has one (a Slurm requeue), else
from ``--resume-from`` (``clusterkit train --resume``), else it starts fresh.

Exit codes: 0 done (or stopped by SIGUSR2 after saving: the job is requeued), 2 bad input found
by the job (the message is in result.json), 1 anything else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
from pathlib import Path

from clusterkit.launch.records import atomic_write_json, record_job_failure

from .config import TrainConfig


def parse_fault(text: str | None):
    """``kill-in-save@N``: SIGKILL rank 0 in the middle of writing checkpoint N (a test hook for
    "the job died during a save"); None: no fault."""
    if not text:
        return None
    where, _, step = text.partition("@")
    if where != "kill-in-save" or not step.isdigit():
        raise ValueError(f"--fault {text!r}: expected kill-in-save@STEP")

    def fault(point: str, at: int) -> None:
        if point == "save" and at == int(step) and int(os.environ.get("RANK", "0")) == 0:
            print(f"[train] fault injection: SIGKILL during the save of step {at}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.training.run")
    parser.add_argument("--config", type=Path, required=True, help="train_config.json (TrainConfig)")
    parser.add_argument("--result", type=Path, required=True, help="where rank 0 writes the result JSON")
    parser.add_argument("--resume-from", type=Path, default=None, help="a checkpoint (or run folder) to start from")
    parser.add_argument("--allow-dp-change", action="store_true", help="accept another data-parallel size")
    parser.add_argument("--fault", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    trainer = None
    try:
        import torch
        import torch.distributed as dist

        from .trainer import RankContext, Trainer

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        config = TrainConfig.from_dict(json.loads(ns.config.read_text()))
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        if "MASTER_ADDR" in os.environ:  # torchrun
            dist.init_process_group(backend, timeout=timeout)
        else:  # one process started by hand: a group of one (the plugins need one)
            store = ns.config.parent.resolve() / f".dist-store-{os.getpid()}"
            dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=timeout)
        ctx = RankContext(rank=rank, world_size=world, local_rank=local_rank, device=device,
                          run_dir=ns.config.parent.resolve(), attempt=int(os.environ.get("CLUSTERKIT_RESTART", "0")),
                          job_id=os.environ.get("CLUSTERKIT_JOB_ID", ""))
        trainer = Trainer(config, ctx, resume_from=ns.resume_from, allow_dp_change=ns.allow_dp_change,
                          fault=parse_fault(ns.fault))
        trainer.install_signal_handler()
        trainer.build()
        trainer.resume()
        result = trainer.train()
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's result
        return record_job_failure(exc, tag="train", rank=rank, result_path=ns.result,
                                  log_hint="see the rank logs (clusterkit logs RUN)")
    if rank == 0:
        atomic_write_json(ns.result, result)
        print(f"[train] done: step {result['step']} ({result['stopped']}); {len(result['checkpoints'])} "
              f"checkpoint(s) in {trainer.checkpoint_root}", flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
