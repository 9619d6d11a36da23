"""Checksums a source offers, as incremental hashers: "algo:hex" strings in, a yes/no out."""

from __future__ import annotations

import hashlib
from typing import Any

from vllm_fleet.errors import FleetError

ALGORITHMS = ("sha256", "md5", "gitsha1", "crc32c")


def new_hasher(checksum: str, size: int) -> Any:
    """An object with ``update(bytes)`` and ``hexdigest()`` for the algorithm of ``checksum``."""
    algo = checksum.split(":", 1)[0]
    if algo in ("sha256", "md5"):
        return hashlib.new(algo)
    if algo == "gitsha1":  # a git blob id: sha1 over a "blob <size>\0" header and the content
        hasher = hashlib.sha1(usedforsecurity=False)
        hasher.update(b"blob %d\0" % size)
        return hasher
    if algo == "crc32c":
        try:
            import google_crc32c
        except ImportError as exc:
            raise FleetError(
                "checking GCS CRC32C checksums needs google-crc32c", fix="pip install 'vllm-fleet[gcs]'"
            ) from exc
        return google_crc32c.Checksum()
    raise FleetError(f"unknown checksum algorithm {algo!r}")


def hexdigest(hasher: Any) -> str:
    return hasher.digest().hex()  # google_crc32c's hexdigest() returns bytes


def algorithm(checksum: str | None) -> str:
    """What a check with ``checksum`` compares: the algorithm, or "size" when there is none."""
    return checksum.split(":", 1)[0] if checksum else "size"
