"""`vllm-fleet batch`: an OpenAI batch file through an endpoint, resumable, with an optional evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from vllm_fleet.cli.common import (
    ContextOpt,
    EnvOpt,
    JsonOpt,
    KubeconfigOpt,
    console,
    err_console,
    errors,
    print_json,
    run,
)

FAILURES_SHOWN = 10  # on the terminal; the JSON and --report hold them all


def batch(
    target: str = typer.Argument(..., help="Endpoint URL (http://host:port or its /v1 base) or the path of a spec."),
    input_path: Path = typer.Argument(..., metavar="INPUT.jsonl", help="OpenAI batch input (custom_id, url, body)."),
    output: Path = typer.Option(..., "--output", "-o", help="Result lines go here; rerun with it to resume."),
    env: str | None = EnvOpt,
    model: str | None = typer.Option(None, help="Model for every request (default: each body's, else the spec's)."),
    concurrency: int | None = typer.Option(
        None, min=1, help="Requests in flight (default: the spec's max_num_seqs, or a short probe of a URL)."
    ),
    retries: int = typer.Option(3, min=0, help="Retries of a request after a connection error, 429 or 5xx."),
    timeout: float = typer.Option(600.0, min=0.1, help="Seconds one request may take."),
    strict: bool = typer.Option(False, help="Stop before sending anything when an input line is bad."),
    eval_metric: str | None = typer.Option(
        None, "--eval", help="Score answers against `expected`: exact, contains, regex, numeric or choice."
    ),
    tolerance: float = typer.Option(1e-6, min=0, help="numeric: relative tolerance (absolute near zero)."),
    report: Path | None = typer.Option(None, help="Write the evaluation (by category, failures listed) as JSON."),
    min_accuracy: float | None = typer.Option(
        None, min=0, max=1, help="With --eval: exit 1 when the accuracy is below this."
    ),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Send a batch file to an endpoint; one result line per request, resumable after a crash."""
    from vllm_fleet.ops.batch import BatchOptions
    from vllm_fleet.targets.base import TargetOptions

    with errors(as_json):
        if min_accuracy is not None and not eval_metric:
            from vllm_fleet.errors import SpecError

            raise SpecError("--min-accuracy needs --eval", fix="add --eval exact (or another metric)")
        opts = BatchOptions(
            model=model,
            concurrency=concurrency,
            retries=retries,
            timeout_s=timeout,
            strict=strict,
            eval_metric=eval_metric,
            tolerance=tolerance,
        )
        result = _run(target, input_path, output, env, opts, as_json, TargetOptions(kubeconfig, context))
        if report and result.evaluation:
            report.write_text(json.dumps(result.evaluation.to_dict(), indent=2, default=str) + "\n")
            err_console.print(f"wrote the evaluation: {report}", markup=False)
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)
    low = result.evaluation is not None and min_accuracy is not None and not result.evaluation.accuracy >= min_accuracy
    if not result.ok or low:
        raise typer.Exit(1)


def _run(target, input_path, output, env, opts, quiet: bool, options):
    """The run, with a progress bar on stderr: done/failed, output tokens/s, ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vllm_fleet.ops.batch import BatchProgress, run_batch

    with Progress(
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed[/]  {task.fields[tokens]} tok/s  {task.fields[inflight]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    ) as bar:
        task = bar.add_task("batch", total=None, failed=0, tokens="-", inflight="")

        def on_progress(p: BatchProgress) -> None:
            rate = p.output_tokens / p.elapsed_s if p.elapsed_s > 0 else 0.0
            inflight = f"{p.concurrency} in flight" if p.concurrency else f"probing {p.probing or 1} in flight"
            bar.update(task, total=p.total, completed=p.done, failed=p.failed, tokens=f"{rate:.0f}", inflight=inflight)

        return run(run_batch(target, input_path, output, opts, env=env, options=options, on_progress=on_progress))


def _print(result) -> None:
    from rich.markup import escape

    console.print(
        f"batch {result.url} ({result.model}): {result.sent} sent, {result.failed} failed, "
        f"{result.skipped} already in {result.output}; {result.request_throughput:.1f} req/s, "
        f"{result.output_tokens / result.elapsed_s if result.elapsed_s else 0:.0f} output tok/s over "
        f"{result.elapsed_s:.1f} s at {result.concurrency} in flight ({escape(result.concurrency_why)})",
        soft_wrap=True,
    )
    if result.dropped_bytes:
        console.print(f"dropped a torn last line ({result.dropped_bytes} bytes) of an interrupted run")
    for problem in result.problems:
        console.print(f"[yellow]input line {problem.line}:[/] {escape(problem.message)}", soft_wrap=True)
    for failure in result.failures[:FAILURES_SHOWN]:
        console.print(f"[red]failed {escape(failure['custom_id'])}:[/] {escape(failure['why'])}", soft_wrap=True)
    if len(result.failures) > FAILURES_SHOWN:
        console.print(f"... and {len(result.failures) - FAILURES_SHOWN} more failed (--json lists them)")
    if result.evaluation:
        _print_eval(result.evaluation.to_dict())


def _print_eval(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"evaluation ({report['metric']})", title_justify="left")
    for column in ("category", "correct", "total", "accuracy"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, tally in report["by_category"].items():
        table.add_row(escape(name), str(tally["correct"]), str(tally["total"]), _pct(tally["accuracy"]))
    table.add_row("[bold]all[/]", str(report["correct"]), str(report["total"]), f"[bold]{_pct(report['accuracy'])}[/]")
    console.print(table)
    if report["unscored"]:
        console.print(f"{report['unscored']} line(s) without `expected` not scored")
    for failure in report["failures"][:FAILURES_SHOWN]:
        said = failure.get("error") or repr(_short(failure["answer"]))
        console.print(
            f"[red]wrong {escape(failure['custom_id'])}[/]: expected {escape(repr(failure['expected']))}, "
            f"got {escape(said)}",
            soft_wrap=True,
        )
    if len(report["failures"]) > FAILURES_SHOWN:
        console.print(f"... and {len(report['failures']) - FAILURES_SHOWN} more wrong (--report lists them)")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def _short(text: str | None, limit: int = 120) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 3] + "..."


def register(app: typer.Typer) -> None:
    app.command()(batch)
