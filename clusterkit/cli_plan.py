"""``clusterkit plan``: what each node can run, how fast, and why not (a table, or ``--json``).

Exit code 0 when at least one selected node can run the request, 1 when none can (so a script
can write ``clusterkit plan ... --node N && clusterkit submit ...``), 2 for bad input.
"""

from __future__ import annotations

from typing import Optional

import typer

from clusterkit.cli_common import ASPECT_RATIO_OPT, FRAMES_OPT, JSON_OPT, RES_OPT, get_state
from clusterkit.errors import EXIT_FAILED, UserError
from clusterkit.output import console, emit


def register(app: typer.Typer) -> None:
    """Add the ``plan`` command to ``app``."""
    app.command("plan")(plan_command)


def plan_command(
    ctx: typer.Context,
    task: str = typer.Argument("infer", help="infer | train"),
    res: str = RES_OPT,
    frames: str = FRAMES_OPT,
    aspect_ratio: str = ASPECT_RATIO_OPT,
    node: Optional[str] = typer.Option(None, "--node", help="Plan one node."),
    nodes: Optional[str] = typer.Option(None, "--nodes", help="Comma-separated node names, or 'all' (default)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Use exactly this many GPUs per node."),
    num_videos: int = typer.Option(1, "--num-videos", help="Prompts to generate (replicas are capped by it)."),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="latency (fastest per video; default for infer) | throughput (default for train)."),
    sp: Optional[int] = typer.Option(None, "--sp", help="Pin the sequence-parallel degree (1 2 4 8 16)."),
    cfg_parallel: Optional[bool] = typer.Option(
        None, "--cfg-parallel/--no-cfg-parallel", help="Pin splitting the CFG pair over 2 GPUs."),
    sp_scheme: Optional[str] = typer.Option(
        None, "--sp-scheme", help="SP scheme whose traffic is charged: dsp (default) | ulysses (as submit infer "
        "--sp-scheme). Inference only."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Pin bf16 | fp16."),
    attention: Optional[str] = typer.Option(None, "--attention", help="Pin fused (FlashAttention-2) | unfused."),
    t5: Optional[str] = typer.Option(None, "--t5", help="Pin gpu-fp32 (upstream default) | gpu-bf16 | offload."),
    vae_micro_batch: Optional[int] = typer.Option(None, "--vae-micro-batch", help="Pin frames per VAE decode."),
    model: str = typer.Option("opensora-v1.2", "--model", help="Preset whose `bench infer` calibrations scale "
                              "the time (memory is always opensora-v1.2's): opensora-v1.2 | tiny."),
    executor: str = typer.Option(
        "auto", "--executor", help="Where the planned ranks run: auto (Slurm when a controller answers, else local) "
        "| slurm | local. Calibrations benched with the local executor apply only to local plans."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Predict memory and time of Open-Sora 1.2 on every node; say why a node cannot run it."""
    from clusterkit.calibration import CalibrationStore
    from clusterkit.launch.executors import pick_executor
    from clusterkit.planner import PlanRequest, plan
    from opensora_core.presets import get_preset

    state = get_state(ctx, json_flag)
    if node and nodes:
        raise UserError("give either --node or --nodes, not both")
    request = PlanRequest(
        resolution=res, frames=frames, task=task, aspect_ratio=aspect_ratio, num_videos=num_videos,
        nodes=node or nodes or "all", objective=objective, gpus=gpus, sp=sp, cfg_parallel=cfg_parallel,
        dtype=dtype, attention=attention, t5=t5, vae_micro_batch=vae_micro_batch, sp_scheme=sp_scheme,
    )
    if task == "train" and executor != "auto":
        raise UserError(f"--executor {executor} picks which `bench infer` calibrations apply; training plans use none",
                        hint="drop --executor for plan train")
    preset = get_preset(model).name  # InvalidChoice naming the presets
    executor_name = pick_executor(executor)  # InvalidChoice naming auto, slurm, local
    project = state.project()
    calibrations, notes = CalibrationStore(project.runs_dir).read(preset) if task == "infer" else ([], [])
    result = plan(project.inventory, request, calibrations, executor=executor_name)
    ok = result.best() is not None
    data = {**result.to_dict(), "calibration_preset": preset if task == "infer" else None,
            "calibration_notes": notes}
    emit("plan", data, lambda _: render_plan(result, notes), as_json=state.json, ok=ok)
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def render_plan(result, calibration_notes=()) -> None:
    """The plan as a table (fits 80 columns), then per-node notes, reasons and alternatives;
    ``calibration_notes``: calibration rows that could not be read (``CalibrationStore.read``)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    request = result.request
    out = console()
    videos = f", {request.num_videos} video{'s' if request.num_videos > 1 else ''}" if request.task == "infer" else ""
    out.print(f"[bold]plan[/bold] {request.task} {escape(request.describe())}, {request.objective}{videos}")
    for warning in (*result.warnings, *calibration_notes):
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    per = ("s/step", "smp/h") if request.task == "train" else ("s/video", "vid/h")
    for column, justify in (("node", "left"), ("GPUs", "left"), ("layout", "left"), ("precision", "left"),
                            ("T5/vae", "left"), ("GiB/GPU", "right"), (per[0], "right"), (per[1], "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for node in result.nodes:
        table.add_row(*_row(node, request.task == "train"))
    out.print(table)
    best = result.best()
    if best is not None:
        out.print(f"best: [bold]{escape(best.name)}[/bold] ({_seconds(best.seconds)} {per[0]}, "
                  f"{best.videos_per_hour:.1f} {per[1]}{', calibrated' if best.calibration else ''})")
    else:
        out.print("[red]no selected node can run this[/red]")
    _print_calibrations(out, result.nodes, per[0], escape)
    _print_details(out, result.nodes, escape)


def _print_calibrations(out, nodes, unit: str, escape) -> None:
    """One line per calibrated node (marked * in the table): the calibrated figure, the model's, the
    bench it comes from (run, when, device) and, when the bench ran another configuration, which;
    then the calibrations the plan leaves out (a local bench in a Slurm plan)."""
    for node in nodes:
        for note in node.calibration_notes:
            out.print(f"[dim]{escape(node.name)}: {escape(note)}[/dim]")
        c = node.calibration
        if c is None:
            continue
        if node.feasible:
            model = node.chosen.seconds
            figure = f"{node.seconds:.1f} {unit} (model {model:.1f}, x{node.seconds / model:.3g})"
        else:
            figure = "cannot run"
        if c.executor == "local":
            scope = f"every node of a local plan on host {c.host or '?'}"
        else:
            scope = ("this node only" if c.scope == "node" else f"every {c.gpu_model} node") + ", Slurm plans"
        elsewhere = ""
        if node.calibration_differs:
            comm = "; communication from the model" if "layout" in node.calibration_differs else ""
            elsewhere = f"; calibrated at {c.measured_at} ({', '.join(node.calibration_differs)} differ{comm})"
        out.print(f"* [bold]{escape(node.name)}[/bold] calibrated: {figure}; from {escape(c.source)}"
                  f"{escape(elsewhere)} [dim](applies to {escape(scope)})[/dim]")


def _row(node, train: bool) -> list[str]:
    from rich.markup import escape

    c = node.chosen
    gpus = f"{node.gpu_count}x{_short(node.gpu.name)}"
    if c is None:
        return [escape(node.name), gpus, "-", "-", "-", f"-/{node.gpu.usable_gib:.1f}", "[red]no[/red]", "-"]
    s = c.settings
    memory = f"{c.memory.peak:.1f}/{c.usable_gib:.1f}"
    precision = f"{s.dtype} {s.attention}"
    t5 = f"{s.t5.removeprefix('gpu-')}/{s.vae_micro_batch}"
    if not node.feasible:
        return [escape(node.name), gpus, "-", precision, t5, f"[red]{memory}[/red]", "[red]no[/red]", "-"]
    layout = f"dp{c.layout.gpus}" if train else _layout(c.layout)
    mark = "*" if node.calibration is not None else ""
    return [escape(node.name) + mark, gpus, layout, precision, t5, memory, _seconds(node.seconds),
            f"{node.videos_per_hour:.1f}"]


def _seconds(seconds: float) -> str:
    """Whole seconds, one decimal below 10 (a calibrated tiny run takes fractions of a second)."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def _layout(layout) -> str:
    """E.g. "8=cfg+sp4", "6=3x sp2", "1 GPU"."""
    if layout.gpus == 1:
        return "1 GPU"
    group = "+".join(part for part in ("cfg" if layout.cfg_parallel else "", f"sp{layout.sp}" if layout.sp > 1 else "")
                     if part) or "1"
    replicas = f"{layout.replicas}x " if layout.replicas > 1 else ""
    return f"{layout.gpus}={replicas}{group}"


def _short(name: str) -> str:
    for prefix in ("NVIDIA ", "GeForce ", "Quadro ", "RTX "):
        name = name.removeprefix(prefix)
    return name.replace(" (variant unknown)", "?")


def _print_details(out, nodes, escape) -> None:
    """Notes shared by feasible nodes once each (naming the nodes), then each infeasible node's why and try."""
    shared: dict[str, list[str]] = {}
    for node in nodes:
        if node.feasible:
            for reason in node.reasons:
                shared.setdefault(reason, []).append(node.name)
    for reason, names in shared.items():
        out.print(f"[bold]{escape(', '.join(names))}[/bold]: {escape(reason)}")
    for node in nodes:
        if node.feasible:
            continue
        out.print(f"[bold]{escape(node.name)}[/bold] [red]cannot run[/red]: {escape('; '.join(node.reasons))}")
        for alternative in node.alternatives:
            out.print(f"  try: {escape(alternative.summary)}")
