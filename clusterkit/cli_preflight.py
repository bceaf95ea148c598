"""``clusterkit preflight NODE`` and ``clusterkit env [NODE]``: know before submitting.

Light at import (typer only); the library calls import what they need when they run.
"""

from __future__ import annotations

from typing import Optional

import typer

from clusterkit.cli_common import EXECUTOR_OPT, JSON_OPT, get_state

_STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]"}


def register(app: typer.Typer) -> None:
    app.command("preflight")(preflight)
    app.command("env")(env)


# ---------------------------------------------------------------------------- preflight


def preflight(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="Node to check (a,b checks several, one job each)."),
    local: bool = typer.Option(False, "--local", help="Probe this machine instead of launching a job on the node."),
    res: Optional[str] = typer.Option(None, "--res", "--resolution", help="Resolution to plan (with --frames): adds the memory check."),
    frames: Optional[str] = typer.Option(None, "--frames", "--num-frames", help="Frames to plan: 2s 4s 8s 16s 32s, 1x..16x or N."),
    aspect_ratio: Optional[str] = typer.Option(None, "--aspect-ratio", help="H:W, e.g. 9:16 (the planner's default)."),
    port: Optional[int] = typer.Option(None, "--port", help="Rendezvous port to check (default: torchrun's 29500/29400)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", metavar="DIR",
                                             help="Where outputs go (free disk is checked; default: the runs dir)."),
    executor: str = EXECUTOR_OPT,
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the probe job (queue included)."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Probe a node (driver, GPUs, torch/NCCL, nvcc, kernels, /dev/shm, disk, NICs, port) and check it."""
    import os

    from clusterkit.errors import EXIT_FAILED
    from clusterkit.output import emit
    from clusterkit.preflight.api import run_preflight

    state = get_state(ctx, json_flag)
    result = run_preflight(
        state.project(), node, local=local, executor=executor, res=res, frames=frames, aspect_ratio=aspect_ratio,
        port=port, output_dir=output_dir, timeout_s=timeout, environ=dict(os.environ),
    )
    emit("preflight", result, _render_preflight, as_json=state.json, ok=result["ok"])
    if not result["ok"]:
        raise typer.Exit(EXIT_FAILED)


def _gib(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f} GiB"


def _facts_lines(facts: dict) -> list[tuple[str, str]]:
    """The facts a person reads first, one line each."""
    nvidia = facts.get("nvidia") or {}
    torch = facts.get("torch") or {}
    nvcc = facts.get("nvcc") or {}
    shm = facts.get("shm") or {}
    disk = facts.get("disk") or {}
    host = facts.get("host") or {}
    lines = []
    if nvidia.get("available"):
        lines.append(("driver", f"{nvidia.get('driver_version')} (CUDA {nvidia.get('cuda_version') or '?'})"))
        gpus = nvidia.get("gpus") or []
        names: dict[str, int] = {}
        for g in gpus:
            names[g.get("name")] = names.get(g.get("name"), 0) + 1
        free = [g.get("memory_free_mib", 0) / 1024 for g in gpus]
        cap = gpus[0].get("compute_capability") if gpus else None
        lines.append(("GPUs", ", ".join(f"{n}x {name}" for name, n in names.items()) +
                      (f", sm_{cap[0]}{cap[1]}" if cap else "") +
                      (f", {min(free):.1f}-{max(free):.1f} GiB free" if free else "") if gpus else "none"))
    else:
        lines.append(("driver", nvidia.get("error") or "?"))
    if torch.get("installed"):
        cuda = f"CUDA {torch['cuda']}" if torch.get("cuda") else "CPU build"
        extra = f", NCCL {torch['nccl']}" if torch.get("nccl") else ""
        extra += f", {torch.get('device_count')} GPU(s) visible" if torch.get("cuda") else ""
        lines.append(("torch", f"{torch.get('version')} ({cuda}{extra})"))
    else:
        lines.append(("torch", torch.get("error") or "not installed"))
    lines.append(("nvcc", f"{nvcc.get('version') or '?'} at {nvcc.get('path')}" if nvcc.get("found")
                  else (nvcc.get("error") or "not found")))
    packages = facts.get("packages") or {}
    installed = [f"{m} {p.get('version') or '?'}" for m, p in packages.items() if isinstance(p, dict) and p.get("installed")]
    lines.append(("kernels", ", ".join(installed) or "flash-attn, xformers, apex, colossalai: none installed"))
    lines.append(("/dev/shm", f"{_gib(shm.get('free_bytes'))} free of {_gib(shm.get('total_bytes'))}"
                  if shm.get("total_bytes") is not None else (shm.get("error") or "?")))
    lines.append(("disk", f"{_gib(disk.get('free_bytes'))} free at {disk.get('measured_at')}"
                  if disk.get("free_bytes") is not None else (disk.get("error") or "?")))
    if host.get("memory_total_bytes") is not None:
        lines.append(("host", f"{host.get('hostname')}: {_gib(host.get('memory_available_bytes'))} of "
                              f"{_gib(host.get('memory_total_bytes'))} RAM available, {host.get('cpus_logical')} CPUs"))
    interfaces = (facts.get("network") or {}).get("interfaces") or []
    up = [f"{i['name']} {(i.get('ipv4') or ['-'])[0]}" for i in interfaces if i.get("up")]
    down = [i["name"] for i in interfaces if not i.get("up")]
    lines.append(("network", ", ".join(up) + (f" (down: {', '.join(down)})" if down else "")))
    return lines


def _render_preflight(result: dict) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from clusterkit.output import console

    out = console()
    several = len(result["nodes"]) > 1
    if result["mode"] == "local":
        how = "probed this machine (--local)"
    else:
        how = f"probed by {result['executor']} job(s) " + ", ".join(
            f"{r['run_id']} ({r['state']})" for r in result["runs"])
    out.print(f"[bold]preflight {escape(', '.join(result['nodes']))}[/bold]: {escape(how)}")
    facts_by_node = {result["nodes"][0]: result["facts"]} if not several else result["facts"]
    for name, facts in facts_by_node.items():
        if not facts:
            continue
        env = facts.get("env") or {}
        where = env.get("SLURMD_NODENAME")
        hostname = (facts.get("host") or {}).get("hostname")
        if result["mode"] == "local":
            title = f"facts from this machine ({hostname}), checked as {name}"
        else:
            title = f"facts from {name}" + (f" (Slurm node {where}, job {env.get('SLURM_JOB_ID')})" if where
                                            else f" (host {hostname})")
        facts_table = Table(title=title, title_justify="left", box=None, show_header=False, pad_edge=False)
        facts_table.add_column(style="bold", no_wrap=True)
        facts_table.add_column(overflow="fold")
        for key, value in _facts_lines(facts):
            facts_table.add_row(key, escape(value))
        out.print(facts_table)
    checked = [c for c in result["checks"] if c.get("checked", True)]
    skipped = [c for c in result["checks"] if not c.get("checked", True)]
    table = Table(title="checks", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("status", no_wrap=True)
    if several:
        table.add_column("node", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    order = {"fail": 0, "warn": 1, "pass": 2}
    for c in sorted(checked, key=lambda c: order[c["status"]]):
        cells = [_STATUS_STYLE[c["status"]], *([c["node"] or "(job)"] if several else []), c["name"], escape(c["detail"])]
        table.add_row(*cells)
        if c["status"] != "pass" and c.get("remedy"):
            table.add_row("", *([""] if several else []), "", f"[cyan]fix:[/cyan] {escape(c['remedy'])}")
    out.print(table)
    if skipped:
        by_reason: dict[str, list[str]] = {}
        for c in skipped:
            reason = c["detail"].removeprefix("not checked: ").split("; ")[0]
            by_reason.setdefault(reason, []).append(c["name"] + (f"@{c['node'] or 'job'}" if several else ""))
        for reason, names in by_reason.items():
            out.print(f"[yellow]not checked[/yellow] ({escape(reason)}): {escape(', '.join(names))}")
    for note in result.get("notes") or []:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    counts = result["counts"]
    verdict = "[green]OK[/green]" if result["ok"] else "[red]FAILED[/red]"
    out.print(f"{verdict}: {counts['fail']} failed, {counts['warn'] - counts['not_checked']} warnings, "
              f"{counts['pass']} passed, {counts['not_checked']} not checked")


# ---------------------------------------------------------------------------- env


def env(
    ctx: typer.Context,
    node: Optional[str] = typer.Argument(None, metavar="[NODE]", help="Node to choose for (default: every node)."),
    facts_path: Optional[str] = typer.Option(None, "--facts", metavar="PATH",
                                             help="Facts JSON from a preflight (its driver CUDA wins over nodes.yaml)."),
    json_flag: bool = JSON_OPT,
) -> None:
    """Name the environment spec in env/ (requirements per CUDA line) that fits a node's driver, and why."""
    from clusterkit.errors import EXIT_FAILED, UserError
    from clusterkit.output import emit
    from clusterkit.preflight.envspec import env_for_node, load_env_specs, measured_cuda

    state = get_state(ctx, json_flag)
    project = state.project()
    inventory = project.inventory
    specs = load_env_specs(project.env_dir)
    if facts_path and node is None:
        raise UserError("--facts describes one node; name it: clusterkit env NODE --facts PATH")
    given = _read_facts(facts_path) if facts_path else None
    nodes = [inventory.node(node)] if node else list(inventory.nodes)
    choices = []
    for n in nodes:
        measured = given if given is not None else measured_cuda(project, n.name)
        choices.append(env_for_node(n, specs, measured))
    result = {"specs": [s.to_dict() for s in specs], "nodes": choices}
    if node:
        result.update(choices[0])
    ok = choices[0]["env"] is not None if node else True
    emit("env", result, _render_env, as_json=state.json, ok=ok)
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _read_facts(path: str) -> dict:
    import json
    from pathlib import Path

    from clusterkit.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--facts {path!r}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--facts {path!r}: not a JSON file ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("result"), dict):  # a `preflight --json` envelope
        data = data["result"].get("facts") or {}
    cuda = ((data or {}).get("nvidia") or {}).get("cuda_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or "nvidia" not in data:
        raise UserError(f"--facts {path!r} is not preflight facts (no 'nvidia' section)",
                        hint="use the result.json of a preflight run, or `clusterkit preflight NODE --json` output")
    return {"cuda": cuda, "run_id": path}


def _render_env(result: dict) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from clusterkit.output import console

    out = console()
    if "node" in result:
        _render_env_one(out, result)
        return
    table = Table(title="environment per node (env/requirements-*.txt)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("node", "GPU", "driver CUDA", "from", "env"):
        table.add_column(column, no_wrap=True)
    for c in result["nodes"]:
        table.add_row(c["node"], c["gpu_model"], c["driver_cuda"] or "?", c["cuda_source"] or "-",
                      c["env"] or "[yellow]unknown[/yellow]")
    out.print(table)
    specs = ", ".join(f"{s['name']} (CUDA {s['cuda'] or '-'}, torch {s['pins'].get('torch', '?')})"
                      for s in result["specs"])
    out.print(f"[dim]rule:[/dim] the newest CUDA line not newer than the driver's CUDA. Specs: {escape(specs)}")
    if any(c["env"] is None for c in result["nodes"]):
        out.print("[dim]unknown: the driver's CUDA is not in nodes.yaml; `clusterkit preflight NODE` measures it, "
                  "`clusterkit env NODE` explains[/dim]")


def _render_env_one(out, c: dict) -> None:
    from rich.markup import escape

    if c["env"]:
        out.print(f"[bold]{c['node']}[/bold]: [green]{c['env']}[/green]  ->  {escape(c['path'])}")
    else:
        out.print(f"[bold]{c['node']}[/bold]: [yellow]no environment can be named[/yellow]")
    source = f" ({c['cuda_source']})" if c.get("cuda_source") else ""
    out.print(f"driver CUDA: {c['driver_cuda'] or 'unknown'}{escape(source)}")
    for reason in c["reasons"]:
        out.print(f"why: {escape(reason)}")
    for alt in c["alternatives"]:
        out.print(f"  {alt['env']}: {escape(alt['why'])}")
    for note in c["notes"]:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    spec = next((s for s in c.get("specs", []) if s["name"] == c["env"]), None)
    if spec and spec.get("index_url"):
        out.print(f"install: pip install -r {escape(spec['path'])} --index-url {escape(spec['index_url'])} "
                  "&& pip install -e .", soft_wrap=True)  # one line: people copy it
