"""What every command shares: the error boundary, JSON output, the console."""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape


@dataclass
class _State:
    debug: bool = False


T = TypeVar("T")
state = _State()


def _console(stderr: bool = False) -> Console:
    """A terminal's console wraps at its width; off a terminal (CI logs, pipes) lines are never wrapped."""
    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=max(console.width, UNWRAPPED_WIDTH))


UNWRAPPED_WIDTH = 400  # tables take their natural width up to this off a terminal
console = _console()
err_console = _console(stderr=True)

SpecArg = typer.Argument(..., help="Path of the YAML spec.", show_default=False)
EnvOpt = typer.Option(None, "--env", "-e", help="Environment overlay: development, staging, production ...")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
KubeconfigOpt = typer.Option(
    None, "--kubeconfig", help="Kubernetes: kubeconfig file (default: KUBECONFIG, ~/.kube/config)."
)
ContextOpt = typer.Option(None, "--context", help="Kubernetes: kubeconfig context (default: its current one).")


@contextmanager
def errors(as_json: bool = False) -> Iterator[None]:
    """Turn a FleetError into one actionable message and its exit code (tracebacks with --debug).

    With ``as_json`` the error is also a JSON object on stdout, so a script reads one stream.
    """
    from vllm_fleet.errors import FleetError

    try:
        yield
    except FleetError as exc:
        if state.debug:
            raise
        if as_json:
            print_json({"error": exc.message, "fix": exc.fix, "kind": type(exc).__name__, "exit_code": exc.exit_code})
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        if exc.details:
            err_console.print(exc.details, markup=False, style="dim", soft_wrap=True)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {escape(exc.fix)}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleaned up already: another Ctrl-C must not cut the exit
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """The CLI's one entry into the event loop (uvloop when installed)."""
    from vllm_fleet.loop import run_loop

    return run_loop(coroutine)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
