"""Warm the page cache with a model's weights at the device's speed, before and while vLLM starts.

vLLM's default loader walks mmap'd safetensors and page-faults through them:
each fault reads ``read_ahead_kb`` (128 KiB on a default cloud disk), one file
after another, and only after the engine's own start-up. Prefetch instead
issues large concurrent reads (buffered, so the pages land in the page cache)
in the loader's file order, starting at once, so the loader finds its pages
already in memory (issue 6: 86 s -> the disk's 13 s for a 16 GB model).

It is bounded by memory: it never reads more than fits beside what processes
hold (less a reserve), so it cannot evict what it just read; it stops and
says why when the model does not fit. Standard library only: the command's
own start-up is part of its speed.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_fleet.errors import SpecError
from vllm_fleet.weights import pagecache
from vllm_fleet.weights.cache import META_DIR

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# High-latency disks (a cloud disk at 128 KiB read-ahead) need many reads in flight, local ones large
# reads; 32 x 16 MiB is within a few % of the best of both in benchmarks/bench_coldstart.py, and a chunk
# costs no memory (read_into_cache copies nothing out). probe-storage measures the fewest reads that suffice.
DEFAULT_CONCURRENCY = 32
DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_RESERVE_BYTES = 1 << 30
_HEADROOM_CHECK_BYTES = 256 << 20  # re-read the memory headroom after this much progress

Progress = Callable[[int, int], None]  # (bytes done, bytes to do)


@dataclass(frozen=True)
class PrefetchResult:
    """What one prefetch did. ``complete`` is False when it stopped early; ``stopped`` says why."""

    model_dir: str
    files: int
    bytes_total: int
    bytes_cached_before: int
    bytes_read: int
    seconds: float
    complete: bool
    stopped: str | None = None

    @property
    def gbps(self) -> float:
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"gbps": round(self.gbps, 3)}


def weight_files(model_dir: str | Path) -> list[Path]:
    """The weight files under ``model_dir``, in the natural order vLLM's loaders read them."""
    root = Path(model_dir)
    if not root.is_dir():
        raise SpecError(f"{root} is not a directory", fix="pass the model directory (the one with config.json)")
    files = [
        p
        for p in root.rglob("*")
        if p.suffix in WEIGHT_SUFFIXES and p.is_file() and META_DIR not in p.relative_to(root).parts
    ]
    if not files:
        raise SpecError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {root}",
            fix="pass the model directory that holds the *.safetensors files",
        )
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def prefetch(
    model_dir: str | Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> PrefetchResult:
    """Read every weight file of ``model_dir`` into the page cache with ``concurrency`` large reads."""
    if concurrency < 1 or chunk_bytes < pagecache.PAGE or chunk_bytes % pagecache.PAGE:
        raise SpecError(
            "concurrency must be >= 1 and the chunk a multiple of the page size",
            fix="e.g. --concurrency 32 --chunk-mb 16",
        )
    files = weight_files(model_dir)
    sizes = [p.stat().st_size for p in files]
    resident = [pagecache.resident_pages(p) for p in files]
    cached = sum(min(size, pages.count(1) * pagecache.PAGE) for size, pages in zip(sizes, resident, strict=True))
    ranges = list(_missing_ranges(sizes, resident, chunk_bytes))
    need = sum(r[2] for r in ranges)
    room = pagecache.headroom()
    budget = room.bytes - reserve_bytes
    stopped = None
    if need > budget:
        stopped = (
            f"the model needs {need / 1e9:.2f} GB more page cache but only {max(budget, 0) / 1e9:.2f} GB is free "
            f"beside a {reserve_bytes / 1e9:.1f} GB reserve ({room.limited_by}): read the first part only"
        )
        fits = list(itertools.takewhile(lambda total: total <= budget, itertools.accumulate(r[2] for r in ranges)))
        ranges = ranges[: len(fits)]
    reader = _Reader(files, ranges, need, reserve_bytes, progress, stop or threading.Event())
    start = time.perf_counter()
    reader.run(concurrency)
    seconds = time.perf_counter() - start
    stopped = reader.stopped or stopped
    if stopped is None and reader.done < need:
        stopped = "stopped on request"
    return PrefetchResult(
        model_dir=str(model_dir),
        files=len(files),
        bytes_total=sum(sizes),
        bytes_cached_before=cached,
        bytes_read=reader.done,
        seconds=seconds,
        complete=stopped is None,
        stopped=stopped,
    )


def _missing_ranges(sizes: list[int], resident: list[bytes], chunk: int) -> Iterator[tuple[int, int, int]]:
    """(file index, offset, length) in reading order, for every chunk with a page not in the cache."""
    per_chunk = chunk // pagecache.PAGE
    for index, (size, pages) in enumerate(zip(sizes, resident, strict=True)):
        for offset in range(0, size, chunk):
            first = offset // pagecache.PAGE
            if 0 in pages[first : first + per_chunk]:
                yield index, offset, min(chunk, size - offset)


class _Reader:
    """Worker threads that share one cursor over the ranges, so the reads advance in file order."""

    def __init__(
        self,
        files: list[Path],
        ranges: list[tuple[int, int, int]],
        total: int,
        reserve: int,
        progress: Progress | None,
        stop: threading.Event,
    ):
        self.files, self.ranges, self.total, self.reserve = files, ranges, total, reserve
        self.progress, self.stop = progress, stop
        self.next = itertools.count()  # next() on a count is atomic under the GIL
        self.lock = threading.Lock()
        self.done = 0
        self.checked_at = 0
        self.stopped: str | None = None
        self.error: BaseException | None = None
        self.fds: dict[int, int] = {}

    def run(self, concurrency: int) -> None:
        try:
            for index in sorted({r[0] for r in self.ranges}):
                self.fds[index] = os.open(self.files[index], os.O_RDONLY)
            workers = [threading.Thread(target=self._work, daemon=True) for _ in range(concurrency)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        finally:
            for fd in self.fds.values():
                os.close(fd)
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            while not self.stop.is_set():
                n = next(self.next)
                if n >= len(self.ranges):
                    return
                index, offset, length = self.ranges[n]
                pagecache.read_into_cache(self.fds[index], offset, length, sink)
                self._advance(length)
        except BaseException as exc:  # surfaced by run() in the caller's thread
            self.error = exc
            self.stop.set()
        finally:
            os.close(sink)

    def _advance(self, length: int) -> None:
        with self.lock:
            self.done += length
            done = self.done
            check = done - self.checked_at >= _HEADROOM_CHECK_BYTES
            if check:
                self.checked_at = done
        if self.progress:
            self.progress(done, self.total)
        # Our own pages count as reclaimable in the headroom: what is left once they are kept must
        # stay above the reserve, or the kernel would start evicting what we just read.
        if check and (room := pagecache.headroom()).bytes - done < self.reserve:
            self.stopped = (
                f"memory ran short after {done / 1e9:.2f} GB ({room.limited_by}): stopped so as not to evict "
                "what was read"
            )
            self.stop.set()


class PrefetchHandle:
    """A prefetch running in a background thread (the local target starts one beside vLLM)."""

    def __init__(self, model_dir: str | Path, **options) -> None:
        self._stop = threading.Event()
        self._result: PrefetchResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(model_dir, options), name="vllm-fleet-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, model_dir: str | Path, options: dict) -> None:
        try:
            self._result = prefetch(model_dir, stop=self._stop, **options)
        except BaseException as exc:  # reported by wait()
            self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Ask the readers to stop after their current chunk, and wait for them."""
        self._stop.set()
        self._thread.join()

    def wait(self, timeout: float | None = None) -> PrefetchResult | None:
        """The result once finished (None while still running after ``timeout``); re-raises its error."""
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self._result


def start_prefetch(model_dir: str | Path, **options) -> PrefetchHandle:
    """Start prefetching ``model_dir`` in the background; ``options`` are those of :func:`prefetch`."""
    return PrefetchHandle(model_dir, **options)
