"""`vllm-fleet bench`: an honest load test (flags named as `vllm bench serve` names them)."""

from __future__ import annotations

import math
from pathlib import Path

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


def bench(
    target: str = typer.Argument(..., help="Endpoint URL (http://host:port or its /v1 base) or the path of a spec."),
    env: str | None = EnvOpt,
    model: str | None = typer.Option(None, help="Served model name (default: the spec's, or the first listed)."),
    endpoint: str = typer.Option("/v1/completions", help="/v1/completions or /v1/chat/completions."),
    request_rate: str = typer.Option(
        "inf", help="Requests per second; 'inf' sends at once; a list '1,2,4' sweeps the rates."
    ),
    burstiness: float = typer.Option(1.0, min=0.01, help="Gamma shape of the arrivals: 1 is Poisson, <1 burstier."),
    max_concurrency: int | None = typer.Option(
        None, min=1, help="Cap on requests in flight; with rate inf: fixed concurrency (closed loop)."
    ),
    num_prompts: int | None = typer.Option(None, min=1, help="Requests per run (default 100 unless --duration)."),
    duration: float | None = typer.Option(None, min=0.1, help="Seconds per run (bounds an open-loop schedule)."),
    warmup: int = typer.Option(1, min=0, help="Requests sent first and not measured."),
    dataset_name: str = typer.Option("random", help="random, shared-prefix, sharegpt or jsonl."),
    dataset_path: Path | None = typer.Option(None, help="The ShareGPT JSON or JSONL file."),
    random_input_len: int = typer.Option(128, min=1, help="Prompt tokens (random, shared-prefix suffix)."),
    random_output_len: int = typer.Option(32, min=1, help="Tokens to generate (random, shared-prefix, jsonl)."),
    prefix_groups: int = typer.Option(4, min=1, help="shared-prefix: groups sharing one system prompt each."),
    prefix_len: int = typer.Option(512, min=1, help="shared-prefix: tokens of each group's shared prompt."),
    ignore_eos: bool = typer.Option(False, help="Ask for exactly the output length (ignore_eos and min_tokens)."),
    tokenizer: Path | None = typer.Option(None, help="Local tokenizer directory (default: the spec's staged model)."),
    slo: str | None = typer.Option(None, help="e.g. p95_ttft_ms<=1000,p95_e2el_ms<=3000; exit 1 when missed."),
    search: bool = typer.Option(False, help="Find the highest rate within --slo (doubling, then bisection)."),
    recommend_hpa: bool = typer.Option(False, help="From the sweep: the scaling metric's value at the SLO knee."),
    hpa_metric: str | None = typer.Option(
        None, help="waiting, running or gpu-utilization (default: the spec's scaling.metric, else waiting)."
    ),
    seed: int = typer.Option(0, help="Seed of prompts and arrival times."),
    workers: int = typer.Option(1, min=1, help="Client processes (for rates one process cannot drive)."),
    csv: Path | None = typer.Option(None, "--csv", help="Write one row per request here."),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML report (plots inline) here."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Load an endpoint and report TTFT, TPOT, ITL, E2E latency, throughput and the server's queue."""
    from vllm_fleet.bench import report
    from vllm_fleet.ops.bench import BenchOptions, parse_rates
    from vllm_fleet.targets.base import TargetOptions

    with errors(as_json):
        opts = BenchOptions(
            model=model,
            endpoint=endpoint,
            rates=parse_rates(request_rate),
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            num_prompts=num_prompts,
            duration_s=duration,
            warmup=warmup,
            dataset_name=dataset_name,
            dataset_path=dataset_path,
            input_len=random_input_len,
            output_len=random_output_len,
            prefix_groups=prefix_groups,
            prefix_len=prefix_len,
            ignore_eos=ignore_eos,
            tokenizer=tokenizer,
            slo=slo,
            search=search,
            recommend_hpa=recommend_hpa,
            hpa_metric=_hpa_metric(hpa_metric),
            seed=seed,
            workers=workers,
        )
        result = _run(target, env, opts, quiet=as_json, options=TargetOptions(kubeconfig=kubeconfig, context=context))
        written = []
        if csv:
            report.write_csv(result, csv)
            written.append(f"per-request CSV: {csv}")
        if html:
            report.write_html(result, html)
            written.append(f"HTML report: {html}")
    for line in written:  # on stderr, so stdout stays the table or the JSON
        err_console.print(f"wrote {line}", markup=False)
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)
    if not any(p.summary["completed"] for p in result.points):
        errors_seen = {k: v for p in result.points for k, v in p.summary["errors"].items()}
        err_console.print(f"[bold red]error:[/] no request succeeded at {result.url} ({errors_seen})")
        raise typer.Exit(1)
    if result.slo is not None and not any(p.passed(result.slo) for p in result.points):
        raise typer.Exit(1)


def _run(target: str, env: str | None, opts, quiet: bool, options):
    """Every run, with a live progress line per run on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vllm_fleet.ops.bench import run_bench

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    ) as progress:
        state: dict = {}

        def on_progress(done: int, total: int | None, elapsed: float) -> None:
            if "task" not in state:
                state["task"] = progress.add_task("bench", total=total)
            progress.update(state["task"], completed=done)

        def on_point(point) -> None:
            if "task" in state:
                progress.update(state.pop("task"), completed=point.summary["completed"] + point.summary["failed"])
            line = f"{_rate(point.rate)}: {point.summary['request_throughput']:.2f} req/s done, " + (
                f"p95 TTFT {point.summary['p95_ttft_ms']:.0f} ms, p95 E2E {point.summary['p95_e2el_ms']:.0f} ms"
            )
            if not quiet:
                progress.console.print(
                    line + (f" [red]{point.run.stopped_early}[/]" if point.run.stopped_early else "")
                )

        return run(run_bench(target, env, opts, on_point=on_point, on_progress=on_progress, options=options))


def _print(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from vllm_fleet.bench.report import TABLE_KEYS, cell

    table = Table(title=f"bench {result.url} ({result.model})", title_justify="left")
    table.add_column("metric")
    for point in result.points:
        table.add_column(_rate(point.rate), justify="right", overflow="fold")
    for label, key in TABLE_KEYS:
        table.add_row(label, *(cell(p.summary, key) for p in result.points))
    console.print(table)
    for point in result.points:
        if (done := point.summary["completed"]) and done < SMALL_SAMPLE_P99:
            console.print(
                f"[yellow]warning:[/] {_rate(point.rate)}: {done} requests completed; p99 needs {SMALL_SAMPLE_P99} and "
                f"p95 {SMALL_SAMPLE_P95} to mean much (raise --num-prompts)",
                soft_wrap=True,
            )
        if point.run.stopped_early:
            console.print(f"[red]{point.run.stopped_early}[/]")
        if misses := point.summary.get("slo_misses"):
            console.print(f"[red]SLO missed at {_rate(point.rate)}:[/] {escape('; '.join(misses))}", soft_wrap=True)
    if result.slo is not None and result.best_rate is not None:
        console.print(f"highest rate within the SLO ({result.slo.text}): [bold]{result.best_rate:g} req/s[/]")
    if result.hpa_target:
        hpa = result.hpa_target
        value = f"[bold]{hpa['target']}[/]" if hpa["target"] is not None else "none found"
        console.print(f"HPA target: {hpa['metric']} = {value} ({hpa['why']})")
        if hpa["target"] is not None:
            console.print(f"  set in the spec: scaling: {{metric: {hpa['scaling_metric']}, target: {hpa['target']}}}")


def _hpa_metric(value: str | None) -> str | None:
    from vllm_fleet.errors import SpecError
    from vllm_fleet.spec.schema import SCALING_METRICS

    if value is not None and value not in SCALING_METRICS:
        raise SpecError(f"--hpa-metric {value!r} is not a scaling metric", fix="use " + ", ".join(SCALING_METRICS))
    return value


# Below these many samples a p99 (p95) is mostly the few slowest requests: say so beside the table.
SMALL_SAMPLE_P99 = 100
SMALL_SAMPLE_P95 = 20


def _rate(rate: float) -> str:
    return "max rate" if math.isinf(rate) else f"{rate:g} req/s"


def register(app: typer.Typer) -> None:
    app.command()(bench)
