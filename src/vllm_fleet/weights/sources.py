"""URI -> Source: list a model's files (path, size, checksum) and read byte ranges of them.

    file:///dir  or a plain path     a directory on a local or mounted filesystem
    http(s)://host/dir/file          one file
    http(s)://host/dir/              a directory listed by ``index.txt`` in it (see http_source)
    s3://bucket/prefix               any S3-compatible store (s3_source; endpoint from --endpoint-url
                                     or AWS_ENDPOINT_URL)
    gs://bucket/prefix               Google Cloud Storage (gcs_source; STORAGE_EMULATOR_HOST honoured)
    hf://org/name[@revision]         a Hugging Face model repository (hf_source; HF_ENDPOINT, HF_TOKEN)

Every source offers the strongest checksum it has and serves byte ranges as an
async iterator of chunks; the ranged transfer (transfer.py) is written once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from vllm_fleet.errors import SourceError, SourceNotFound, SpecError

READ_BLOCK = 1 << 20
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


class FileSource:
    """A model directory on a local or mounted filesystem."""

    def __init__(self, uri: str):
        self.uri = uri
        self.revision: str | None = None
        self.root = file_path(uri)

    async def list_files(self) -> list[SourceFile]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[SourceFile]:
        if not self.root.is_dir():
            raise SourceNotFound(f"model directory not found: {self.root}", fix="check model.source in the spec")
        files = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if rel.split("/", 1)[0] == ".vllm-fleet" or not p.is_file():
                continue
            if p.is_symlink() and not p.resolve().is_relative_to(self.root.resolve()):
                raise SourceError(f"refusing {rel!r}: it is a symlink that points outside {self.root}")
            stat = p.stat()
            files.append(SourceFile(rel, stat.st_size, etag=f"{stat.st_mtime_ns}-{stat.st_size}"))
        if not files:
            raise SourceNotFound(f"model directory {self.root} is empty", fix="point model.source at a model directory")
        return files

    async def read_range(self, file: SourceFile, start: int, end: int) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, self.root / file.path, os.O_RDONLY)
        try:
            while start < end:
                chunk = await asyncio.to_thread(os.pread, fd, min(READ_BLOCK, end - start), start)
                if not chunk:
                    raise SourceError(f"{file.path} shrank while it was read", fix="re-run the stage")
                start += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        return None


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


def open_source(uri: str, options: SourceOptions | None = None) -> Source:
    """The Source for ``uri``; a plain path means file://. Cloud SDKs are imported only here, lazily."""
    options = options or SourceOptions()
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        return FileSource(uri)
    if scheme in ("http", "https"):
        from vllm_fleet.weights.http_source import HttpSource

        return HttpSource(uri, options)
    if scheme == "s3":
        from vllm_fleet.weights.s3_source import S3Source

        return S3Source(uri, options)
    if scheme == "gs":
        from vllm_fleet.weights.gcs_source import GcsSource

        return GcsSource(uri, options)
    if scheme == "hf":
        from vllm_fleet.weights.hf_source import HfSource

        return HfSource(uri, options)
    raise SpecError(f"source scheme {scheme}:// is not supported", fix="use file://, http(s)://, s3://, gs:// or hf://")


def select_files(
    files: Iterable[SourceFile], include: Iterable[str] = (), exclude: Iterable[str] = (), *, all_weights: bool = False
) -> list[SourceFile]:
    """Files matching any ``include`` glob (all when none) and no ``exclude`` glob.

    Unless ``all_weights``, ``*.bin``/``*.pt`` are dropped when ``*.safetensors`` exist: vLLM
    loads only the safetensors then, and the pickled copies double the transfer.
    """
    include, exclude = list(include), list(exclude)
    chosen = [
        f
        for f in files
        if (not include or any(fnmatch.fnmatch(f.path, g) for g in include))
        and not any(fnmatch.fnmatch(f.path, g) for g in exclude)
    ]
    if not all_weights and any(f.path.endswith(".safetensors") for f in chosen):
        chosen = [f for f in chosen if not any(fnmatch.fnmatch(f.path, g) for g in WEIGHT_FALLBACKS)]
    if not chosen:
        raise SourceNotFound("no file of the model matches the include/exclude globs", fix="check --include/--exclude")
    return chosen
