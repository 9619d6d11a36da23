"""What the local target started, on disk: ``<run_dir>/state.json``, one record per process.

Each record says the process's role (engine, router or supervisor), its process group
and the leader's start time, so a later ``down`` or ``status`` can tell our processes
from strangers that reuse a pid. Written atomically after every spawn, so a crash of
ours never loses a started process; changed under ``locked`` (the supervisor and a
rolling restart both rewrite it).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_fleet.targets.base import Replica, Role
from vllm_fleet.weights.cache import write_atomic

STATE = "state.json"


@dataclass(frozen=True)
class ProcessRecord:
    """One process we started, in its own session (pgid == pid)."""

    role: Role
    index: int
    pid: int
    start_ticks: int  # the leader's start time (/proc/PID/stat field 22): a reused pid has another
    port: int
    url: str
    log: str
    argv: list[str] = field(default_factory=list)  # how to start it again (the supervisor)
    restarts: int = 0
    supervised: bool = True  # False while a rolling restart brings it up: not yet the supervisor's
    # The engine's environment from the spec (engine.vllm_env: engine.env, the KV cache space), so `up` sees a
    # change and the supervisor restarts it with the same; None in state files written before it was recorded.
    env: dict[str, str] | None = None

    @property
    def replica(self) -> Replica:
        return Replica(self.index, self.url, self.role, self.pid, self.log)


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE


def read_state(run_dir: Path) -> list[ProcessRecord]:
    """The records of ``run_dir``; none when there is no state (or it is unreadable)."""
    try:
        raw = json.loads(state_path(run_dir).read_text())
        return [ProcessRecord(**r) for r in raw["processes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_state(run_dir: Path, records: list[ProcessRecord]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"processes": [asdict(r) for r in records]}, indent=2).encode()
    write_atomic(state_path(run_dir), body)


def clear_state(run_dir: Path) -> None:
    state_path(run_dir).unlink(missing_ok=True)


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run dir's state lock (a local file: flock is reliable there) for a read-modify-write."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "state.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def replace_record(run_dir: Path, old: ProcessRecord, new: ProcessRecord | None) -> None:
    """Swap ``old`` for ``new`` in the state (``new`` None: drop it), under the lock."""
    with locked(run_dir):
        records = [r for r in read_state(run_dir) if (r.pid, r.start_ticks) != (old.pid, old.start_ticks)]
        write_state(run_dir, records + ([new] if new else []))


def add_record(run_dir: Path, record: ProcessRecord) -> None:
    with locked(run_dir):
        write_state(run_dir, [*read_state(run_dir), record])
