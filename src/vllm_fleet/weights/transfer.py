"""The parallel ranged transfer of one file into ``<name>.partial``, verified, then renamed into place.

A file is cut into ``chunk_size`` ranges; all ranges of all files share one
pool of ``concurrency`` connections. Each range is written with ``os.pwrite``
at its offset into a preallocated (sized) ``.partial`` file, so memory stays at
one write buffer per connection whatever the model size. When a range is done
is made durable (fdatasync) and its index goes into ``<name>.partial.json``:
after kill -9 or a power loss a re-run skips those ranges.

The checksum is computed by a follower that reads back the contiguous finished
prefix of the file (from the page cache) while later ranges still download, so
verification overlaps the transfer. A mismatch refetches the file once, then
fails naming it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_fleet.errors import CacheError, SourceError
from vllm_fleet.weights import cache
from vllm_fleet.weights.checksum import algorithm, hexdigest, new_hasher
from vllm_fleet.weights.sources import Retryable, Source, SourceFile

WRITE_BLOCK = 1 << 20  # bytes buffered per connection before one pwritev
HASH_BLOCK = 4 << 20
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class TransferOptions:
    chunk_size: int = 16 << 20
    concurrency: int = 16
    retries: int = 5  # further tries of one range after its first failure
    backoff: float = 0.5  # first retry delay in seconds; doubles, with jitter


class ChecksumMismatch(SourceError):
    """The bytes on disk do not match the source's checksum."""


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def journal_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial.json")


class Transfer:
    """Fetches files from one source; counts bytes and retries across them."""

    def __init__(self, source: Source, options: TransferOptions, on_bytes: Callable[[int], None]):
        self.source = source
        self.options = options
        self.on_bytes = on_bytes
        self.slots = asyncio.Semaphore(options.concurrency)
        self.fetched = 0
        self.retries = 0

    async def fetch(self, file: SourceFile, target: Path) -> cache.ManifestFile:
        """Fetch ``file`` to ``target``: resumed, verified, fsynced, renamed into place."""
        try:
            return await self._fetch_once(file, target)
        except ChecksumMismatch:
            self.retries += 1
            await asyncio.to_thread(discard, target)
        try:
            return await self._fetch_once(file, target)
        except ChecksumMismatch as exc:
            await asyncio.to_thread(discard, target)
            raise ChecksumMismatch(
                f"{file.path}: {exc.message} twice; the bytes served do not match the source's checksum",
                fix="the object at the source is corrupt or was replaced: re-upload it or re-run the stage",
            ) from None

    async def _fetch_once(self, file: SourceFile, target: Path) -> cache.ManifestFile:
        chunk = self.options.chunk_size
        ranges = [(start, min(start + chunk, file.size)) for start in range(0, file.size, chunk)]
        key = {"size": file.size, "checksum": file.checksum, "etag": file.etag, "chunk": chunk}
        done = await asyncio.to_thread(prepare, target, key)
        self.on_bytes(sum(ranges[i][1] - ranges[i][0] for i in done if i < len(ranges)))
        finished = [asyncio.Event() for _ in ranges]
        for i in done:
            finished[i].set()
        journal_lock = asyncio.Lock()

        async def one(i: int) -> None:
            await self._range(file, fd, *ranges[i])
            # Durable before recorded: the journal then survives a power loss too, and the writeback runs
            # while other ranges download instead of in one long fsync at the end (measured: bench_stage.py).
            await asyncio.to_thread(os.fdatasync, fd)
            done.add(i)
            finished[i].set()
            async with journal_lock:
                await asyncio.to_thread(save_journal, target, {**key, "done": sorted(done)})

        fd = os.open(partial_path(target), os.O_RDWR)
        try:
            hasher = new_hasher(file.checksum, file.size) if file.checksum else None
            async with asyncio.TaskGroup() as group:
                for i in range(len(ranges)):
                    if i not in done:
                        group.create_task(one(i))
                if hasher is not None:
                    group.create_task(follow(fd, ranges, finished, hasher))
            if file.checksum:  # so the hasher is set
                expected = file.checksum.split(":", 1)[1].lower()
                if hexdigest(hasher) != expected:
                    raise ChecksumMismatch(f"{algorithm(file.checksum)} mismatch")
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        await asyncio.to_thread(finish, target)
        return cache.ManifestFile(file.path, file.size, file.checksum, algorithm(file.checksum), file.etag)

    async def _range(self, file: SourceFile, fd: int, start: int, end: int) -> None:
        """Bytes [start, end) into ``fd``, retrying from the last byte written.

        Only attempts that moved nothing count against ``retries``: an origin or proxy that cuts
        every response off part-way (per-connection byte limits, flaky NAT) still gets the range
        done, while a stalled read is cut by the stall timeout and a dead source still fails.
        """
        position, failures = start, 0
        async with self.slots:
            while position < end:
                buffer: list[bytes] = []  # chunks as received, written with one pwritev: no copy in Python
                buffered = 0
                attempt_start = position
                try:
                    async for data in self.source.read_range(file, position, end):
                        buffer.append(data)
                        buffered += len(data)
                        if buffered >= WRITE_BLOCK:
                            position = await self._write(fd, buffer, position)
                            buffer, buffered = [], 0
                    position = await self._write(fd, buffer, position)
                except Retryable as exc:
                    position = await self._write(fd, buffer, position)  # what arrived before the failure is good
                    failures = 0 if position > attempt_start else failures + 1
                    self.retries += 1
                    if failures > self.options.retries:
                        raise SourceError(
                            f"{file.path}: bytes {position}-{end} failed {failures} times, last: {exc}",
                            fix="check the source and the network, then re-run (finished ranges are kept)",
                        ) from exc
                    delay = min(MAX_BACKOFF, self.options.backoff * 2 ** max(failures - 1, 0))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))

    async def _write(self, fd: int, chunks: list[bytes], position: int) -> int:
        size = sum(map(len, chunks))
        if size:
            await asyncio.to_thread(pwrite_all, fd, chunks, position)
            self.fetched += size
            self.on_bytes(size)
        return position + size


async def follow(fd: int, ranges: list[tuple[int, int]], finished: list[asyncio.Event], hasher: Any) -> None:
    """Hash the file in order, reading back each range once it is written."""
    for (start, end), event in zip(ranges, finished, strict=True):
        await event.wait()
        await asyncio.to_thread(hash_span, fd, start, end, hasher)


def hash_span(fd: int, start: int, end: int, hasher: Any) -> None:
    while start < end:
        data = os.pread(fd, min(HASH_BLOCK, end - start), start)
        if not data:
            raise CacheError("a .partial file shrank while it was verified", fix="re-run the stage")
        hasher.update(data)
        start += len(data)


def pwrite_all(fd: int, chunks: list[bytes], position: int) -> None:
    try:
        written = os.pwritev(fd, chunks, position)
        if written == sum(map(len, chunks)):
            return
        rest = memoryview(b"".join(chunks))[written:]  # a short write is rare on regular files: finish it plainly
        while rest:
            n = os.pwrite(fd, rest, position + written)
            rest, written = rest[n:], written + n
    except OSError as exc:
        raise disk_error(exc) from exc


def disk_error(exc: OSError) -> CacheError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError("disk full while writing the model", fix="free space or point the cache at a larger volume")
    return CacheError(f"cannot write to the cache: {exc.strerror}", fix="check permissions and the filesystem")


def prepare(target: Path, key: dict) -> set[int]:
    """Ranges already on disk from an earlier run with the same source version; else a fresh sized .partial."""
    partial, journal = partial_path(target), journal_path(target)
    try:
        state = json.loads(journal.read_text())
        if {k: state.get(k) for k in key} == key and partial.stat().st_size == key["size"]:
            return set(state["done"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as fh:
            fh.truncate(key["size"])
    except OSError as exc:
        raise disk_error(exc) from exc
    save_journal(target, {**key, "done": []})
    return set()


def save_journal(target: Path, state: dict) -> None:
    """Replace the range journal (the ranges it names are already durable; a lost update only refetches)."""
    journal = journal_path(target)
    tmp = journal.with_name(journal.name + ".tmp")
    try:
        tmp.write_text(json.dumps(state))
        os.replace(tmp, journal)
    except OSError as exc:
        raise disk_error(exc) from exc


def finish(target: Path) -> None:
    os.replace(partial_path(target), target)
    journal_path(target).unlink(missing_ok=True)


def discard(target: Path) -> None:
    partial_path(target).unlink(missing_ok=True)
    journal_path(target).unlink(missing_ok=True)
