"""Processes in their own process groups: spawn, recognise (pids get reused), stop the whole group.

Each process is started in a new session, so its group holds it and everything it forks
(vLLM's EngineCore and workers). Stopping signals the group, not the pid: the children
go too, even when the leader already died.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from vllm_fleet.errors import TargetError

STOP_GRACE_S = 20.0
_POLL_S = 0.2


def spawn(argv: list[str], env: dict[str, str], log: Path, append: bool = False) -> subprocess.Popen:
    """Start ``argv`` in a new session, its output in ``log`` (the command line first; ``append``: after what
    the log holds, as a restart keeps the crash it follows)."""
    with open(log, "ab" if append else "wb") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgid [2], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when it does not exist."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def leader_alive(pid: int, ticks: int) -> bool:
    """True when ``pid`` is the process that started at ``ticks`` and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == ticks


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, found by walking /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def is_ours(pgid: int, ticks: int) -> bool:
    """Does group ``pgid`` still hold processes we started?

    Its leader is the process that started at ``ticks`` (alive, or a zombie with members left), or
    the leader is gone and members remain: Linux does not hand out a pid that is still some group's
    id, so those members are its children (vLLM's EngineCore and workers after a kill -9).
    """
    fields = _stat(pgid)
    if fields is not None and int(fields[19]) == ticks:
        return fields[0] != "Z" or bool(group_members(pgid))
    return fields is None and bool(group_members(pgid))


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reap(pgids: Iterable[int], block: bool = False) -> None:
    """Collect leaders that are our own children, so they do not linger as zombies."""
    for pid in pgids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0 if block else os.WNOHANG)


async def stop_groups(pgids: list[int], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each group, wait up to ``grace_s`` for it to empty, then SIGKILL what is left."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_members(g) for g in pgids):
        reap(pgids)
        await asyncio.sleep(_POLL_S)
    kill_groups(pgids)


def kill_groups(pgids: list[int]) -> None:
    """SIGKILL each group now and collect the leaders (the last resort, also on a second Ctrl-C)."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGKILL)
    reap(pgids, block=True)


def check_port_free(host: str, port: int) -> None:
    """Raise a TargetError naming the port when something holds it.

    The probe binds without SO_REUSEADDR: with it, Linux would share the port with a socket that
    is bound but not yet listening, which is vLLM's port while it loads the weights (it binds
    first, serves later). Without it, leftover TIME_WAIT connections also refuse the bind, and
    those do not stop vLLM (it binds with SO_REUSEADDR), so they do not count as in use.
    """
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and _only_time_wait(port):
                return
            raise TargetError(
                f"port {port} on {host} is in use", fix="stop what uses it or set local.base_port in the spec"
            ) from exc


_TIME_WAIT = "06"  # the st column of /proc/net/tcp (include/net/tcp_states.h)


def _only_time_wait(port: int) -> bool:
    """True when every TCP socket on local ``port`` is in TIME_WAIT (and there is at least one)."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(fields[3])
    return bool(states) and all(state == _TIME_WAIT for state in states)
