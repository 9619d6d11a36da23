"""What the volume under a path can deliver, and how to read from it at that speed.

Three measurements on one file (an existing large file, or a probe file
written for the purpose and removed afterwards):

- the limit: sequential O_DIRECT reads (no page cache, no read-ahead) of
  several chunk sizes at several queue depths, and cold reads into the page
  cache exactly as prefetch issues them, at several concurrencies; the best
  of all is the device limit;
- the mmap walk at the current read-ahead: what vLLM's default safetensors
  loader gets, page-faulting through the file (cold: pages dropped first);
- file-open latency (it matters on network file systems: gcsfuse, NFS).

From them: the concurrency prefetch should use (the fewest of its own reads
in flight within 90% of its best) and the read_ahead_kb to set on the device
(the smallest chunk a single stream reads at 80% of the limit).
Standard library only.
"""

from __future__ import annotations

import mmap
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_fleet.errors import SpecError
from vllm_fleet.weights import pagecache

CHUNKS = (128 << 10, 1 << 20, 4 << 20, 16 << 20)
QUEUE_DEPTHS = (1, 4, 16)
PREFETCH_CONCURRENCY = (8, 32, 64)
DEFAULT_PROBE_BYTES = 512 << 20
TRIAL_SECONDS = 1.5  # a trial stops after this long or after the file's length, whichever first
_PROBE_NAME = ".vllm-fleet-probe-{pid}.bin"


@dataclass(frozen=True)
class Trial:
    """One O_DIRECT read pattern and its throughput."""

    chunk_bytes: int
    queue_depth: int
    gbps: float


@dataclass(frozen=True)
class ReadAhead:
    """The backing device's read-ahead, as /sys shows it."""

    device: str  # "major:minor"
    sysfs: str | None  # the read_ahead_kb file to write a new value to
    kb: int | None


@dataclass(frozen=True)
class StorageReport:
    """What the volume delivers and the settings that reach it."""

    path: str
    probe_file: str
    probe_bytes: int
    direct: list[Trial]
    direct_supported: bool
    buffered: list[Trial]  # prefetch's own reads into the page cache, cold, at each concurrency
    limit_gbps: float
    mmap_gbps: float
    open_ms: float
    read_ahead: ReadAhead
    recommended_read_ahead_kb: int
    recommended_concurrency: int
    recommended_chunk_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def read_bandwidth_bps(self) -> float:
        """The limit in bytes/s: what the Plan's startup budget can use instead of its assumption."""
        return self.limit_gbps * 1e9

    @property
    def buffered_gbps(self) -> float:
        """The best of prefetch's own reads."""
        return max(t.gbps for t in self.buffered)

    def to_dict(self) -> dict:
        return asdict(self) | {
            "read_bandwidth_bps": round(self.read_bandwidth_bps),
            "buffered_gbps": self.buffered_gbps,
        }


def probe_storage(path: str | Path, *, probe_bytes: int = DEFAULT_PROBE_BYTES) -> StorageReport:
    """Measure the volume under ``path`` (a file to read, or a directory to probe in)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path} does not exist", fix="pass a directory on the volume to probe, or a large file on it")
    target, written = _probe_file(path, probe_bytes)
    try:
        size = target.stat().st_size
        if size < (16 << 20):
            raise SpecError(
                f"{target} is {size} bytes: too small to measure", fix="pass a directory (a probe file is written)"
            )
        notes: list[str] = []
        direct = _direct_trials(target, size)
        if not direct:
            notes.append("O_DIRECT is not supported here (tmpfs, some FUSE): the limit is the buffered reads'")
        mmap_gbps = _mmap_walk(target, size)
        buffered = _prefetch_trials(target, size)
        limit = max(t.gbps for t in direct + buffered)
        ra = read_ahead(target)
        return StorageReport(
            path=str(path),
            probe_file=str(target) + (" (written, removed)" if written else ""),
            probe_bytes=size,
            direct=direct,
            direct_supported=bool(direct),
            buffered=buffered,
            limit_gbps=limit,
            mmap_gbps=mmap_gbps,
            open_ms=_open_ms(target),
            read_ahead=ra,
            recommended_read_ahead_kb=_recommend_read_ahead(direct, limit, ra.kb),
            **_recommend_prefetch(buffered),
            notes=notes,
        )
    finally:
        if written:
            target.unlink(missing_ok=True)


def read_ahead(path: str | Path) -> ReadAhead:
    """The read_ahead_kb of the device backing ``path`` (a partition's is its disk's; NFS and FUSE have one too)."""
    dev = os.stat(path).st_dev
    ident = f"{os.major(dev)}:{os.minor(dev)}"
    block = Path(f"/sys/dev/block/{ident}")
    if (block / "partition").exists():
        ident = (block.resolve().parent / "dev").read_text().strip()
    sysfs = Path(f"/sys/class/bdi/{ident}/read_ahead_kb")
    try:
        return ReadAhead(ident, str(sysfs), int(sysfs.read_text()))
    except (OSError, ValueError):
        return ReadAhead(ident, None, None)


def _probe_file(path: Path, probe_bytes: int) -> tuple[Path, bool]:
    """The file to read: ``path`` itself, or a new one written in the directory ``path``."""
    if path.is_file():
        return path, False
    target = path / _PROBE_NAME.format(pid=os.getpid())
    block = os.urandom(1 << 20)  # incompressible: a compressing or deduplicating store must not flatter us
    try:
        with open(target, "wb") as fh:
            for _ in range(max(16, probe_bytes >> 20)):
                fh.write(block)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise SpecError(
            f"cannot write a probe file in {path}: {exc.strerror}", fix="pass a large existing file on that volume"
        ) from exc
    return target, True


def _direct_trials(target: Path, size: int) -> list[Trial]:
    """Every chunk x queue depth, each starting where the last one stopped (no block is read twice in a row)."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return []
    trials, offset = [], 0
    try:
        for chunk in CHUNKS:
            for depth in QUEUE_DEPTHS:
                gbps, offset = _read(fd, size, chunk, depth, offset, direct=True)
                trials.append(Trial(chunk, depth, round(gbps, 3)))
    except OSError:  # O_DIRECT opened but refused the reads (alignment on an odd file system)
        return []
    finally:
        os.close(fd)
    return trials


def _read(fd: int, size: int, chunk: int, depth: int, offset: int, direct: bool) -> tuple[float, int]:
    """``depth`` threads reading ``chunk``-sized blocks in order from ``offset`` (wrapping) for a trial's time.

    ``direct``: O_DIRECT reads into aligned buffers; otherwise prefetch's reads into the page cache.
    """
    span = size - size % chunk
    cursor = iter(range(offset // chunk * chunk, offset // chunk * chunk + span, chunk))
    lock = threading.Lock()
    done = [0]
    errors: list[OSError] = []
    deadline = time.perf_counter() + TRIAL_SECONDS

    def work() -> None:
        buf = mmap.mmap(-1, chunk) if direct else None  # page-aligned, as O_DIRECT needs
        sink = -1 if direct else os.open(os.devnull, os.O_WRONLY)  # -1: no fd, direct reads need no sink
        try:
            while time.perf_counter() < deadline:
                with lock:
                    pos = next(cursor, None)
                if pos is None:
                    return
                if buf is not None:
                    n = os.preadv(fd, [buf], pos % span)
                else:
                    pagecache.read_into_cache(fd, pos % span, chunk, sink)
                    n = chunk
                with lock:
                    done[0] += n
        except OSError as exc:
            errors.append(exc)
        finally:
            if buf is not None:
                buf.close()
            if sink >= 0:
                os.close(sink)

    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(depth)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return done[0] / (time.perf_counter() - start) / 1e9, (offset + done[0]) % span


def _prefetch_trials(target: Path, size: int) -> list[Trial]:
    """Prefetch's own reads (its chunk size, into the page cache), cold, at each concurrency."""
    from vllm_fleet.weights.prefetch import DEFAULT_CHUNK_BYTES

    chunk = min(DEFAULT_CHUNK_BYTES, size)
    fd = os.open(target, os.O_RDONLY)
    trials = []
    try:
        for depth in PREFETCH_CONCURRENCY:
            pagecache.drop(target)
            gbps, _ = _read(fd, size, chunk, depth, 0, direct=False)
            trials.append(Trial(chunk, depth, round(gbps, 3)))
    finally:
        os.close(fd)
        pagecache.drop(target)
    return trials


def _mmap_walk(target: Path, size: int) -> float:
    """Cold page-fault walk through the file at the current read-ahead, as safetensors' get_tensor does."""
    if pagecache.drop(target):
        raise SpecError(f"cannot drop the cached pages of {target}", fix="probe a file this process can open")
    step = 16 << 20
    deadline = time.perf_counter() + 2 * TRIAL_SECONDS
    with open(target, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        start = time.perf_counter()
        done = 0
        while done < size and time.perf_counter() < deadline:
            done += len(mm[done : done + step])
        seconds = time.perf_counter() - start
    pagecache.drop(target)
    return round(done / seconds / 1e9, 3)


def _open_ms(target: Path, count: int = 20) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        os.close(os.open(target, os.O_RDONLY))
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def _recommend_prefetch(buffered: list[Trial]) -> dict[str, int]:
    """The fewest of prefetch's reads in flight within 90% of the best it measured, at its chunk size."""
    best = max(t.gbps for t in buffered)
    good = min((t for t in buffered if t.gbps >= 0.9 * best), key=lambda t: t.queue_depth)
    return {"recommended_concurrency": good.queue_depth, "recommended_chunk_bytes": good.chunk_bytes}


def _recommend_read_ahead(direct: list[Trial], limit: float, current_kb: int | None) -> int:
    """The smallest chunk one stream reads at 80% of the limit (a page-fault walk keeps about one in flight)."""
    single = sorted((t for t in direct if t.queue_depth == 1), key=lambda t: t.chunk_bytes)
    fast = [t.chunk_bytes >> 10 for t in single if t.gbps >= 0.8 * limit]
    # No single stream reaches it: read-ahead alone cannot; 1 MiB is what took the reference 86 s -> 29 s (issue 6).
    return max(fast[0] if fast else 1024, current_kb or 0)
