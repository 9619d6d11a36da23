"""`up`'s live view: off a terminal (CI, a pipe) every frame and line ends on its own line."""

from __future__ import annotations

import io

from rich.console import Console

from vllm_fleet.cli.live import LiveReporter


def test_a_line_after_the_replica_table_starts_on_a_new_line() -> None:
    out = io.StringIO()
    report = LiveReporter(Console(file=out, width=100), "starting x")
    report.phase("staging file:///m")
    report.line("model: /m (1 MB, cached)")
    report.replica(0, "http://127.0.0.1:8000", "starting")
    report.replica(0, "http://127.0.0.1:8000", "healthy")
    report.line("prefetch: 10 MB read")
    text = out.getvalue()
    assert "┘\nprefetch: 10 MB read\n" in text
    assert text.startswith("model: /m (1 MB, cached)\n")
    assert "healthy" in text
