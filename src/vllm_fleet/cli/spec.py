"""`vllm-fleet plan`: validate a spec and show the resolved Plan."""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, SpecArg, console, errors, print_json


def plan(spec: str = SpecArg, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Validate SPEC and print the resolved Plan with every derived number and why."""
    from rich.markup import escape
    from rich.table import Table

    from vllm_fleet.plan import load_plan

    with errors(as_json):
        resolved = load_plan(spec, env)
        data = resolved.to_dict()
    if as_json:
        print_json(data)
        return
    table = Table(title=f"plan: {resolved.name}" + (f" ({env})" if env else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in ("target", "served_name", "source", "model_dir", "replicas", "endpoints", "model_bytes"):
        table.add_row(key, str(data[key]))
    table.add_row("engine argv", " ".join(data["engine_argv"]))
    table.add_row("engine env", " ".join(f"{k}={v}" for k, v in data["engine_env"].items()))
    for key, derived in data["derived"].items():
        table.add_row(key, f"{derived['value']}  [dim]({derived['why']})[/]")
    console.print(table)
    for warning in data["lint"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(plan)
