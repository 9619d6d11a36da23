"""Printing logs: the tail of each, then (``follow``) what is appended, each line prefixed by its log's name."""

from __future__ import annotations

import os
import sys
import time

from vllm_fleet.targets.local.health import log_tail

POLL_S = 0.25


def follow_logs(logs: list[tuple[str, str]], lines: int, follow: bool) -> None:
    many = len(logs) > 1
    offsets = {}
    for name, path in logs:
        for line in log_tail(path, lines).splitlines() if lines else ():
            _emit(name if many else "", line)
        offsets[path] = os.path.getsize(path) if os.path.exists(path) else 0
    while follow:
        for name, path in logs:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offsets[path])
                    chunk = fh.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for its newline
            offsets[path] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                _emit(name if many else "", line)
        time.sleep(POLL_S)


def _emit(name: str, line: str) -> None:
    sys.stdout.write(f"[{name}] {line}\n" if name else f"{line}\n")
    sys.stdout.flush()
