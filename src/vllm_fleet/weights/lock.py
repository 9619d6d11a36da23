"""A lease on a shared cache directory that works where flock lies (NFS, ReadWriteMany volumes).

The lease is a file created with O_CREAT|O_EXCL (atomic on NFSv3+ and local
filesystems). Its holder rewrites it every ``ttl / 4`` seconds (a heartbeat
counter in the content: on NFS, close-to-open consistency makes a fresh open
see new content, while mtimes can hide behind attribute caches and clock skew).
A waiter takes the lease over when it has seen no change for ``ttl`` seconds by
its own clock, or at once when the holder ran on this host and its process is
gone. Takeover renames the file away (only one waiter wins the rename). A
holder that finds its lease gone stops before publishing; correctness never
rests on the lease alone: files are verified and renamed into place atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from vllm_fleet.errors import CacheError


class Lease:
    def __init__(self, path: Path, *, ttl: float = 30.0, poll: float = 0.2):
        self.path = path
        self.ttl = ttl
        self.poll = poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False

    async def acquire(self, done: Callable[[], bool]) -> bool:
        """Wait for the lease: True when held, False when ``done()`` became true first."""
        observed, since = None, time.monotonic()
        while True:
            if await asyncio.to_thread(done):
                return False
            if await asyncio.to_thread(self._create):
                if await asyncio.to_thread(done):  # finished between the check and the take: hand it back
                    self.path.unlink(missing_ok=True)
                    return False
                self._beat = threading.Thread(target=self._heartbeat, name="vllm-fleet-lease", daemon=True)
                self._beat.start()
                return True
            content = await asyncio.to_thread(self._read, self.path)
            if content is not None:
                if content != observed:
                    observed, since = content, time.monotonic()
                if content and (holder_gone(content) or time.monotonic() - since > self.ttl):
                    await asyncio.to_thread(self._take_over, content)
                    continue
            await asyncio.sleep(self.poll)

    def held(self) -> bool:
        """Whether the lease file still names this holder."""
        content = self._read(self.path)
        return bool(content and content.split("\n", 1)[0] == self.token)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.held():
            self.path.unlink(missing_ok=True)

    def _content(self, beat: int) -> str:
        return f"{self.token}\n{process_host()}\n{os.getpid()}\n{beat}\n"

    def _create(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CacheError(f"cannot create the cache lease {self.path}: {exc.strerror}") from exc
        with os.fdopen(fd, "w") as fh:
            fh.write(self._content(0))
        return True

    def _heartbeat(self) -> None:
        beat = 0
        while not self._stop.wait(self.ttl / 4):
            if not self.held():
                self.lost = True
                return
            beat += 1
            try:
                with open(self.path, "r+") as fh:
                    fh.write(self._content(beat))
            except OSError:
                self.lost = True
                return

    def _take_over(self, stale: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another waiter took it first
        if self._read(aside) != stale:
            # The holder changed between our read and the rename: give the live lease back if nobody took the name.
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None


def process_host() -> str:
    """This host and PID namespace: a PID means the same process only within both (hostNetwork pods share names)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def holder_gone(content: str) -> bool:
    """True when the lease was taken on this host by a process that no longer exists."""
    parts = content.split("\n")
    if len(parts) < 3 or parts[1] != process_host() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
