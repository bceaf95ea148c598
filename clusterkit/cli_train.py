"""``clusterkit train``: launch a training run (``clusterkit/train.py``) and, with ``--wait``, show a
progress bar over its steps and print the checkpoints it wrote. No torch here: the job imports it."""

from __future__ import annotations

from typing import Optional

import typer

from clusterkit.cli_common import EXECUTOR_OPT, JSON_OPT, JobProgressBar, get_state
from clusterkit.output import console, emit


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command("train")(train_command)


def train_command(
    ctx: typer.Context,
    path: Optional[str] = typer.Argument(
        None, metavar="PATH", help="With --resume: a run id, run folder or step-N folder (default: the newest run)."),
    config: Optional[str] = typer.Option(None, "--config", help="A jobs/train-*.yaml preset (path or name)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint (of PATH)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    data: Optional[str] = typer.Option(None, "--data", help="The data CSV (path, text[, num_frames, height, ...])."),
    ckpt_dir: Optional[str] = typer.Option(None, "--ckpt-dir", help="Folder with dit/ t5/ vae2d/ vae3d/."),
    plugin: Optional[str] = typer.Option(None, "--plugin", help="zero2 (FSDP2) | ddp | colossalai-zero2."),
    settings: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config setting (YAML)."),
    node: Optional[str] = typer.Option(None, "--node", help="Train on this node (default: the planner's best)."),
    nodes: Optional[str] = typer.Option(None, "--nodes", help="Comma-separated nodes for a multi-node run."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Ranks per node (default: the plan's; tiny: 1)."),
    executor: str = EXECUTOR_OPT,
    nccl_profile: Optional[str] = typer.Option(None, "--nccl-profile", help="Profile from env/nccl.yaml."),
    env: list[str] = typer.Option([], "--env", metavar="KEY=VALUE", help="Extra environment (wins over profiles)."),
    time_limit: Optional[int] = typer.Option(None, "--time-limit", help="Slurm time limit in minutes."),
    allow_dp_change: bool = typer.Option(
        False, "--allow-dp-change", help="Resume on another number of ranks: the sampler restarts its epoch."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run, show progress, print the checkpoints."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="With --wait: cancel after this many seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be submitted; submit nothing."),
    force: bool = typer.Option(False, "--force", help="Run even if the planner says it does not fit."),
    fault: Optional[str] = typer.Option(None, "--fault", hidden=True, help="Test hook: kill-in-save@STEP."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Train Open-Sora 1.2 (or the tiny model) on bucketed video data; resume exactly from checkpoints."""
    from clusterkit.errors import UserError
    from clusterkit.launch.envprofiles import parse_env_assignments
    from clusterkit.train import parse_set, submit_train

    state = get_state(ctx, json_flag)
    if path is not None and not resume:
        raise UserError(f"unexpected argument {path!r}: a PATH only goes with --resume", hint="clusterkit train --resume PATH")
    overrides = parse_set(settings)
    for key, value in (("max_steps", max_steps), ("data", data), ("ckpt_dir", ckpt_dir), ("plugin", plugin)):
        if value is not None:
            overrides[key] = value
    progress = None if state.json or not wait or dry_run else _ProgressBar()
    try:
        result = submit_train(
            state.project(), config=config, resume=(path or "latest") if resume else None, overrides=overrides,
            node=node, nodes=nodes, gpus=gpus, executor=executor, nccl_profile=nccl_profile,
            env=parse_env_assignments(env), time_limit_min=time_limit, allow_dp_change=allow_dp_change, wait=wait,
            dry_run=dry_run, force=force, timeout_s=timeout, fault=fault,
            on_progress=progress.update if progress else None, on_submitted=progress.start if progress else None,
        )
    finally:
        if progress:
            progress.stop()
    emit("train", result, _render, as_json=state.json)


class _ProgressBar(JobProgressBar):
    """The bar over the run's steps."""

    def announce(self, submitted: dict) -> None:
        _render_submitted(submitted)

    def advance(self, event: dict) -> None:
        if event.get("stage") == "training":
            loss = event.get("loss")
            self.show(total=event.get("max_steps"), completed=event.get("step", 0),
                      description=f"epoch {event.get('epoch', 0)} loss {loss:.4f}" if loss is not None else "training")
        else:
            super().advance(event)


def _render_submitted(result: dict) -> None:
    from rich.markup import escape

    out = console()
    for warning in result["warnings"]:
        out.print(f"[bold red]WARNING:[/bold red] [bold]{escape(warning)}[/bold]")
    what = "dry run (nothing submitted)" if result["dry_run"] else f"submitted run {result['run_id']}"
    jobs = f", job {','.join(result['job_ids'])}" if result["job_ids"] else ""
    cfg = result["config"]
    out.print(f"{what}: {result['preset']} ({cfg['model']}, {cfg['plugin']}, {cfg['dtype']}) on "
              f"{','.join(result['nodes'])} x {result['gpus_per_node']} = {result['world_size']} rank(s) "
              f"({result['executor']}{jobs})")
    for note in result["notes"]:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    out.print(f"run folder: {result['run_dir']}")


def _render(result: dict) -> None:
    import shlex

    out = console()
    if "state" not in result:  # not waited for
        _render_submitted(result)
        if result["dry_run"]:
            rendered = result["rendered"]
            if "slurm" in rendered:
                out.print("[bold]sbatch script[/bold]")
                out.out(rendered["slurm"]["sbatch"], highlight=False)
            out.print("[bold]torchrun argv[/bold]")
            out.out(shlex.join(rendered["torchrun"]), highlight=False)
        out.print(f"checkpoints (when written): {result['expected_checkpoints']}")
        return
    out.print(f"run {result['run_id']} {result['state']}: step {result['step']} ({result['stopped']}), "
              f"{len(result['attempts'] or [])} attempt(s), {result['samples_seen']} samples, "
              f"{result['bad_samples']} skipped")
    for note in result.get("job_notes") or []:
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print("checkpoints:")
    for path in result["checkpoints"] or []:
        out.out(f"  {path}", highlight=False)
    if result.get("export"):
        out.print(f"EMA export (for --ckpt-dir): {result['export']}")
    out.print(f"metrics: {result['metrics']}  (clusterkit runs plot {result['run_id']})")
