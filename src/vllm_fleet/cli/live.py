"""How `up` shows its work in a terminal: a spinner for long steps, a live table of replicas, lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.status import Status
from rich.table import Table

from vllm_fleet.targets.base import QUIET, Reporter


class LiveReporter(Reporter):
    """A Reporter on a rich console; call :meth:`close` when done (also on failure)."""

    def __init__(self, console: Console, title: str):
        self.console = console
        self.title = title
        self.rows: dict[int, tuple[str, str]] = {}
        self._status: Status | None = None
        self._live: Live | None = None

    def phase(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)
            return
        self._status = self.console.status(text)
        self._status.start()

    def line(self, text: str) -> None:
        self.close()
        self.console.print(text, markup=False, soft_wrap=True)

    def replica(self, index: int, url: str, state: str) -> None:
        self._end_status()
        self.rows[index] = (url, state)
        if self._live is None:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4)
            self._live.start()
        else:
            self._live.update(self._table())

    def close(self) -> None:
        """Stop the spinner and the live table (the table's last state stays on screen)."""
        self._end_status()
        if self._live is not None:
            self._live.stop()
            if not self.console.is_terminal:
                self.console.line()  # off a terminal, Live ends its last frame without a newline
            self._live = None
            self.rows = {}

    def _end_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _table(self) -> Table:
        table = Table(title=f"{self.title}: {len(self.rows)} replica(s)", title_justify="left")
        table.add_column("replica")
        table.add_column("endpoint")
        table.add_column("state", overflow="ellipsis", no_wrap=True, max_width=90)
        for i, (url, state) in sorted(self.rows.items()):
            table.add_row(str(i), url, "[green]healthy[/]" if state == "healthy" else state)
        return table


@contextmanager
def reporting(quiet: bool, title: str) -> Iterator[Reporter]:
    """A LiveReporter on the console (closed on the way out, also on failure), or the silent one (``--json``)."""
    if quiet:
        yield QUIET
        return
    from vllm_fleet.cli.common import console

    live = LiveReporter(console, title)
    try:
        yield live
    finally:
        live.close()
