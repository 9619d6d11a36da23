"""A read-only FUSE passthrough that behaves like a cloud persistent disk: every read request waits a
fixed latency (default 2 ms) and, optionally, its share of a bandwidth cap; requests run in parallel
(libfuse's multithreaded loop), so a deep queue pays the latency once per wave, as on a cloud disk.

    python benchmarks/fuse_latency.py SOURCE_DIR MOUNTPOINT [--latency-ms 2] [--bandwidth-mbps 0]

The kernel's read-ahead for the mount is max_readahead=128 KiB (a default cloud disk's read_ahead_kb);
page cache as on a block device: no direct_io, kernel_cache (an open keeps the cached pages), so
posix_fadvise(DONTNEED) evicts and mincore sees them. Needs root or fusermount3 (apt `fuse3`) and
the `bench` extra (mfusepy over libfuse3, which allows 1 MiB requests). Runs in the foreground until
unmounted (`fusermount3 -u MOUNTPOINT`); used by bench_coldstart.py --device fuse.
"""

from __future__ import annotations

import argparse
import errno
import os
import threading
import time
from pathlib import Path

import mfusepy

READ_AHEAD = 128 << 10


class LatencyDisk(mfusepy.Operations):
    """Passthrough of ``source``: reads pay ``latency_s`` each, plus a shared ``bandwidth`` (bytes/s) cap."""

    use_ns = True

    def __init__(self, source: Path, latency_s: float, bandwidth: float) -> None:
        self.source = source
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        self._lock = threading.Lock()
        self._link_free_at = 0.0  # when the (capped) link has sent every byte asked so far

    def _real(self, path: str) -> str:
        return str(self.source / path.lstrip("/"))

    def init_with_config(self, conn_info, config_3) -> None:
        conn_info.max_readahead = READ_AHEAD
        conn_info.max_background = 64  # async read-ahead requests in flight: a cloud disk's deep queue
        conn_info.congestion_threshold = 48
        if config_3 is not None:
            config_3.kernel_cache = 1
            config_3.direct_io = 0
            config_3.entry_timeout = config_3.attr_timeout = 3600.0

    def getattr(self, path: str, fh: int | None = None) -> dict:
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        return {k.removesuffix("_ns"): getattr(st, k) for k in keys}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return os.open(self._real(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        wait = self.latency_s
        if self.bandwidth:
            now = time.monotonic()
            with self._lock:
                self._link_free_at = max(self._link_free_at, now) + size / self.bandwidth
                wait = max(wait, self._link_free_at - now)
        time.sleep(wait)
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict:
        st = os.statvfs(self.source)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_namemax")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="added to every read request")
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0, help="cap in MB/s shared by all reads; 0: none")
    args = parser.parse_args()
    disk = LatencyDisk(args.source.resolve(), args.latency_ms / 1e3, args.bandwidth_mbps * 1e6)
    mfusepy.FUSE(disk, str(args.mountpoint), foreground=True, ro=True, fsname="latencydisk")


if __name__ == "__main__":
    main()
