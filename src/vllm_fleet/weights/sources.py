"""URI -> Source: list a model's files (path, size, checksum) and read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from vllm_fleet.errors import SourceError, SourceNotFound, SpecError


@dataclass(frozen=True)
class SourceFile:
    """One file of a model at its source."""

    path: str  # relative, '/'-separated; untrusted until cache.safe_join accepts it
    size: int
    checksum: str | None = None  # "algo:hex" when the source offers one


class Source(Protocol):
    uri: str

    def list_files(self) -> list[SourceFile]: ...

    def open(self, path: str) -> BinaryIO: ...


class FileSource:
    """A model directory on a local or mounted filesystem."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(unquote(urlparse(uri).path))

    def list_files(self) -> list[SourceFile]:
        if not self.root.is_dir():
            raise SourceNotFound(f"model directory not found: {self.root}", fix="check model.source in the spec")
        files = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if rel.split("/", 1)[0] == ".vllm-fleet" or not p.is_file():
                continue
            if p.is_symlink() and not p.resolve().is_relative_to(self.root.resolve()):
                raise SourceError(f"refusing {rel!r}: it is a symlink that points outside {self.root}")
            files.append(SourceFile(rel, p.stat().st_size))
        if not files:
            raise SourceNotFound(f"model directory {self.root} is empty", fix="point model.source at a model directory")
        return files

    def open(self, path: str) -> BinaryIO:
        return open(self.root / path, "rb")


def open_source(uri: str) -> Source:
    """The Source for ``uri``; a plain path means file://."""
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    scheme = uri.split("://", 1)[0]
    if scheme == "file":
        return FileSource(uri)
    raise SpecError(f"source scheme {scheme}:// is not supported yet", fix="stage from a file:// directory")
