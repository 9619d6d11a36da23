"""Waiting for local replicas to become healthy: poll /health, watch each process, read its log."""

from __future__ import annotations

import asyncio
import os
import re
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
# What vLLM is doing, read from the last of these its log shows (vLLM 0.32's start-up lines).
PHASES = (
    ("non-default args", "reading the model config"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Starting to load model", "loading weights"),
    ("Loading weights took", "allocating the KV cache"),
    ("KV cache size", "warming up"),
    ("Starting vLLM server on", "starting the API server"),
)


async def wait_healthy(
    records: list[ProcessRecord], procs: list[subprocess.Popen], timeout_s: float, report: Reporter
) -> None:
    """Return when every replica answers /health; raise EngineError when one exits or the time runs out."""
    started = time.monotonic()
    deadline = started + timeout_s
    pending = set(range(len(records)))
    async with httpx.AsyncClient(trust_env=False) as client:
        while pending:
            for i in sorted(pending):
                record, proc = records[i], procs[i]
                if proc.poll() is not None:
                    raise _failed(f"replica {i} (port {record.port}) exited with code {proc.returncode}", record)
                if await is_healthy(client, record.url):
                    pending.discard(i)
                    report.replica(i, record.url, "healthy")
                else:
                    report.replica(
                        i, record.url, f"{phase(log_tail(record.log, 200))} {time.monotonic() - started:.0f} s"
                    )
            if pending and time.monotonic() > deadline:
                i = min(pending)
                doing = phase(log_tail(records[i].log, 200))
                raise EngineError(
                    f"replica {i} did not become healthy within {timeout_s:.0f} s (still {doing})",
                    fix=f"raise local.start_timeout_s or read the log: {records[i].log}",
                    details=log_tail(records[i].log),
                )
            if pending:
                await asyncio.sleep(POLL_S)


def _failed(what: str, record: ProcessRecord) -> EngineError:
    """The engine's own last word on why it stopped, with the log's path; its traceback only when no line says why."""
    tail = log_tail(record.log, 200)
    why = reason(tail)
    return EngineError(
        f"{what} before it became healthy" + (f": {why}" if why else ""),
        fix=f"read the log: {record.log}",
        details=None if why else log_tail(record.log),
    )


# The lines that say why a Python program stopped: an exception's last line, argparse's complaint.
_REASON = re.compile(r"^(?:\([^)]*\)\s+)?(?:[\w.]*(?:Error|Exception)|\S+: error): .+$")


def reason(log_text: str) -> str | None:
    """The last line of ``log_text`` that says why the engine stopped (an exception or a usage error)."""
    lines = [line.strip() for line in log_text.splitlines()]
    return next((line for line in reversed(lines) if _REASON.match(line)), None)


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


def phase(log_text: str) -> str:
    """The start-up phase the engine's log shows last ("starting" before it says anything we know)."""
    found, at = "starting", -1
    for marker, name in PHASES:
        position = log_text.rfind(marker)
        if position > at:
            found, at = name, position
    return found
