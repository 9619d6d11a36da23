"""`vllm-fleet render / bake / drain`: Kubernetes manifests, the disk bake, and the pods' drain hook."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vllm_fleet.cli.common import EnvOpt, JsonOpt, SpecArg, console, err_console, errors, print_json, run

OutOpt = typer.Option(None, "--output", "-o", help="Write one file per object and a kustomization.yaml here.")


def render(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    out: Path | None = OutOpt,
    batch: str | None = typer.Option(
        None, "--batch", help="Render only a batch Job instead: its input JSONL, a path on --batch-claim."
    ),
    batch_output: str = typer.Option("output.jsonl", help="The batch Job's output, a path on --batch-claim."),
    batch_claim: str | None = typer.Option(None, help="The PersistentVolumeClaim holding the batch's files."),
    batch_eval: str | None = typer.Option(None, help="The batch Job's --eval metric (its report beside the output)."),
    as_json: bool = JsonOpt,
) -> None:
    """Render SPEC as Kubernetes YAML (stdout, or files under -o DIR); lint warnings go to stderr."""
    from vllm_fleet.errors import SpecError
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets.kubernetes.manifests.batch import BatchJob, batch_job
    from vllm_fleet.targets.kubernetes.manifests.render import render as build
    from vllm_fleet.targets.kubernetes.manifests.render import to_yaml, write_dir

    with errors(as_json):
        plan = load_plan(spec, env)
        if batch is not None and not batch_claim:
            raise SpecError(
                "--batch needs --batch-claim: the claim its input and output live on", fix="add --batch-claim NAME"
            )
        objects = (
            [batch_job(plan, BatchJob(batch_claim, batch, batch_output, batch_eval))]
            if batch and batch_claim
            else build(plan)
        )
        written = write_dir(objects, out) if out else []
    for warning in plan.lint:
        err_console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    if as_json:
        print_json({"objects": objects, "files": [str(p) for p in written], "lint": list(plan.lint)})
    elif out:
        console.print(f"wrote {len(written)} files to {out} (kubectl apply -k {out})")
    else:
        sys.stdout.write(to_yaml(objects))


ImagesOpt = typer.Option(False, "--images", help="GKE: the commands that preload kubernetes.image on a secondary "
                         "boot disk (kubernetes.image_cache_disk), instead of the weights disk.")  # fmt: skip


def bake(
    spec: str = SpecArg,
    env: str | None = EnvOpt,
    out: Path | None = OutOpt,
    images: bool = ImagesOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print (or write to -o DIR/bake.yaml) the Job that fills a disk, and the commands that image it per zone."""
    from vllm_fleet.plan import load_plan
    from vllm_fleet.targets.kubernetes.manifests.bake import bake as build
    from vllm_fleet.targets.kubernetes.manifests.bake import bake_images
    from vllm_fleet.targets.kubernetes.manifests.render import to_yaml

    with errors(as_json):
        result = (bake_images if images else build)(load_plan(spec, env))
    if images and not as_json:
        for line in result.commands:
            console.print(line, markup=False, soft_wrap=True)
        return
    text = to_yaml(result.objects)
    if as_json:
        print_json({"objects": result.objects, "commands": result.commands})
        return
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bake.yaml").write_text(text)
        console.print(f"wrote {out / 'bake.yaml'}; then run:", soft_wrap=True)
        for line in result.commands:
            console.print(line, markup=False, soft_wrap=True)
        return
    sys.stdout.write(text + "".join(f"# {line}\n" for line in ["then run:", *result.commands]))


def drain(
    url: str = typer.Option("http://127.0.0.1:8000", help="The local vLLM server."),
    timeout: float = typer.Option(120, min=0, help="Give up after this many seconds."),
    settle: float = typer.Option(5, min=0, help="Seconds to wait first, for load balancers to stop sending."),
    as_json: bool = JsonOpt,
) -> None:
    """Wait until vLLM reports no running or waiting request (a preStop hook). Exit 1 on timeout."""
    from vllm_fleet.ops.drain import drain as run_drain

    result = run(run_drain(url, timeout_s=timeout, settle_s=settle))
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(f"{'drained' if result.drained else 'not drained'} after {result.seconds:.1f} s: {result.detail}")
    if not result.drained:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(render)
    app.command()(bake)
    app.command()(drain)
