"""``clusterkit submit infer``: launch a text-to-video run (``clusterkit/submit.py``) and, with
``--wait``, show its progress and print the files it wrote. No torch here: the job imports it."""

from __future__ import annotations

import os
from typing import Optional

import typer

from clusterkit.cli_common import (ASPECT_RATIO_OPT, CKPT_DIR_OPT, CKPT_PATH_DIT_OPT, CKPT_PATH_T5_OPT,
                                  CKPT_PATH_VAE2D_OPT, CKPT_PATH_VAE3D_OPT, EXECUTOR_OPT, FRAMES_OPT, JSON_OPT,
                                  RES_OPT, JobProgressBar, ckpt_paths, get_state)
from clusterkit.output import console, emit

submit_app = typer.Typer(no_args_is_help=True, help="Submit jobs: text-to-video inference.")


def register(app: typer.Typer) -> None:
    """Add the ``submit`` command group to ``app``."""
    app.add_typer(submit_app, name="submit")


@submit_app.command("infer")
def infer_command(
    ctx: typer.Context,
    frames: str = FRAMES_OPT,
    res: str = RES_OPT,
    aspect_ratio: str = ASPECT_RATIO_OPT,
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt (repeatable)."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="A UTF-8 file, one prompt per line."),
    model: str = typer.Option("opensora-v1.2", "--model", help="opensora-v1.2 (needs --ckpt-dir or the four "
                              "--ckpt-path-*) | tiny (random without them)."),
    ckpt_dir: Optional[str] = CKPT_DIR_OPT,
    ckpt_path_dit: Optional[str] = CKPT_PATH_DIT_OPT,
    ckpt_path_t5: Optional[str] = CKPT_PATH_T5_OPT,
    ckpt_path_vae2d: Optional[str] = CKPT_PATH_VAE2D_OPT,
    ckpt_path_vae3d: Optional[str] = CKPT_PATH_VAE3D_OPT,
    node: Optional[str] = typer.Option(None, "--node", help="Run on this node (default: the planner's best)."),
    nodes: Optional[str] = typer.Option(
        None, "--nodes", help="Sweep the prompts over these nodes ('all' or a,b,c): one job per node, one "
        "output folder; re-run the same command to resume."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs per node (replicas x CFG split x --sp)."),
    sp: Optional[int] = typer.Option(None, "--sp", help="Sequence-parallel degree; must divide the attention "
                                     "heads (1 2 4 8 16)."),
    cfg_parallel: Optional[bool] = typer.Option(
        None, "--cfg-parallel/--no-cfg-parallel", help="Split the CFG pair over 2 GPUs."),
    sp_scheme: str = typer.Option("dsp", "--sp-scheme", help="SP attention: dsp (default, 2 all-to-alls per "
                                  "block) | ulysses (4). See docs/parallelism.md."),
    seed: int = typer.Option(42, "--seed", help="Run seed; each video's seed derives from it, its prompt and sample."),
    steps: int = typer.Option(30, "--steps", help="Sampling steps."),
    num_samples: int = typer.Option(1, "--num-samples", "--num-sample", help="Videos per prompt."),
    cfg_scale: float = typer.Option(7.0, "--cfg-scale", help="Classifier-free guidance scale."),
    fps: int = typer.Option(24, "--fps", help="Frame rate of the videos (and of the model's fps conditioning)."),
    executor: str = EXECUTOR_OPT,
    nccl_profile: Optional[str] = typer.Option(None, "--nccl-profile", help="Profile from env/nccl.yaml."),
    env: list[str] = typer.Option([], "--env", metavar="KEY=VALUE", help="Extra environment (wins over profiles)."),
    output: Optional[str] = typer.Option(None, "--output", help="Folder for the videos (default: RUN_DIR/outputs)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run, show progress, print the output paths."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="With --wait: cancel after this many seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be submitted; submit nothing."),
    force: bool = typer.Option(False, "--force", help="Run even if the planner says it does not fit."),
    refine: str = typer.Option("none", "--refine", help="Refine the prompts on this host before launching: none | "
                               "template (offline) | command | http (docs/prompt-refinement.md)."),
    refine_config: Optional[str] = typer.Option(
        None, "--refine-config", help="Refine settings (template, command, http); default env/refine.yaml."),
    reference_path: list[str] = typer.Option(
        [], "--reference-path", help="Per prompt (repeat once per prompt, in order; \"\" for none; with "
        "--start-index/--end-index once per prompt of the whole list or once per selected prompt): ';'-separated "
        "reference images/videos. Or in the prompt: text{\"reference_path\": ..., \"mask_strategy\": ...}. "
        "See docs/inference-modes.md."),
    mask_strategy: list[str] = typer.Option(
        [], "--mask-strategy", help="Per prompt, like --reference-path: ';'-separated groups loop_id,ref_index,"
        "ref_start,target_start,length,edit_ratio (latent frames; e.g. 0 = image-to-video)."),
    loop: int = typer.Option(1, "--loop", help="Clips per video; each later clip continues the previous one."),
    condition_frame_length: int = typer.Option(
        5, "--condition-frame-length", help="With --loop: latent frames of the previous clip each clip continues "
        "(a multiple of 5; 5 latent = 17 video frames)."),
    condition_frame_edit: float = typer.Option(
        0.0, "--condition-frame-edit", help="With --loop: edit ratio of those frames (0 keeps them)."),
    align: int = typer.Option(5, "--align", help="Mask-strategy starts snap to multiples of this many latent "
                              "frames, as upstream (1: no snapping)."),
    aes: float = typer.Option(6.5, "--aes", help="Aesthetic score appended to each prompt."),
    flow: Optional[float] = typer.Option(None, "--flow", help="Motion score appended to each prompt."),
    camera_motion: Optional[str] = typer.Option(
        None, "--camera-motion", help="Camera motion appended to each prompt (e.g. 'pan left', 'zoom in')."),
    batch_size: int = typer.Option(
        1, "--batch-size", help="Videos per pass (upstream's option). Each still goes through the model alone, "
        "so results never depend on it and it gives no speedup; use replicas (--gpus) for throughput."),
    start_index: int = typer.Option(0, "--start-index", help="First prompt to run (file names and the index's "
                                    "prompt_index keep the prompt's place in the list)."),
    end_index: Optional[int] = typer.Option(None, "--end-index", help="Stop before this prompt."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Generate videos from text prompts with Open-Sora 1.2 (or the tiny random model)."""
    from clusterkit.errors import UserError
    from clusterkit.launch.envprofiles import parse_env_assignments

    state = get_state(ctx, json_flag)
    if node and nodes:
        raise UserError("give either --node (one run) or --nodes (a sweep over several nodes), not both")
    options = dict(reference_paths=tuple(reference_path), mask_strategies=tuple(mask_strategy), loop=loop,
                   condition_frame_length=condition_frame_length, condition_frame_edit=condition_frame_edit,
                   align=align, aes=aes, flow=flow, camera_motion=camera_motion, batch_size=batch_size)
    if nodes:
        given = [flag for flag, value, default in (
            ("--reference-path", reference_path, []), ("--mask-strategy", mask_strategy, []), ("--loop", loop, 1),
            ("--condition-frame-length", condition_frame_length, 5),
            ("--condition-frame-edit", condition_frame_edit, 0), ("--align", align, 5), ("--aes", aes, 6.5),
            ("--flow", flow, None), ("--camera-motion", camera_motion, None),
            ("--batch-size", batch_size, 1), ("--start-index", start_index, 0), ("--end-index", end_index, None),
        ) if value != default]
        if given:
            raise UserError(f"{', '.join(given)} not supported with --nodes (a sweep) yet",
                            hint="run them on one node (--node, or no --nodes)")
    progress = None if state.json or not wait or dry_run else _ProgressBar()
    common = dict(
        frames=frames, resolution=res, aspect_ratio=aspect_ratio, prompts=tuple(prompt), prompts_file=prompts_file,
        model=model, ckpt_dir=ckpt_dir,
        ckpt_paths=ckpt_paths(ckpt_path_dit, ckpt_path_t5, ckpt_path_vae2d, ckpt_path_vae3d),
        gpus=gpus, sp=sp, cfg_parallel=cfg_parallel, sp_scheme=sp_scheme,
        seed=seed, steps=steps, num_samples=num_samples, cfg_scale=cfg_scale, fps=fps, executor=executor,
        nccl_profile=nccl_profile, output=output, wait=wait, dry_run=dry_run, force=force, timeout_s=timeout,
        on_progress=progress.update if progress else None, on_submitted=progress.start if progress else None,
    )
    try:
        if nodes:
            from clusterkit.sweep import submit_sweep

            result = submit_sweep(state.project(), nodes=nodes, env=parse_env_assignments(env), refine=refine,
                                  refine_config=refine_config, environ=dict(os.environ), **common)
        else:
            from clusterkit.submit import submit_infer

            result = submit_infer(state.project(), node=node, env=parse_env_assignments(env), refine=refine,
                                  refine_config=refine_config, environ=dict(os.environ), start_index=start_index,
                                  end_index=end_index, **options, **common)
    finally:
        if progress:
            progress.stop()
    emit("submit infer", result, _render_sweep if nodes else _render, as_json=state.json)


class _ProgressBar(JobProgressBar):
    """The bar over the run's denoising steps (a sweep: over its videos)."""

    def __init__(self) -> None:
        super().__init__()
        self._steps = None  # denoising steps per video, once an event said

    def announce(self, submitted: dict) -> None:
        (_render_sweep_submitted if "sweep" in submitted else _render_submitted)(submitted)

    def advance(self, event: dict) -> None:
        stage = event.get("stage", "")
        if stage == "sweep":
            self.show(total=event["total"], completed=event["done"],
                      description=f"sweep: {event['running']} job(s) running")
        elif stage == "denoising":
            self._steps = event["steps"]
            total = event["videos"] * event["steps"]
            done = (event["video"] - 1) * event["steps"] + event["step"]
            self.show(total=total, completed=done, description=f"video {event['video']}/{event['videos']} denoising")
        elif stage in ("decode", "write"):
            # progress.json is throttled: the last steps may not have been seen, but they are done
            done = event["video"] * self._steps if self._steps else None
            self.show(completed=done, description=f"video {event['video']}/{event['videos']} {stage}")
        else:
            super().advance(event)


def _print_warnings(out, warnings: list[str]) -> None:
    from rich.markup import escape

    for warning in warnings:
        out.print(f"[bold red]WARNING:[/bold red] [bold]{escape(warning)}[/bold]")


def _render_submitted(result: dict) -> None:
    from rich.markup import escape

    out = console()
    _print_warnings(out, result["warnings"])
    what = "dry run (nothing submitted)" if result["dry_run"] else f"submitted run {result['run_id']}"
    jobs = f", job {','.join(result['job_ids'])}" if result["job_ids"] else ""
    s = result["settings"]
    out.print(f"{what}: {result['model']} on {result['node']} ({result['executor']}{jobs}); "
              f"{result['num_videos']} video(s), {s['dtype'] or 'default precision'}, T5 {s['t5_dtype']}"
              f"{' on the CPU' if s['t5_device'] == 'cpu' else (', offloaded after encoding' if s['t5_offload'] else ', resident')}, "
              f"VAE micro-batch {s['vae_micro_batch']}, seed {s['seed']}, {s['steps']} steps")
    request = result.get("request") or {}
    if not result["random_weights"] and (request.get("ckpt_dir") or request.get("ckpt_paths")):
        from opensora_core.presets import describe_checkpoint

        out.print(f"weights: {escape(describe_checkpoint(request.get('ckpt_dir'), request.get('ckpt_paths')))}")
    for note in result["notes"]:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    _print_refinement(out, result.get("refine"))
    out.print(f"run folder: {result['run_dir']}")


def _print_refinement(out, refine: dict | None) -> None:
    """Each prompt as given and as refined (what the text encoder gets)."""
    from rich.markup import escape

    if not refine:
        return
    if refine.get("dry_run"):  # a command or an endpoint: not called on a dry run
        count = len({pair["prompt"] for pair in refine["prompts"]})
        out.print(f"would refine {count} prompt(s) with {escape(refine['via'])} (a dry run calls no refiner)")
        return
    how = "reused from the sweep's manifest" if refine.get("reused") else f"in {refine['seconds']:.1f} s"
    out.print(f"prompts refined by {escape(refine['via'])} ({how}):")
    for index, pair in enumerate(refine["prompts"]):
        out.print(f"  [dim]{index} prompt:[/dim]  {escape(pair['prompt'])}")
        out.print(f"  [dim]{index} refined:[/dim] {escape(pair['refined_prompt'])}")


def _render_sweep_submitted(result: dict) -> None:
    from rich.markup import escape

    out = console()
    _print_warnings(out, result["warnings"])
    what = "dry run (nothing submitted)" if result["dry_run"] else f"sweep {result['sweep']}"
    out.print(f"{what}: {result['num_videos']} video(s), {result['already_done']} already done, "
              f"{result['to_make']} to make")
    _print_refinement(out, result.get("refine"))
    for run in result["runs"]:
        seconds = run["seconds_per_video"]
        predicted = f", predicted {seconds:.0f} s/video per group (full model)" if seconds else ""
        jobs = f" job {','.join(run['job_ids'])}" if run["job_ids"] else ""
        out.print(f"  {run['node']}: {len(run['videos'])} video(s) on {run['describe']}{predicted}"
                  f" -> run {run['run_id']}{jobs}")
    for node, why in result["skipped"].items():
        out.print(f"  [dim]{escape(node)} skipped: {escape(why)}[/dim]")
    if result.get("unused"):
        out.print(f"  [dim]no video for {', '.join(result['unused'])}: the other nodes finish every video sooner"
                  "[/dim]")
    out.out(f"output folder: {result['output_dir']}", highlight=False)


def _render_sweep(result: dict) -> None:
    out = console()
    if "index" not in result or result["dry_run"]:
        _render_sweep_submitted(result)
        if result["to_make"]:
            out.print("re-run the same command to resume; `clusterkit status` shows the jobs")
        return
    if result["runs"]:
        _render_sweep_submitted(result)
    out.print(f"sweep {result['sweep']}: {result['done']} of {result['expected']} video(s) done")
    out.out(f"index: {result['index']}", highlight=False)
    for path in result["outputs"]:
        out.out(path, highlight=False)


def _render(result: dict) -> None:
    import shlex

    out = console()
    if "outputs" not in result:  # not waited for: say where things will be
        _render_submitted(result)
        if result["dry_run"]:
            rendered = result["rendered"]
            if "slurm" in rendered:
                out.print("[bold]sbatch script[/bold]")
                out.out(rendered["slurm"]["sbatch"], highlight=False)
            out.print("[bold]torchrun argv[/bold]")
            out.out(shlex.join(rendered["torchrun"]), highlight=False)
        out.print("outputs (when done):")
        for path in result["expected_outputs"]:
            out.out(f"  {path}", highlight=False)
        return
    _print_warnings(out, result["warnings"])
    t = result["timings"]
    memory = result["peak_memory"]
    out.print(f"run {result['run_id']} {result['state']}: {len(result['outputs'])} file(s) on {result['node']} "
              f"({result['device']}, {result['dtype']})")
    out.print(f"timings: load {t['load_s']:.1f}s, text encoding {t['text_encoding_s']:.1f}s, denoising "
              f"{t['denoising_s']:.1f}s ({t['denoising_step_mean_s']:.3f} s/step), decode {t['decode_s']:.1f}s, "
              f"write {t['write_s']:.1f}s, total {t['total_s']:.1f}s; peak memory "
              f"{memory['peak_bytes'] / 2**30:.2f} GiB ({memory['kind']})")
    out.out(f"index: {result['index']}", highlight=False)
    for path in result["outputs"]:
        out.out(path, highlight=False)
