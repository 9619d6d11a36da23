"""process.py on real processes: own groups, members found by walking /proc, pid reuse told apart by start time,
whole groups stopped (SIGTERM, then SIGKILL after the grace), and the port check.

Every process a test starts is the leader of its own group; the ``groups`` fixture SIGKILLs those groups at the
end, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until
from vllm_fleet.errors import TargetError
from vllm_fleet.targets.local import process

# A leader that forks a child (as vLLM's API server starts EngineCore), says the child's pid, then waits.
FORKS_A_CHILD = """
import os, time
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(f"CHILD {child}", flush=True)
time.sleep(60)
"""

# A leader that notes SIGTERM and carries on: only SIGKILL stops it.
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def state_of(pid: int) -> str | None:
    """The process state letter in /proc/PID/stat (R, S, Z, ...); None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def gone(pid: int) -> bool:
    """No live process has ``pid`` (absent, or a zombie)."""
    return state_of(pid) in (None, "Z")


class Spawner:
    """Start Python snippets with process.spawn; each is a group leader, its log under ``tmp``."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pgids: list[int] = []

    def __call__(self, code: str, name: str = "proc") -> tuple[int, Path]:
        log = self.tmp / f"{name}-{len(self.pgids)}.log"
        proc = process.spawn([sys.executable, "-c", code], dict(os.environ), log)
        self.pgids.append(proc.pid)
        return proc.pid, log

    @staticmethod
    def wait_line(log: Path, prefix: str) -> str:
        """The first line of ``log`` starting with ``prefix``, once the process has written it (choose a prefix
        that no line of the code has: the log starts with the command line, the code included)."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in log.read_text().splitlines() if line.startswith(prefix)]
            return bool(found)

        wait_until(seen, what=f"{prefix!r} in {log.name}")
        return found[0]


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    yield spawner
    for pgid in spawner.pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, 0)


def test_spawn_puts_the_child_in_its_own_session_and_logs_its_command_line(spawner: Spawner) -> None:
    """The child leads a new session and group (not ours); its log starts with ``$ argv``, then its output."""
    pid, log = spawner("print('hello', flush=True); import time; time.sleep(60)")
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid != os.getpgid(0)
    spawner.wait_line(log, "hello")
    first = log.read_text().splitlines()[0]
    assert first.startswith(f"$ {sys.executable} -c print('hello'")


def test_group_members_finds_a_forked_grandchild(spawner: Spawner) -> None:
    """Walking /proc finds the leader and the child it forked (same group), and nobody else."""
    leader, log = spawner(FORKS_A_CHILD)
    child = int(spawner.wait_line(log, "CHILD ").split()[1])
    assert sorted(process.group_members(leader)) == sorted([leader, child])
    assert os.getpid() not in process.group_members(leader)


def test_is_ours_and_leader_alive_tell_a_reused_pid_by_its_start_time(spawner: Spawner) -> None:
    """The recorded start time matches: ours and alive. Another start time (the pid was reused): neither.
    Once the group is stopped: neither, even with the right start time."""
    pid, _ = spawner("import time; time.sleep(60)")
    ticks = process.start_ticks(pid)
    assert ticks is not None
    assert process.leader_alive(pid, ticks) and process.is_ours(pid, ticks)
    assert not process.leader_alive(pid, ticks + 1)
    assert not process.is_ours(pid, ticks + 1)
    asyncio.run(process.stop_groups([pid], grace_s=5))
    assert process.start_ticks(pid) is None
    assert not process.leader_alive(pid, ticks) and not process.is_ours(pid, ticks)


def test_leader_alive_is_false_for_a_zombie(spawner: Spawner) -> None:
    """A leader that died but is not reaped yet still has its /proc entry, and is not alive."""
    pid, _ = spawner("import time; time.sleep(60)")
    ticks = process.start_ticks(pid)
    assert ticks is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: state_of(pid) == "Z", what="the zombie")
    assert process.start_ticks(pid) == ticks
    assert not process.leader_alive(pid, ticks)


def test_stop_groups_sigkills_a_leader_that_ignores_sigterm_after_the_grace(spawner: Spawner) -> None:
    """SIGTERM first (the leader saw it), SIGKILL once the grace has passed, and not much later."""
    pid, log = spawner(IGNORES_SIGTERM)
    spawner.wait_line(log, "ready")
    started = time.monotonic()
    asyncio.run(process.stop_groups([pid], grace_s=0.6))
    elapsed = time.monotonic() - started
    assert "got SIGTERM" in log.read_text().splitlines()  # a line of output (the code is in the log's first lines)
    assert process.group_members(pid) == [] and process.start_ticks(pid) is None  # killed and reaped
    assert 0.6 <= elapsed < 2.5


def test_stop_groups_returns_as_soon_as_a_cooperative_group_is_gone(spawner: Spawner) -> None:
    """A group that exits on SIGTERM (leader and child) is not held for the whole grace."""
    leader, log = spawner(FORKS_A_CHILD)
    child = int(spawner.wait_line(log, "CHILD ").split()[1])
    started = time.monotonic()
    asyncio.run(process.stop_groups([leader], grace_s=20))
    assert time.monotonic() - started < 5
    assert gone(leader) and gone(child)


def test_a_group_whose_leader_was_sigkilled_is_still_ours_and_stop_groups_stops_its_child(spawner: Spawner) -> None:
    """The API server killed, its EngineCore left behind: the group still counts as ours (its id cannot be handed
    out while members remain) and stopping it signals the group, so the child goes too."""
    leader, log = spawner(FORKS_A_CHILD)
    child = int(spawner.wait_line(log, "CHILD ").split()[1])
    ticks = process.start_ticks(leader)
    assert ticks is not None
    os.kill(leader, signal.SIGKILL)
    os.waitpid(leader, 0)  # reaped, as init does once the `up` that started it has exited
    assert process.start_ticks(leader) is None and not process.leader_alive(leader, ticks)
    assert process.group_members(leader) == [child]
    assert process.is_ours(leader, ticks)
    asyncio.run(process.stop_groups([leader], grace_s=5))
    assert gone(child)
    assert process.group_members(leader) == []
    assert not process.is_ours(leader, ticks)


def test_a_group_whose_leader_is_an_unreaped_zombie_is_still_ours(spawner: Spawner) -> None:
    """Same as above, but the leader is not reaped yet (it is a child of this process, as in the process that
    ran ``up``): its pid cannot be reused while it is a zombie, so its live members are ours."""
    leader, log = spawner(FORKS_A_CHILD)
    child = int(spawner.wait_line(log, "CHILD ").split()[1])
    ticks = process.start_ticks(leader)
    assert ticks is not None
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: state_of(leader) == "Z", what="the zombie")
    assert process.group_members(leader) == [child]
    assert process.is_ours(leader, ticks)
    assert not process.is_ours(leader, ticks + 1)
    asyncio.run(process.stop_groups([leader], grace_s=5))
    assert gone(child) and process.start_ticks(leader) is None  # the child stopped, the zombie reaped
    assert not process.is_ours(leader, ticks)


def test_check_port_free_raises_a_target_error_naming_the_port() -> None:
    """A listening port is refused with its number and the fix; a free one passes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(TargetError, match=rf"port {port} on 127\.0\.0\.1 is in use") as info:
            process.check_port_free("127.0.0.1", port)
    assert info.value.fix and "local.base_port" in info.value.fix
    process.check_port_free("127.0.0.1", port)  # closed now: free


def test_check_port_free_sees_a_port_bound_by_an_engine_still_loading() -> None:
    """vLLM binds its socket (SO_REUSEADDR) before loading the weights and listens only once it serves
    (vllm/entrypoints/launchers/launcher.py, create_server_socket): that port is not free for a second engine."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(TargetError, match=str(port)):
            process.check_port_free("127.0.0.1", port)


def test_check_port_free_counts_a_port_with_only_time_wait_connections_as_free() -> None:
    """The side that closes first keeps TIME_WAIT for a minute: vLLM still binds there (SO_REUSEADDR)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
        client.recv(1)
        client.close()
    process.check_port_free("127.0.0.1", port)
