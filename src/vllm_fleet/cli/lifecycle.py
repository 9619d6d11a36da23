"""`vllm-fleet preflight / up / down / status / doctor`: parse, call the core flow, print, pick the exit code."""

from __future__ import annotations

from pathlib import Path

import typer

from vllm_fleet.cli.common import (
    ContextOpt,
    EnvOpt,
    JsonOpt,
    KubeconfigOpt,
    SpecArg,
    console,
    errors,
    print_json,
    run,
)


def _options(kubeconfig: str | None, context: str | None, **more):
    from vllm_fleet.targets.base import TargetOptions

    return TargetOptions(kubeconfig=kubeconfig, context=context, **more)


def preflight(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every check before anything is started or written (one line each: pass / warn / fail and the fix)."""
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        findings = run(lifecycle.preflight(load_plan(spec, env), _options(kubeconfig, context)))
    if as_json:
        print_json([f.to_dict() for f in findings])
    else:
        print_findings(findings)
    if any(f.severity == "fail" for f in findings):
        raise typer.Exit(1)


def print_findings(findings) -> None:
    from rich.markup import escape

    colour = {"pass": "green", "warn": "yellow", "fail": "red"}
    for f in findings:
        fix = f" [dim](fix: {escape(f.fix)})[/]" if f.fix and f.severity != "pass" else ""
        console.print(f"[{colour[f.severity]}]{f.severity:4}[/] {f.check}: {escape(f.detail)}{fix}", soft_wrap=True)


def up(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    skip_verify: bool = typer.Option(False, "--no-verify", help="Skip the verify gate."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    force_conflicts: bool = typer.Option(False, help="Kubernetes: take fields another field manager owns."),
    timeout: float | None = typer.Option(
        None, min=1, help="Kubernetes: give up waiting after this many seconds (30 min)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Preflight, stage or apply, start the replicas, wait until they serve, verify, print the endpoints."""
    from vllm_fleet.cli.live import reporting
    from vllm_fleet.cli.verify import print_reports
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    options = _options(kubeconfig, context, force_conflicts=force_conflicts, timeout_s=timeout)
    with errors(as_json):
        plan = load_plan(spec, env)
        with reporting(as_json, f"starting {plan.name}") as report:
            outcome = run(lifecycle.up(plan, report, verify=not skip_verify, options=options))
    if as_json:
        print_json(outcome.to_dict())
    else:
        print_reports(outcome.reports)
        for r in outcome.started.replicas:
            log = f", log {r.log}" if r.log else ""
            name = f"replica {r.index}" if r.role == "engine" else r.role
            console.print(f"{name}: {r.url}{log}", soft_wrap=True)
        for url in outcome.endpoints:
            where = f"{url}/v1" if url.startswith("http") else url
            console.print(f"endpoint: {where}  (model {plan.served_name!r})", soft_wrap=True)
        console.print(f"stop with: vllm-fleet down {spec}" + (f" --env {env}" if env else ""), soft_wrap=True)
    if not outcome.passed:
        raise typer.Exit(1)


def restart(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    timeout: float | None = typer.Option(
        None, min=1, help="Kubernetes: give up waiting for the rollout after this many seconds (30 min)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Replace the replicas one at a time, each drained through the router first (local: the spec as it is now;
    Kubernetes: `kubectl rollout restart` of the engine Deployment, waited for as `up` waits)."""
    from vllm_fleet.cli.live import reporting
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        plan = load_plan(spec, env)
        with reporting(as_json, f"restarting {plan.name}") as report:
            result = run(lifecycle.restart(plan, report, _options(kubeconfig, context, timeout_s=timeout)))
    if as_json:
        print_json({"replicas": [r.to_dict() for r in result.replicas], "notes": result.notes, **result.extra})
        return
    # a pod is routed once it is ready (the router follows the EndpointSlices); a local replica once verified
    how = "new, ready" if plan.spec.target == "kubernetes" else "new, verified, routed"
    for r in result.replicas:
        console.print(f"replica {r.index}: {r.url} ({how})", soft_wrap=True)
    for note in result.notes:
        console.print(note, soft_wrap=True)


def logs(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    replica: int | None = typer.Option(None, "--replica", "-r", help="Only this replica's log."),
    router: bool = typer.Option(False, "--router", help="Only the router's log."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what is appended."),
    lines: int = typer.Option(40, "--lines", "-n", min=0, help="Lines of each log to show first."),
) -> None:
    """The engines' and the router's logs (local target)."""
    from vllm_fleet.cli.follow import follow_logs
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets import target_for

    with errors():
        found = target_for(load_plan(spec, env)).logs()
        wanted = [
            (name, path) for name, path in found
            if (replica is None and not router) or name == (f"replica {replica}" if replica is not None else "router")
        ]  # fmt: skip
        if not wanted:
            console.print(
                "no log: not running" if not found else "no such log; these exist: " + ", ".join(n for n, _ in found)
            )
            raise typer.Exit(1)
        follow_logs(wanted, lines, follow)


def down(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    purge: bool = typer.Option(False, help="Kubernetes: also delete the weights cache claim."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop (or delete) everything `up` started for SPEC; no process is left behind."""
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        plan = load_plan(spec, env)
        stopped = run(lifecycle.down(plan, purge=purge, options=_options(kubeconfig, context)))
    if as_json:
        print_json({"stopped": [{"url": r.url, "pid": r.pid} for r in stopped]})
        return
    if plan.spec.target == "kubernetes":
        console.print(f"deleted {len(stopped)} object(s)" if stopped else "nothing was applied")
        return
    console.print(f"stopped {len(stopped)} replica(s)" if stopped else "nothing was running")


def status(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show each replica: alive, healthy, where it is."""
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        rows = run(lifecycle.status(load_plan(spec, env), _options(kubeconfig, context)))
    if as_json:
        print_json([s.to_dict() for s in rows])
        return
    if not rows:
        console.print("not running")
    for s in rows:
        pid = f" pid {s.replica.pid}" if s.replica.pid is not None else ""
        name = f"replica {s.replica.index}" if s.replica.role == "engine" else s.replica.role
        where = f" {s.replica.url}" if s.replica.url else ""
        state = ("running" if s.alive else "dead") if s.replica.role == "supervisor" else s.state
        console.print(f"{name}:{where}{pid} {state}")
    if rows and not all(s.healthy for s in rows):
        raise typer.Exit(1)


def doctor(
    spec: str | None = typer.Argument(None, help="The spec whose deployment to examine (live).", show_default=False),
    env: str | None = EnvOpt,
    from_dir: Path | None = typer.Option(None, "--from", help="Read a dump instead: kubectl get -o json files, logs/."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The cause of a broken deployment in one line each, with evidence and the fix. Exit 1 when one is found."""
    from vllm_fleet.errors import SpecError
    from vllm_fleet.ops import lifecycle
    from vllm_fleet.plan import load_plan

    with errors(as_json):
        if from_dir is not None:
            found = lifecycle.doctor_from(from_dir)
        elif spec is not None:
            found = run(lifecycle.doctor(load_plan(spec, env), _options(kubeconfig, context)))
        else:
            raise SpecError("doctor needs a spec (live) or --from DIR (a dump)", fix="vllm-fleet doctor SPEC --env E")
    if as_json:
        print_json([d.to_dict() for d in found])
    else:
        print_diagnoses(found)
    if found:
        raise typer.Exit(1)


def print_diagnoses(found) -> None:
    from rich.markup import escape

    if not found:
        console.print("[green]nothing wrong found[/]")
    for d in found:
        kind = "primary" if d.primary else "proximate"
        wait = "waiting may fix it" if d.retryable else "waiting will not fix it"
        console.print(f"[red bold]{escape(d.cause)}[/] [dim]({kind}; {wait})[/]", soft_wrap=True)
        console.print(f"  evidence: {escape(d.evidence)}", soft_wrap=True)
        console.print(f"  fix: {escape(d.fix)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(preflight)
    app.command()(doctor)
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(restart)
    app.command()(logs)
