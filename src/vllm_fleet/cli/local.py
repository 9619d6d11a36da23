"""`vllm-fleet up / down / status`: the local target."""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, SpecArg, console, errors, print_json


def up(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    skip_verify: bool = typer.Option(False, "--no-verify", help="Skip the verify gate."),
    as_json: bool = JsonOpt,
) -> None:
    """Stage the model, start the replicas, wait for health, verify, print the endpoints."""
    from contextlib import nullcontext

    from rich.live import Live
    from rich.table import Table

    from vllm_fleet.cli.verify import print_reports, run_verify, settings_from_plan
    from vllm_fleet.errors import SpecError
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import local
    from vllm_fleet.weights.stage import stage

    with errors():
        plan = load_plan(spec, env)
        if plan.spec.target != "local":
            raise SpecError(
                f"target is {plan.spec.target!r}; `up` runs the local target",
                fix="set target: local, or render manifests with `vllm-fleet render`",
            )
        local.ensure_not_running(plan)
        with nullcontext() if as_json else console.status(f"staging {plan.source}"):
            staged = stage(plan.source, plan.model_dir, revision=plan.spec.model.revision)
        if not as_json:
            how = "cached" if staged.skipped else "staged"
            console.print(f"model: {plan.model_dir} ({staged.bytes_total / 1e6:.0f} MB, {how})")
        states = {i: "starting" for i in range(plan.spec.replicas)}

        def view() -> Table:
            table = Table(title=f"starting {plan.name}: {plan.spec.replicas} replica(s)", title_justify="left")
            table.add_column("replica")
            table.add_column("endpoint")
            table.add_column("state", overflow="ellipsis", no_wrap=True, max_width=90)
            for i, text in states.items():
                table.add_row(str(i), plan.endpoints[i], "[green]healthy[/]" if text == "healthy" else text)
            return table

        with nullcontext() if as_json else Live(view(), console=console, refresh_per_second=4) as live:

            def progress(i: int, text: str) -> None:
                states[i] = text
                if live:
                    live.update(view())

            started = local.start(plan, progress)
        replicas = started.replicas
        reports = [] if skip_verify else run_verify([r.url for r in replicas], **settings_from_plan(plan))
    passed = all(r.passed for r in reports)
    if as_json:
        print_json({"endpoints": [r.url for r in replicas], "verified": passed and not skip_verify,
                    "prefetch": started.prefetch.to_dict() if started.prefetch else None,
                    "verify": [r.to_dict() for r in reports]})  # fmt: skip
    else:
        if started.prefetch:
            p = started.prefetch
            console.print(
                f"prefetch: {p.bytes_read / 1e6:.0f} MB read into the page cache in {p.seconds:.1f} s "
                f"({p.gbps:.2f} GB/s, {p.bytes_cached_before / 1e6:.0f} MB were cached already)"
                + (f"; stopped: {p.stopped}" if p.stopped else "")
            )
        print_reports(reports)
        for r in replicas:
            console.print(f"endpoint: {r.url}/v1  (model {plan.served_name!r}, log {r.log})")
        console.print(f"stop with: vllm-fleet down {spec}" + (f" --env {env}" if env else ""))
    if not passed:
        raise typer.Exit(1)


def down(spec: str = SpecArg, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Stop every replica of SPEC started by `up`."""
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import local

    with errors():
        stopped = local.stop(load_plan(spec, env))
    if as_json:
        print_json({"stopped": [{"url": r.url, "pid": r.pid} for r in stopped]})
        return
    console.print(f"stopped {len(stopped)} replica(s)" if stopped else "nothing was running")


def status(spec: str = SpecArg, env: str | None = EnvOpt, as_json: bool = JsonOpt) -> None:
    """Show each local replica: alive, healthy, endpoint."""
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import local

    with errors():
        rows = local.status(load_plan(spec, env))
    if as_json:
        print_json([{"url": s.replica.url, "pid": s.replica.pid, "alive": s.alive, "healthy": s.healthy} for s in rows])
        return
    if not rows:
        console.print("not running")
    for s in rows:
        state = "healthy" if s.healthy else ("alive, not healthy" if s.alive else "dead")
        console.print(f"replica {s.replica.index}: {s.replica.url} pid {s.replica.pid} {state}")
    if rows and not all(s.healthy for s in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
