"""The page cache, seen from one file: how much of it is resident, fill it, drop it, how much room is left.

Used by prefetch (read only what is missing, never evict what it just read) and
by the benchmarks (cold means cold: drop a file's pages, then check with
mincore(2) that they are gone). Standard library only (ctypes for mincore), so
`vllm-fleet prefetch` starts in milliseconds. Linux only.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

_LOW_BIT = bytes(b & 1 for b in range(256))  # mincore sets bit 0 per page; the other bits are reserved
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


PAGE = mmap.PAGESIZE


def resident_pages(path: str | Path) -> bytes:
    """One byte per page of ``path``: 1 when it is in the page cache (mincore over a mapping that faults nothing in)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return b""
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fh.fileno(), 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return vec.raw[:pages].translate(_LOW_BIT)
        finally:
            _libc.munmap(addr, size)


def resident_bytes(path: str | Path) -> int:
    """Bytes of ``path`` now in the page cache."""
    return min(os.path.getsize(path), resident_pages(path).count(1) * PAGE)


def read_into_cache(fd: int, offset: int, length: int, sink: int) -> None:
    """Read a range of ``fd`` into the page cache: sendfile to ``sink`` (an fd of /dev/null), no copy out to us.

    Against preadv into a buffer, on the 2 ms-per-read FUSE disk of benchmarks/bench_coldstart.py: 2-40 %
    less CPU (median 18 %), and a loader running beside it finished sooner. A file system that cannot
    splice gets a read.
    """
    end = offset + length
    try:
        while offset < end and (sent := os.sendfile(sink, fd, offset, end - offset)):
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        os.preadv(fd, [bytearray(end - offset)], offset)


def drop(path: str | Path) -> int:
    """Write back and drop ``path``'s pages (no root needed); returns the bytes still resident."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # DONTNEED skips dirty pages: a file just written would stay warm
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_bytes(path)


@dataclass(frozen=True)
class Headroom:
    """Memory the page cache can still grow into without evicting, and what limits it."""

    bytes: int
    limited_by: str  # "MemAvailable" or the cgroup file that is tighter


def headroom() -> Headroom:
    """Memory not held by processes: the smaller of MemAvailable and this cgroup's limit less its anon use.

    Both count reclaimable page cache as available, as the kernel does. In a
    container (a Kubernetes sidecar) the page cache a process fills is charged
    to its cgroup, so the cgroup limit is what decides eviction there.
    """
    best = Headroom(_meminfo_available(), "/proc/meminfo MemAvailable")
    group = _cgroup_room()
    return group if group is not None and group.bytes < best.bytes else best


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemAvailable missing from /proc/meminfo")


def _cgroup_room() -> Headroom | None:
    """This process's memory cgroup limit less what it holds beside the page cache (v2 or v1), if limited."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # v2: memory.max, memory.current, memory.stat "file"
            files, cache_key = ("memory.max", "memory.current"), "file"
            root = Path("/sys/fs/cgroup") / group.lstrip("/")
        elif "memory" in controllers.split(","):  # v1
            files, cache_key = ("memory.limit_in_bytes", "memory.usage_in_bytes"), "total_cache"
            root = Path("/sys/fs/cgroup/memory") / group.lstrip("/")
        else:
            continue
        try:
            limit_text, used = ((root / name).read_text().strip() for name in files)
            stat = dict(row.split() for row in (root / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 62:
            continue
        room = int(limit_text) - int(used) + int(stat.get(cache_key, 0))
        return Headroom(max(0, room), str(root / files[0]))
    return None
