"""`vllm-fleet bench`: an honest load test (flags named as `vllm bench serve` names them)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, console, err_console, errors, print_json


def bench(
    target: str = typer.Argument(..., help="Endpoint URL (http://host:port) or the path of a spec."),
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
    recommend_hpa: bool = typer.Option(False, help="From the sweep: num_requests_waiting at the SLO knee."),
    seed: int = typer.Option(0, help="Seed of prompts and arrival times."),
    workers: int = typer.Option(1, min=1, help="Client processes (for rates one process cannot drive)."),
    csv: Path | None = typer.Option(None, "--csv", help="Write one row per request here."),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML report (plots inline) here."),
    as_json: bool = JsonOpt,
) -> None:
    """Load an endpoint and report TTFT, TPOT, ITL, E2E latency, throughput and the server's queue."""
    from vllm_fleet.bench import datasets, loadgen, metrics, report, sweep

    with errors():
        url, spec_model, spec_tokenizer = _target(target, env)
        rates = _rates(request_rate)
        if search and rates == [math.inf]:
            rates = [1.0]  # the search starts low and doubles
        slo_obj = metrics.parse_slo(slo) if slo else None
        if (search or recommend_hpa) and slo_obj is None:
            from vllm_fleet.errors import SpecError

            raise SpecError("--search and --recommend-hpa need an SLO", fix="add --slo p95_ttft_ms<=1000")
        counter = datasets.load_tokenizer(tokenizer or spec_tokenizer)
        count = num_prompts or (None if duration else 100)
        prompts = datasets.load_prompts(
            dataset_name,
            count or 1000,
            counter,
            path=dataset_path,
            input_len=random_input_len,
            output_len=random_output_len,
            prefix_groups=prefix_groups,
            prefix_len=prefix_len,
            seed=seed,
        )
        served = model or spec_model or _first_model(url)
        config = loadgen.LoadConfig(
            url=url,
            model=served,
            endpoint=endpoint,
            request_rate=rates[0],
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            num_prompts=count,
            duration_s=duration,
            warmup=warmup,
            ignore_eos=ignore_eos,
            seed=seed,
            workers=workers,
        )
        settings = {
            "endpoint": endpoint,
            "dataset": dataset_name,
            "num_prompts": count,
            "duration_s": duration,
            "max_concurrency": max_concurrency,
            "burstiness": burstiness,
            "workers": workers,
            "input_len": random_input_len,
            "output_len": random_output_len,
            "ignore_eos": ignore_eos,
            "tokenizer": counter.source,
        }
        result = sweep.BenchReport(url, served, settings, slo=slo_obj)
        result.points = _run(config, prompts, counter, rates, slo_obj, search, quiet=as_json)
        if slo_obj is not None and (len(result.points) > 1 or search):
            result.best_rate = sweep.best_rate(result.points, slo_obj)
        if recommend_hpa:
            result.hpa_target = sweep.recommend_hpa(result.points, slo_obj)
        if csv:
            report.write_csv(result, csv)
        if html:
            report.write_html(result, html)
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)
    if not any(p.summary["completed"] for p in result.points):
        errors_seen = {k: v for p in result.points for k, v in p.summary["errors"].items()}
        err_console.print(f"[bold red]error:[/] no request succeeded at {result.url} ({errors_seen})")
        raise typer.Exit(1)
    if slo_obj is not None and not any(p.passed(slo_obj) for p in result.points):
        raise typer.Exit(1)


def _run(config, prompts, counter, rates, slo, search: bool, quiet: bool):
    """Every run, with a live progress line per run on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vllm_fleet.bench import sweep

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

        return sweep.sweep(config, prompts, counter, rates, slo, search, on_point=on_point, progress=on_progress)


def _print(result) -> None:
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
        if point.run.stopped_early:
            console.print(f"[red]{point.run.stopped_early}[/]")
    if result.slo is not None and result.best_rate is not None:
        console.print(f"highest rate within the SLO ({result.slo.text}): [bold]{result.best_rate:g} req/s[/]")
    if result.hpa_target:
        hpa = result.hpa_target
        console.print(f"HPA target: {hpa['metric']} = [bold]{hpa['target']}[/] ({hpa['why']})")


def _rate(rate: float) -> str:
    return "max rate" if math.isinf(rate) else f"{rate:g} req/s"


def _rates(text: str) -> list[float]:
    from vllm_fleet.errors import SpecError

    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise SpecError(f"--request-rate {text!r} is not a number or a list", fix="e.g. 4, inf or 1,2,4,8") from exc
    if not rates or any(r <= 0 for r in rates):
        raise SpecError(f"--request-rate {text!r} must be positive", fix="e.g. 4, inf or 1,2,4,8")
    return rates


def _target(target: str, env: str | None) -> tuple[str, str | None, Path | None]:
    """(URL, the spec's served name, the staged model directory as tokenizer) of a URL or a spec."""
    if target.startswith(("http://", "https://")):
        return target.rstrip("/"), None, None
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import local

    plan = load_plan(target, env)
    urls = [r.url for r in local.running(plan)] or plan.endpoints
    return urls[0], plan.served_name, plan.model_dir


def _first_model(url: str) -> str:
    """The first model the endpoint lists (as `vllm bench serve` does without --model)."""
    import httpx

    from vllm_fleet.errors import CheckFailed

    try:
        data = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        return data[0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise CheckFailed(f"cannot list models at {url}/v1/models: {exc}", fix="pass --model NAME") from exc


def register(app: typer.Typer) -> None:
    app.command()(bench)
