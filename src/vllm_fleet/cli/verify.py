"""`vllm-fleet verify`: is the endpoint really serving within its promise?"""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, console, errors, print_json


def verify(
    target: str = typer.Argument(..., help="Endpoint URL (http://host:port) or the path of a spec."),
    env: str | None = EnvOpt,
    model: str | None = typer.Option(None, help="Served model name (default: the spec's, or the first listed)."),
    requests: int | None = typer.Option(None, min=1, help="Requests for the latency check (default: spec or 20)."),
    slo: float | None = typer.Option(None, min=0.001, help="p95 latency promise in seconds (default: spec or 3)."),
    as_json: bool = JsonOpt,
) -> None:
    """Check health, model list, chat, streaming, and the p95 latency SLO. Exit 1 if one fails."""
    with errors():
        urls, settings = _targets(target, env)
        settings["model"] = model or settings.get("model")
        settings["requests"] = requests or settings.get("requests", 20)
        settings["slo_p95_s"] = slo or settings.get("slo_p95_s", 3.0)
        reports = run_verify(urls, **settings)
    if as_json:
        print_json([r.to_dict() for r in reports])
    else:
        print_reports(reports)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


def run_verify(urls: list[str], **settings):
    """Verify each endpoint in turn (one event loop for all)."""
    import asyncio

    from vllm_fleet.probe import verify as probe

    async def all_of() -> list:
        return [await probe(url, **settings) for url in urls]

    return asyncio.run(all_of())


def settings_from_plan(plan) -> dict:
    slo = plan.spec.slo
    return {
        "model": plan.served_name,
        "requests": slo.requests,
        "slo_p95_s": slo.p95_latency_s,
        "max_tokens": slo.max_tokens,
    }


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


def _targets(target: str, env: str | None) -> tuple[list[str], dict]:
    if target.startswith(("http://", "https://")):
        return [target], {}
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import local

    plan = load_plan(target, env)
    urls = [r.url for r in local.running(plan)] or plan.endpoints
    return urls, settings_from_plan(plan)


def register(app: typer.Typer) -> None:
    app.command()(verify)
