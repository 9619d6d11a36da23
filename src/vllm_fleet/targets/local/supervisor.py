"""The supervisor: a small background process that restarts a crashed replica, with backoff.

    python -m vllm_fleet.targets.local.supervisor RUN_DIR

``up`` starts it once every replica is healthy; it outlives the command. Every
``POLL_S`` it reads the state: an engine record (``supervised``) whose leader is gone is
restarted with the same command line and environment on the same port, after what is left
of its group is killed, and its ``restarts`` count goes up. The router keeps the replica's URL and
routes to it again once its health check passes. Backoff doubles per crash in a row
(a replica that ran ``STABLE_S`` is forgiven). It exits when ``down`` drops its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from vllm_fleet.targets.local import process
from vllm_fleet.targets.local.state import ProcessRecord, read_state, replace_record

POLL_S = 1.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_S = 60.0


class Supervisor:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.crashes: dict[int, int] = {}  # replica index -> crashes in a row
        self.started: dict[int, float] = {}  # replica index -> when we last started it
        self.due: dict[int, float] = {}  # replica index -> when it may be started again

    def mine(self) -> bool:
        return any(r.role == "supervisor" and r.pid == os.getpid() for r in read_state(self.run_dir))

    def tick(self, now: float) -> None:
        for record in read_state(self.run_dir):
            if record.role != "engine" or not record.supervised or not record.argv:
                continue
            if process.leader_alive(record.pid, record.start_ticks):
                if now - self.started.get(record.index, 0.0) > STABLE_S:
                    self.crashes.pop(record.index, None)
                continue
            self.restart(record, now)

    def restart(self, record: ProcessRecord, now: float) -> None:
        due = self.due.get(record.index)
        if due is None:  # seen dead just now: wait out the backoff first
            crashes = self.crashes.get(record.index, 0)
            self.due[record.index] = now + BACKOFF_S[min(crashes, len(BACKOFF_S) - 1)]
            print(f"replica {record.index} (pid {record.pid}) is dead; restarting it", flush=True)
            return
        if now < due:
            return
        process.kill_groups([record.pid])  # its engine's children, if it left any
        # The environment it ran with (records of older versions have none: this process's, which up gave it).
        proc = process.spawn(record.argv, os.environ | (record.env or {}), Path(record.log), append=True)
        ticks = process.start_ticks(proc.pid) or 0
        new = replace(record, pid=proc.pid, start_ticks=ticks, restarts=record.restarts + 1)
        replace_record(self.run_dir, record, new)
        self.crashes[record.index] = self.crashes.get(record.index, 0) + 1
        self.started[record.index] = now
        self.due.pop(record.index, None)
        print(f"replica {record.index} restarted (pid {proc.pid}, restart {new.restarts})", flush=True)


async def supervise(run_dir: Path) -> None:
    supervisor = Supervisor(run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set() and supervisor.mine():
        supervisor.tick(time.monotonic())
        process.reap(r.pid for r in read_state(run_dir))  # the engines we started are our children
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "vllm_fleet.targets.local.supervisor", str(run_dir)]


if __name__ == "__main__":
    from vllm_fleet.loop import run_loop

    run_loop(supervise(Path(sys.argv[1])))
