"""`vllm-fleet up / down / status`: parse, call the core flow, print, pick the exit code."""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, SpecArg, console, errors, print_json, run


def up(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    skip_verify: bool = typer.Option(False, "--no-verify", help="Skip the verify gate."),
    as_json: bool = JsonOpt,
) -> None:
    """Stage the model, start the replicas, wait for health, verify, print the endpoints."""
    from vllm_fleet.cli.live import LiveReporter
    from vllm_fleet.cli.verify import print_reports
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets.base import QUIET

    with errors(as_json):
        plan = load_plan(spec, env)
        report = QUIET if as_json else LiveReporter(console, f"starting {plan.name}")
        try:
            outcome = run(lifecycle.up(plan, report, verify=not skip_verify))
        finally:
            if isinstance(report, LiveReporter):
                report.close()
    if as_json:
        print_json(outcome.to_dict())
    else:
        print_reports(outcome.reports)
        for r in outcome.started.replicas:
            console.print(f"endpoint: {r.url}/v1  (model {plan.served_name!r}, log {r.log})", soft_wrap=True)
        console.print(f"stop with: vllm-fleet down {spec}" + (f" --env {env}" if env else ""), soft_wrap=True)
    if not outcome.passed:
        raise typer.Exit(1)


def down(spec: str = SpecArg, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Stop every replica of SPEC started by `up`."""
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        stopped = run(lifecycle.down(load_plan(spec, env)))
    if as_json:
        print_json({"stopped": [{"url": r.url, "pid": r.pid} for r in stopped]})
        return
    console.print(f"stopped {len(stopped)} replica(s)" if stopped else "nothing was running")


def status(spec: str = SpecArg, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Show each replica: alive, healthy, endpoint."""
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        rows = run(lifecycle.status(load_plan(spec, env)))
    if as_json:
        print_json([s.to_dict() for s in rows])
        return
    if not rows:
        console.print("not running")
    for s in rows:
        console.print(f"replica {s.replica.index}: {s.replica.url} pid {s.replica.pid} {s.state}")
    if rows and not all(s.healthy for s in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
