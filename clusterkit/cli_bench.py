"""``clusterkit bench infer``: run the inference benchmark on a node (``clusterkit/bench.py``), show
its progress, then the stage times, memory and the calibration it stored for ``clusterkit plan``.
No torch here: the job imports it."""

from __future__ import annotations

from typing import Optional

import typer

from clusterkit.cli_common import (ASPECT_RATIO_OPT, CKPT_DIR_OPT, CKPT_PATH_DIT_OPT, CKPT_PATH_T5_OPT,
                                  CKPT_PATH_VAE2D_OPT, CKPT_PATH_VAE3D_OPT, EXECUTOR_OPT, FRAMES_OPT, JSON_OPT,
                                  RES_OPT, JobProgressBar, ckpt_paths, get_state)
from clusterkit.output import console, emit

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that feed the planner: inference.")


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group to ``app``."""
    app.add_typer(bench_app, name="bench")


@bench_app.command("infer")
def infer_command(
    ctx: typer.Context,
    node: str = typer.Option(..., "--node", help="The node to measure (its GPU model gets the calibration)."),
    res: str = RES_OPT,
    frames: str = FRAMES_OPT,
    aspect_ratio: str = ASPECT_RATIO_OPT,
    model: str = typer.Option("opensora-v1.2", "--model", help="opensora-v1.2 (needs --ckpt-dir or the four "
                              "--ckpt-path-*) | tiny (random without them)."),
    ckpt_dir: Optional[str] = CKPT_DIR_OPT,
    ckpt_path_dit: Optional[str] = CKPT_PATH_DIT_OPT,
    ckpt_path_t5: Optional[str] = CKPT_PATH_T5_OPT,
    ckpt_path_vae2d: Optional[str] = CKPT_PATH_VAE2D_OPT,
    ckpt_path_vae3d: Optional[str] = CKPT_PATH_VAE3D_OPT,
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs: one group of CFG split x --sp (one video)."),
    sp: Optional[int] = typer.Option(None, "--sp", help="Sequence-parallel degree; must divide the attention heads."),
    cfg_parallel: Optional[bool] = typer.Option(
        None, "--cfg-parallel/--no-cfg-parallel", help="Split the CFG pair over 2 GPUs."),
    sp_scheme: str = typer.Option("dsp", "--sp-scheme", help="SP attention: dsp (default) | ulysses."),
    steps: int = typer.Option(30, "--steps", help="Sampling steps per video."),
    warmup: int = typer.Option(3, "--warmup", "--warmup-count", help="Iterations run first, left out of the stats."),
    evals: int = typer.Option(5, "--eval", "--eval-count", help="Timed iterations (mean/min/max over these)."),
    prompt: str = typer.Option("a beautiful waterfall", "--prompt", help="The prompt of the benchmark video."),
    seed: int = typer.Option(42, "--seed", help="Run seed (the video's seed derives from it and the prompt)."),
    report: Optional[str] = typer.Option(
        None, "--report", "--benchmark-save-path",
        help="Also write the JSON report here (always: RUN_DIR/bench-report.json)."),
    executor: str = EXECUTOR_OPT,
    nccl_profile: Optional[str] = typer.Option(None, "--nccl-profile", help="Profile from env/nccl.yaml."),
    env: list[str] = typer.Option([], "--env", metavar="KEY=VALUE", help="Extra environment (wins over profiles)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Cancel the bench after this many seconds."),
    force: bool = typer.Option(False, "--force", help="Bench even if the planner says it does not fit."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Time the real pipeline on a node (models loaded once; warm-up, then timed iterations of one
    video), write a JSON report, and calibrate the planner for that node's GPU model."""
    from clusterkit.bench import bench_infer
    from clusterkit.launch.envprofiles import parse_env_assignments

    state = get_state(ctx, json_flag)
    progress = None if state.json else _Progress()
    try:
        result = bench_infer(
            state.project(), node=node, frames=frames, resolution=res, aspect_ratio=aspect_ratio, model=model,
            ckpt_dir=ckpt_dir, ckpt_paths=ckpt_paths(ckpt_path_dit, ckpt_path_t5, ckpt_path_vae2d, ckpt_path_vae3d),
            gpus=gpus, sp=sp, cfg_parallel=cfg_parallel, sp_scheme=sp_scheme, steps=steps,
            warmup=warmup, evals=evals, prompt=prompt, seed=seed, report=report, executor=executor,
            nccl_profile=nccl_profile, env=parse_env_assignments(env), force=force, timeout_s=timeout,
            on_progress=progress.update if progress else None, on_submitted=progress.start if progress else None,
        )
    finally:
        if progress:
            progress.stop()
    emit("bench infer", result, _render, as_json=state.json)


class _Progress(JobProgressBar):
    """The bar over every denoising step of every iteration."""

    def announce(self, submitted: dict) -> None:
        out = console()
        if submitted["random_weights"]:
            out.print(f"[bold red]WARNING:[/bold red] [bold]--model {submitted['model']} uses RANDOM weights: the "
                      "timings are those of its (small) shapes, not of Open-Sora 1.2[/bold]")
        out.print(f"bench run {submitted['run_id']}: {submitted['model']} on {submitted['node']} "
                  f"({submitted['executor']}), {submitted['warmup']} warm-up + {submitted['eval']} timed iteration(s)")
        out.print(f"run folder: {submitted['run_dir']}")

    def advance(self, event: dict) -> None:
        stage = event.get("stage", "")
        if "iteration" not in event:
            self.show(description=stage.replace("_", " "))
            return
        what = f"iteration {event['iteration']}/{event['iterations']} ({event['phase']})"
        if stage == "denoising":
            total = event["iterations"] * event["steps"]
            done = (event["iteration"] - 1) * event["steps"] + event["step"]
            self.show(total=total, completed=done, description=f"{what} denoising")
        else:
            self.show(description=f"{what} {stage.replace('_', ' ')}")


def _render(result: dict) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    out = console()
    summary = result["summary"]
    asked, gpu, memory, stages = summary["request"], summary["gpu"], summary["peak_memory"], summary["stages_s"]
    out.print(f"bench run {result['run_id']} {result['state']}: {asked['model']} {asked['resolution']} "
              f"{asked['frames']} ({asked['num_frames']} frames, {asked['height']}x{asked['width']}), "
              f"{asked['steps']} steps, {asked['dtype']} on {result['node']} ({gpu['inventory_model']}); "
              f"ran on {escape(gpu['device_name'])}")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("stage", "mean s", "min s", "max s", "peak MiB"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    rows = [("text encoding", "text_encoding"), ("denoising", "denoising"), ("  per step", "denoising_step"),
            ("VAE decode", "decode"), ("write", "write"), ("total", "total")]
    for label, key in rows:
        s = stages[key]
        peak = memory["by_stage_bytes"].get(key)
        table.add_row(label, f"{s['mean']:.4f}", f"{s['min']:.4f}", f"{s['max']:.4f}",
                      f"{peak / 2**20:.0f}" if peak is not None else "")
    out.print(table)
    out.print(f"load {summary['load_s']:.1f}s (once); {summary['iterations']['eval']} timed iteration(s) after "
              f"{summary['iterations']['warmup']} warm-up; peak memory {memory['peak_bytes'] / 2**30:.2f} GiB "
              f"({memory['kind']})")
    if not gpu["matches_inventory"]:
        out.print(f"[yellow]note:[/yellow] measured on {escape(gpu['device_name'])}, not on the node's "
                  f"{escape(gpu['inventory_name'])}")
    calibration = summary["calibration"]
    record = calibration["record"]
    if record:
        m, p = record["measured"], record["predicted"]
        where = (f"every {record['gpu_model']} node" if record["scope"] == "gpu-model"
                 else f"{record['node']} only (measured on {record['device_name']}, not on a {record['gpu_model']})")
        if record["executor"] == "local":  # it ran on this host: it describes only runs here
            where += f", in local plans only (it ran on host {record['host']}, not through Slurm)"
        out.print(f"calibration stored for {escape(where)}, preset {record['preset']}: step {m['step_s']:.4f}s "
                  f"measured vs {p['step_s']:.4f}s modelled, decode {m['decode_s']:.3f}s vs {p['decode_s']:.3f}s, "
                  f"text {m['text_s']:.3f}s vs {p['text_s']:.3f}s, write {m['write_s']:.3f}s vs {p['write_s']:.3f}s")
        local = " --executor local" if record["executor"] == "local" else ""
        out.print(f"[dim]`clusterkit plan --model {record['preset']} --node {record['node']}{local} ...` uses it[/dim]")
    else:
        out.print(f"[yellow]no calibration stored:[/yellow] {escape(calibration['why_not'])}")
    for path in result["report_paths"]:
        out.out(f"report: {path}", highlight=False)
