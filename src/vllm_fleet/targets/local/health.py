"""Waiting for local replicas to become healthy: poll /health, watch each process, read its log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx

from vllm_fleet.errors import EngineError
from vllm_fleet.targets.base import Reporter
from vllm_fleet.targets.local.state import ProcessRecord
from vllm_fleet.wire.health import is_healthy

LOG_TAIL_LINES = 25
POLL_S = 0.5


async def wait_healthy(
    records: list[ProcessRecord], procs: list[subprocess.Popen], timeout_s: float, report: Reporter
) -> None:
    """Return when every replica answers /health; raise EngineError when one exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    pending = set(range(len(records)))
    async with httpx.AsyncClient(trust_env=False) as client:
        while pending:
            for i in sorted(pending):
                record, proc = records[i], procs[i]
                if proc.poll() is not None:
                    raise EngineError(
                        f"replica {i} (port {record.port}) exited with code {proc.returncode} before it became healthy",
                        fix=f"read the log: {record.log}",
                        details=log_tail(record.log),
                    )
                if await is_healthy(client, record.url):
                    pending.discard(i)
                    report.replica(i, record.url, "healthy")
                else:
                    report.replica(i, record.url, _last_line(record.log))
            if pending and time.monotonic() > deadline:
                i = min(pending)
                raise EngineError(
                    f"replica {i} did not become healthy within {timeout_s:.0f} s",
                    fix=f"raise local.start_timeout_s or read the log: {records[i].log}",
                    details=log_tail(records[i].log),
                )
            if pending:
                await asyncio.sleep(POLL_S)


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (read from its last 64 KiB); empty when unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _last_line(log: str) -> str:
    tail = log_tail(log, 1)
    return tail[-100:] if tail else "starting"
