"""What every model source is: its files, how to reach it, and the one retryable failure.

The concrete sources (file, http, s3, gs, hf) import only this module and their
transport, never the package, so the registry in ``__init__`` can import them lazily
without a cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from vllm_fleet.errors import SpecError

WEIGHT_FALLBACKS = ("*.bin", "*.pt", "*.pth")  # skipped when *.safetensors exist, as vLLM's loader does


@dataclass(frozen=True)
class SourceFile:
    """One file of a model at its source."""

    path: str  # relative, '/'-separated; untrusted until cache.safe_join accepts it
    size: int
    checksum: str | None = None  # "algo:hex" when the source offers one (sha256, md5, crc32c, gitsha1)
    etag: str | None = None  # the version the listing saw; a ranged read that sees another one fails


@dataclass(frozen=True)
class SourceOptions:
    """How to reach a source: only what a URI cannot say. Credentials never come from here."""

    endpoint_url: str | None = None  # S3-compatible endpoint (else AWS_ENDPOINT_URL, else AWS)
    revision: str | None = None  # hf:// revision when the URI has no @revision
    stall_timeout: float = 30.0  # seconds without a byte before a read is abandoned and retried
    concurrency: int = 16  # connections the transport may open


class Source(Protocol):
    """A model at its source. ``revision`` is known after ``list_files`` (e.g. the HF commit)."""

    uri: str
    revision: str | None

    async def list_files(self) -> list[SourceFile]: ...

    def read_range(self, file: SourceFile, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of ``file``; raises Retryable for errors worth another try."""
        ...

    async def aclose(self) -> None: ...


class Retryable(Exception):
    """A transient failure (connection dropped, stall, 5xx): the range is tried again."""


def file_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (percent-escapes decoded, as ``Path.as_uri`` writes them)."""
    return Path(unquote(urlparse(uri).path))


def bucket_and_prefix(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``scheme://BUCKET/PREFIX``; the prefix is empty or ends in '/'."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise SpecError(f"no bucket in {uri!r}", fix=f"write {parsed.scheme}://BUCKET/PREFIX")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"
