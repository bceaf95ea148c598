"""The ``clusterkit`` command line: flags -> one library call -> result -> rich or ``--json``.

One error boundary (``main``) turns typed errors into a message and an exit code:
0 ok, 1 a check or job failed, 2 bad input. Nothing heavy is imported at module import
time (no torch anywhere on the light commands' path).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.exceptions import TyperException

from clusterkit.cli_common import EXECUTOR_OPT, JSON_OPT, State, get_state
from clusterkit.errors import EXIT_FAILED, EXIT_USER_ERROR, ClusterkitError
from clusterkit.output import console, emit, envelope, fmt_seconds, print_json

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Run Open-Sora 1.2 inference and training on a heterogeneous Slurm GPU cluster.",
)
diagnose_app = typer.Typer(no_args_is_help=True, help="Find out why distributed jobs hang or crawl.")
app.add_typer(diagnose_app, name="diagnose")

@app.callback()
def _global(
    ctx: typer.Context,
    inventory: Optional[str] = typer.Option(
        None, "--inventory", metavar="PATH", help="nodes.yaml to use (default ./nodes.yaml or $CLUSTERKIT_INVENTORY)."),
    json_flag: bool = JSON_OPT,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    ctx.obj = State(inventory=inventory, json=json_flag, debug=debug)


# ---------------------------------------------------------------------------- nodes


@app.command()
def nodes(ctx: typer.Context, json_flag: bool = JSON_OPT) -> None:
    """List the inventory, with live Slurm node state when a controller answers."""
    state = get_state(ctx, json_flag)
    project = state.project()
    inventory = project.inventory
    from clusterkit.launch import slurm

    live = slurm.node_states() if _slurm_configured() else None
    rows = []
    for node in inventory.nodes:
        row = node.to_dict() if hasattr(node, "to_dict") else {}
        row.update(name=node.name, gpu_model=node.gpu.model, gpu_count=node.gpu.count,
                   slurm_state=(live or {}).get(node.name, {}).get("state") if live is not None else None)
        rows.append(row)
    result = {"inventory": str(project.inventory_path), "slurm": live is not None, "nodes": rows}

    def render(_: object) -> None:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"{project.inventory_path}  ({len(rows)} nodes)", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("node", "GPUs", "GiB", "CUDA", "P2P", "partition"):
            table.add_column(column, no_wrap=True)
        if live is not None:
            table.add_column("slurm", no_wrap=True)
        for node, row in zip(inventory.nodes, rows):
            spec = node.gpu.spec
            cells = [node.name, f"{node.gpu.count}x {_short_gpu_name(spec.name)}", f"{spec.usable_gib:.1f}",
                     node.cuda or "?", _tri(node.interconnect.p2p), node.slurm.partition or "-"]
            if live is not None:
                cells.append(row["slurm_state"] or "absent")
            table.add_row(*cells)
        out = console()
        out.print(table)
        for node in inventory.nodes:
            if node.notes:
                out.print(f"[bold]{node.name}[/bold]: {escape(' '.join(node.notes.split()))}")
        if live is None:
            out.print("[dim]no Slurm controller answered: showing the inventory only[/dim]")

    emit("nodes", result, render, as_json=state.json)


def _short_gpu_name(name: str) -> str:
    for prefix in ("NVIDIA ", "GeForce ", "Quadro "):
        name = name.removeprefix(prefix)
    return name.replace(" (variant unknown)", "?")


def _tri(value: Optional[bool]) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _slurm_configured() -> bool:
    import shutil

    return shutil.which("sinfo") is not None


# ---------------------------------------------------------------------------- runs / status / logs / cancel


def _render_runs(records: list, title: str) -> None:
    """One line per run: the run id is never wrapped (users copy it); the summary, which can be
    long, goes on its own line under the table."""
    import time

    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from clusterkit.launch.runs import attempts

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", no_wrap=True)
    for column in ("state", "job", "nodes", "age"):
        table.add_column(column, no_wrap=True)
    now = time.time()
    for r in records:
        tries = len(attempts(r))
        job = (r.job_ids[0] if r.executor == "slurm" else "local") if r.job_ids else r.executor
        if len(r.job_ids) > 1:
            job += f" +{len(r.job_ids) - 1}"
        state = _colour_state(r.state) + (f" x{tries}" if tries > 1 else "")
        table.add_row(r.run_id, state, job, hostlist(r.nodes), fmt_seconds(now - r.created_at))
    out = console()
    out.print(table)
    for r in records:
        if r.summary:
            out.print(f"{r.run_id}: {escape(r.summary)}")


def hostlist(names) -> str:
    """Slurm-style compact node list: worker-5,worker-6,worker-8 -> worker-[5-6,8]."""
    import re

    groups: dict[str, list[int]] = {}
    plain = []
    for name in names:
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if match and not match.group(2).startswith("0"):
            groups.setdefault(match.group(1), []).append(int(match.group(2)))
        else:
            plain.append(name)
    parts = []
    for prefix, numbers in groups.items():
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]}")
            continue
        ranges, start = [], numbers[0]
        for prev, cur in zip(numbers, numbers[1:] + [None]):
            if cur != prev + 1 if cur is not None else True:
                ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts + plain)


def _run_dicts(records: list) -> list[dict]:
    """Registry records for --json, each with its attempts (one per Slurm requeue)."""
    from clusterkit.launch.runs import attempts

    return [{**r.to_dict(), "attempts": attempts(r)} for r in records]


def _colour_state(state: str) -> str:
    colour = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow"}.get(state, "red")
    return f"[{colour}]{state}[/{colour}]"


runs_app = typer.Typer(help="List recent runs; `runs plot RUN` plots a training run's metrics.")
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context, limit: int = typer.Option(20, help="How many recent runs."),
         json_flag: bool = JSON_OPT) -> None:
    """List recent runs from the registry (states as last seen; `status` refreshes)."""
    if ctx.invoked_subcommand is not None:
        return
    state = get_state(ctx, json_flag)
    project = state.project()
    records = project.registry.list(limit=limit)
    emit("runs", {"runs": _run_dicts(records)},
         lambda _: _render_runs(records, f"runs in {project.runs_dir}"), as_json=state.json)


@runs_app.command("plot")
def runs_plot(ctx: typer.Context, run: str = typer.Argument(..., help="Run id (or unique prefix)."),
              output: Optional[str] = typer.Option(None, "--output", help="PNG path (default RUN_DIR/metrics.png)."),
              json_flag: bool = JSON_OPT) -> None:
    """Plot a training run's loss, step time, samples/s and memory (metrics.jsonl) to a PNG."""
    from pathlib import Path

    from clusterkit.train_metrics import plot_metrics, read_metrics

    state = get_state(ctx, json_flag)
    record = state.project().registry.get(run)
    records = read_metrics(record.run_dir)
    path = plot_metrics(records, Path(output) if output else record.run_dir / "metrics.png",
                        f"{record.run_id}: {len(records)} steps")
    emit("runs plot", {"run_id": record.run_id, "plot": str(path), "steps": len(records),
                       "last": records[-1]}, lambda _: console().print(f"plot: {path}"), as_json=state.json)


@app.command()
def status(ctx: typer.Context, run: Optional[str] = typer.Argument(None, help="Run id (or unique prefix)."),
           limit: int = typer.Option(20, help="How many recent runs when no RUN is given."),
           json_flag: bool = JSON_OPT) -> None:
    """Ask the scheduler (once, for all runs) where runs stand."""
    from clusterkit.launch import runs as runs_api

    state = get_state(ctx, json_flag)
    records = runs_api.status(state.project(), run, limit=limit)
    emit("status", {"runs": _run_dicts(records)}, lambda _: _render_runs(records, "status"), as_json=state.json)


@app.command()
def logs(ctx: typer.Context, run: str = typer.Argument(..., help="Run id (or unique prefix)."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the run ends."),
         rank: Optional[int] = typer.Option(None, help="Only this rank's log."),
         tail: int = typer.Option(50, help="Lines per file (0 = all)."),
         json_flag: bool = JSON_OPT) -> None:
    """Show a run's per-rank and per-node logs."""
    from clusterkit.launch import runs as runs_api

    state = get_state(ctx, json_flag)
    project = state.project()
    record = project.registry.get(run)

    def wanted(path) -> bool:
        return rank is None or path.name == f"rank-{rank:03d}.log"

    if follow:
        if state.json:
            from clusterkit.errors import UserError

            raise UserError("--follow streams text; it cannot be combined with --json")
        for path, line in runs_api.follow(project, record.run_id):
            if wanted(path):
                sys.stdout.write(f"{path.stem}| {line}\n")
                sys.stdout.flush()
        return
    every = runs_api.log_files(record)
    files = [p for p in every if wanted(p)]
    rank_logs = sorted(int(p.stem.split("-")[1]) for p in every if p.name.startswith("rank-"))
    if rank is not None and not files and rank_logs:
        from clusterkit.errors import InvalidChoice

        raise InvalidChoice("--rank", rank, [str(r) for r in rank_logs], suggestion=None,
                            hint=f"run {record.run_id} has {len(rank_logs)} rank log(s)")
    contents = {}
    for path in files:
        lines = path.read_text(errors="replace").splitlines()
        contents[str(path)] = lines[-tail:] if tail else lines

    def render(_: object) -> None:
        out = console()
        if not files:
            out.print(f"no logs yet in {record.run_dir / 'logs'}")
        for path, lines in contents.items():
            out.rule(path, align="left")
            for line in lines:
                out.out(line, highlight=False)

    emit("logs", {"run_id": record.run_id, "files": contents}, render, as_json=state.json)


@app.command()
def cancel(ctx: typer.Context, run: str = typer.Argument(..., help="Run id (or unique prefix)."),
           json_flag: bool = JSON_OPT) -> None:
    """Cancel a queued or running run (scancel, or stop the local processes)."""
    from clusterkit.launch import runs as runs_api

    state = get_state(ctx, json_flag)
    record = runs_api.cancel(state.project(), run)
    emit("cancel", record.to_dict(), lambda _: console().print(f"cancelled {record.run_id} ({','.join(record.job_ids)})"),
         as_json=state.json)


# ---------------------------------------------------------------------------- diagnose nccl


@diagnose_app.command("nccl")
def diagnose_nccl(
    ctx: typer.Context,
    nodes_opt: Optional[str] = typer.Option(None, "--nodes", help="Comma-separated node names, or 'all'."),
    node: Optional[str] = typer.Option(None, "--node", help="One node."),
    gpus_per_node: Optional[int] = typer.Option(
        None, "--gpus-per-node",
        help="Ranks per node (default: all its GPUs; local executor: this machine's GPUs, 2 CPU ranks without one)."),
    executor: str = EXECUTOR_OPT,
    nccl_profile: Optional[str] = typer.Option(None, "--nccl-profile", help="Profile from env/nccl.yaml (default: debug)."),
    env: list[str] = typer.Option([], "--env", metavar="KEY=VALUE", help="Extra environment (wins over profiles)."),
    ops: Optional[str] = typer.Option(None, "--ops", help="all_reduce,all_gather,reduce_scatter,all_to_all (default: all)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="8K,1M,64M or a range 8K:1G (default: 8K:1G on GPUs)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a collective may wait before it counts as hung."),
    apply: bool = typer.Option(False, "--apply", help="Write the recommended per-node env into nodes.yaml."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the PNG plot."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be submitted; submit nothing."),
    run: Optional[str] = typer.Option(None, "--run", help="Diagnose the logs of this run instead of benchmarking."),
    log: list[str] = typer.Option([], "--log", metavar="PATH", help="Diagnose these log files (repeatable)."),
    more_logs: list[str] = typer.Argument(None, metavar="[PATH]...", show_default=False,
                                          help="More log files for --log (so `--log logs/*.log` works)."),
    stall_rank: Optional[int] = typer.Option(None, "--stall-rank", hidden=True, help="Test hook: this rank stalls."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Benchmark and check the fabric (all_reduce, all_gather, reduce_scatter, all_to_all),
    name the ranks that never arrive when a collective hangs, and say which env to change.
    With --run or --log: read the logs, find the first error, and say its cause and fix."""
    from clusterkit.diagnose.collective import diagnose_logs, run_collective_check
    from clusterkit.errors import UserError
    from clusterkit.launch.envprofiles import parse_env_assignments

    state = get_state(ctx, json_flag)
    if nodes_opt and node:
        raise UserError("give either --nodes or --node, not both")
    if more_logs and not log:
        raise UserError(f"unexpected argument {more_logs[0]!r}; log files go after --log")
    log = [*log, *(more_logs or [])]
    project = state.project()
    if run or log:
        if nodes_opt or node or dry_run:
            raise UserError("--run/--log read existing logs; they do not combine with --nodes, --node or --dry-run")
        result, report, recommendations = diagnose_logs(project, run=run, logs=log)
        if apply and recommendations:
            from clusterkit.diagnose.recommend import apply_env_edits

            apply_env_edits(project.inventory_path, recommendations)
            result["applied_to"] = str(project.inventory_path)

        def render_logs(_: object) -> None:
            from clusterkit.diagnose.logs import render

            out = console()
            render(report, out)
            _render_recommendations(result, out)

        emit("diagnose nccl", result, render_logs, as_json=state.json, ok=report.ok)
        if not report.ok:
            raise typer.Exit(EXIT_FAILED)
        return
    result = run_collective_check(
        project, nodes=nodes_opt or node, gpus_per_node=gpus_per_node, executor=executor,
        nccl_profile=nccl_profile, env=parse_env_assignments(env), timeout_s=timeout, sizes=sizes, ops=ops,
        dry_run=dry_run, plot=not no_plot, stall_rank=stall_rank,
    )
    if dry_run:
        emit("diagnose nccl", result, _render_dry_run, as_json=state.json)
        return
    if apply and result["recommendations"]:
        from clusterkit.diagnose.recommend import EnvRecommendation, apply_env_edits

        apply_env_edits(project.inventory_path, [EnvRecommendation(**r) for r in result["recommendations"]])
        result["applied_to"] = str(project.inventory_path)
    emit("diagnose nccl", result, _render_collective, as_json=state.json, ok=result["ok"])
    if not result["ok"]:
        raise typer.Exit(EXIT_FAILED)


def _render_dry_run(result: dict) -> None:
    import shlex

    out = console()
    rendered = result["rendered"]
    out.rule(f"dry run: {result['run_id']} ({rendered['executor']}), nothing submitted", align="left")
    if "slurm" in rendered:
        out.print("[bold]sbatch script[/bold]")
        out.out(rendered["slurm"]["sbatch"], highlight=False)
    out.print("[bold]torchrun argv (per node)[/bold]")
    out.out(shlex.join(rendered["torchrun"]), highlight=False)
    out.print(f"[bold]port[/bold]: {rendered['port']}")
    for name, env in rendered["env"].items():
        out.print(f"[bold]env on {name}[/bold]")
        for key, value in sorted(env["env"].items()):
            out.out(f"  {key}={shlex.quote(value)}    # {env['source'][key]}", highlight=False)
        for warning in env["warnings"]:
            out.print(f"  [yellow]warning:[/yellow] {warning}")


def _render_collective(result: dict) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    out = console()
    verdict = "[green]OK[/green]" if result["ok"] else "[red]FAILED[/red]"
    out.print(f"collective check {verdict}: run {result['run_id']} ({result['executor']}, "
              f"jobs {','.join(result['job_ids'])}), state {result['state']}, world size "
              f"{result['world_size']}/{result['expected_world_size']}, backend {result['backend']}")
    ranks = Table(title="ranks", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("rank", "node", "host", "local", "device", "pid", "init s"):
        ranks.add_column(column)
    for r in result["ranks"]:
        ranks.add_row(str(r["rank"]), r.get("node", ""), r["host"], str(r["local_rank"]), r["device"],
                      str(r["pid"]), f"{r['init_s']:.2f}")
    if result["ranks"]:
        out.print(ranks)
    bad = [c for c in result["checks"] if not c["ok"]]
    if result["checks"]:
        out.print(f"checks: {len(result['checks']) - len(bad)}/{len(result['checks'])} correct")
    for c in bad:
        out.print(f"  [red]rank {c['rank']} {c['op']} wrong[/red]: {escape(str(c))}")
    if result["timings"]:
        timings = Table(title="bandwidth (slowest rank; busbw per nccl-tests)", title_justify="left",
                        box=box.SIMPLE_HEAD)
        for column in ("scope", "op", "size", "time us", "busbw GB/s", "expected"):
            timings.add_column(column, justify="right" if column not in ("scope", "op") else "left",
                               no_wrap=column == "scope")
        for t in result["timings"]:
            expected = f"{t['expected_busbw_gbs']:.0f}" if t.get("expected_busbw_gbs") else "-"
            busbw = f"{t['busbw_gbs']:.3f}"
            timings.add_row(t["scope"], t["op"], _human_bytes(t["bytes"]), f"{t['time_us']:.0f}",
                            f"[red]{busbw}[/red]" if t.get("flag") else busbw, expected)
        out.print(timings)
        for t in result["timings"]:
            if t.get("flag"):
                out.print(f"[red]slow link[/red] {t['scope']} {t['op']}: {escape(t['flag'])}")
    hang = result.get("hang")
    if hang:
        out.print(f"[red]hang:[/red] {escape(hang['verdict'])}")
        for m in hang["missing"]:
            out.print(f"  rank {m['rank']} on {m['host'] or '?'} ({m['node'] or '?'}): last seen {escape(m['last'])}")
    if result.get("log_diagnosis"):
        first = result["log_diagnosis"]["first_error"]
        if first:
            out.print(f"[red]first error[/red] ({first['id']} {escape(first['title'])}) on rank {first['rank']} "
                      f"{first['host'] or ''} at {first['file']}:{first['line']}")
            out.print(f"  cause: {escape(first['cause'])}")
            out.print(f"  fix: {escape(first['fix'])}")
            out.print(f"  (full report: clusterkit diagnose nccl --run {result['run_id']})")
    _render_recommendations(result, out)
    if result.get("plot"):
        out.print(f"plot: {result['plot']}")
    if not result["ok"]:
        out.print(f"[red]{escape(result['summary'] or 'the job did not finish cleanly')}[/red]; logs:")
        for path in result["logs"]:
            out.print(f"  {path}")


def _render_recommendations(result: dict, out) -> None:
    from rich.markup import escape

    from clusterkit.diagnose.recommend import EnvRecommendation, render_edits

    recs = result.get("recommendations") or []
    for rec in recs:
        out.print(f"[yellow]recommend[/yellow] {rec['node']}: {rec['key']}={rec['value']}  ({escape(rec['reason'])})")
    if recs:
        edits = render_edits([EnvRecommendation(**r) for r in recs])
        out.print(f"written to {result['applied_to']}:" if result.get("applied_to")
                  else "nodes.yaml edit (or rerun with --apply):")
        out.out(edits, highlight=False)


def _human_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:g}{unit}" if unit == "B" else f"{n:g}{unit}"
        n /= 1024
    return f"{n}"


# ---------------------------------------------------------------------------- commands in their own modules
# Each module exposes register(app) and adds exactly one line here.
from clusterkit.cli_plan import register as _register_plan; _register_plan(app)  # noqa: E402,E702
from clusterkit.cli_preflight import register as _register_preflight; _register_preflight(app)  # noqa: E402,E702
from clusterkit.cli_submit import register as _register_submit; _register_submit(app)  # noqa: E402,E702
from clusterkit.cli_train import register as _register_train; _register_train(app)  # noqa: E402,E702
from clusterkit.cli_bench import register as _register_bench; _register_bench(app)  # noqa: E402,E702
from clusterkit.cli_report import register as _register_report; _register_report(app)  # noqa: E402,E702


# ---------------------------------------------------------------------------- error boundary


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    debug = "--debug" in argv
    try:
        code = app(args=argv, prog_name="clusterkit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.Abort:
        return 130
    except TyperException as exc:  # typer's (vendored click) usage errors: bad flags, missing arguments
        code = getattr(exc, "exit_code", EXIT_USER_ERROR)
        message = exc.format_message()
        return _fail(_command_path(argv), "usage_error", message, None, code, as_json, getattr(exc, "ctx", None))
    except ClusterkitError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        if as_json:
            print_json(envelope(_command_path(argv), False, None, exc.to_dict()))
        else:
            err = console(stderr=True)
            from rich.markup import escape

            err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
            if exc.hint:
                err.print(f"[dim]hint:[/dim] {escape(exc.hint)}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so plainly, keep the traceback one flag away
        if debug:
            raise
        return _fail(_command_path(argv), "internal_error", f"{type(exc).__name__}: {exc}",
                     "this is a clusterkit bug; rerun with --debug for the traceback", EXIT_FAILED, as_json, None)


def _command_path(argv: list[str]) -> str:
    """The command words of ``argv`` ("submit infer", "logs"), skipping options and their values, so
    the JSON envelope names the command even when it fails before the command parses."""
    group = typer.main.get_command(app)
    words: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            break
        if token.startswith("-"):
            option = next((p for p in group.params if token.split("=")[0] in getattr(p, "opts", ())), None)
            if option is not None and not getattr(option, "is_flag", True) and "=" not in token:
                next(tokens, None)  # the option's value
            continue
        sub = getattr(group, "commands", {}).get(token)
        if sub is None:
            break
        words.append(token)
        group = sub
    return " ".join(words) or "clusterkit"


def _fail(command: str, kind: str, message: str, hint: Optional[str], code: int, as_json: bool, ctx) -> int:
    if as_json:
        print_json(envelope(command, False, None, {"type": kind, "kind": kind, "message": message, "hint": hint}))
    else:
        err = console(stderr=True)
        if ctx is not None and kind == "usage_error":
            err.out(ctx.get_usage(), highlight=False)
        err.out(f"error: {message}", highlight=False)
        if hint:
            err.out(f"hint: {hint}", highlight=False)
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
