"""file:// (or a plain path): a model directory on a local or mounted filesystem."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from vllm_fleet.errors import SourceError, SourceNotFound
from vllm_fleet.weights.sources.base import SourceFile, file_path

READ_BLOCK = 1 << 20


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
