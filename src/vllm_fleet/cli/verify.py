"""`vllm-fleet verify`: is the endpoint really serving within its promise?"""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import ContextOpt, EnvOpt, JsonOpt, KubeconfigOpt, console, errors, print_json, run


def verify(
    target: str = typer.Argument(..., help="Endpoint URL (http://host:port or its /v1 base) or the path of a spec."),
    env: str | None = EnvOpt,
    model: str | None = typer.Option(None, help="Served model name (default: the spec's, or the first listed)."),
    requests: int | None = typer.Option(None, min=1, help="Requests for the latency check (default: spec or 20)."),
    slo: float | None = typer.Option(None, min=0.001, help="p95 latency promise in seconds (default: spec or 3)."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check health, model list, chat, streaming, and the p95 latency SLO. Exit 1 if one fails."""
    from contextlib import nullcontext

    from vllm_fleet.ops.endpoints import verify_endpoints
    from vllm_fleet.targets.base import TargetOptions

    with errors(as_json), nullcontext() if as_json else console.status("verifying") as status:
        progress = status.update if status else None
        reports = run(
            verify_endpoints(
                target,
                env,
                model=model,
                requests=requests,
                slo_p95_s=slo,
                progress=progress,
                options=TargetOptions(kubeconfig=kubeconfig, context=context),
            )
        )
    if as_json:
        print_json([r.to_dict() for r in reports])
    else:
        print_reports(reports)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


def print_reports(reports) -> None:
    from rich.table import Table

    for report in reports:
        table = Table(title=f"verify {report.url} ({report.model})", title_justify="left")
        for column in ("check", "result", "seconds", "detail"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            mark = "[green]pass[/]" if check.ok else "[red]FAIL[/]"
            table.add_row(check.name, mark, f"{check.seconds:.2f}", check.detail)
        console.print(table)
        if report.passed:
            console.print(f"[green]verified[/] {report.url}: ready (/health 200 and model listed; vLLM has no /ready)")
        else:
            console.print(f"[red]failed check: {report.failed_check}[/] at {report.url}")


def register(app: typer.Typer) -> None:
    app.command()(verify)
