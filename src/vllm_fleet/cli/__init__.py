"""The command line: parse, call core, print, pick the exit code. No logic here.

Each command group lives in its own module and registers itself on ``app``.
Heavy modules are imported inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

import typer

from vllm_fleet.cli import common

app = typer.Typer(
    name="vllm-fleet",
    help="One YAML spec in, a verified vLLM endpoint out: locally or on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns (rich's boxes wrap every option there)
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"vllm-fleet {version('vllm-fleet')}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    common.state.debug = debug


def _register() -> None:
    from vllm_fleet.cli import batch, bench, kubernetes, lifecycle, models, router, spec, storage, verify, weights

    for module in (spec, weights, lifecycle, verify, bench, batch, router, models, kubernetes, storage):
        module.register(app)


_register()


def main() -> None:
    app()
