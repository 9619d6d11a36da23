"""Cache layout: a model directory, its manifest, and the completion marker.

    <model_dir>/
        config.json, *.safetensors, tokenizer files ...   published files (renamed into place when verified)
        .vllm-fleet/manifest.json                         what was staged from where, with sizes and checksums
        .vllm-fleet/COMPLETE                              written LAST; without it the directory is never served

The manifest and the marker live inside the model directory so that a pod that
mounts only that directory (NFS, a pre-baked disk) can check it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from vllm_fleet.errors import CacheError, SourceError

META_DIR = ".vllm-fleet"
MANIFEST = "manifest.json"
MARKER = "COMPLETE"


@dataclass(frozen=True)
class ManifestFile:
    """One published file: where it is, how big, and the checksum it was verified against."""

    path: str
    size: int
    checksum: str | None = None  # "algo:hex", e.g. "sha256:ab12..."
    verified: str = "size"  # what the check compared: size, sha256, md5, crc32c ...
    etag: str | None = None  # the source's version tag when it has one: a changed tag means refetch


@dataclass(frozen=True)
class Manifest:
    """What is in a complete model directory."""

    source: str
    revision: str | None
    files: list[ManifestFile] = field(default_factory=list)
    staged_at: float = field(default_factory=time.time)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def meta_dir(model_dir: Path) -> Path:
    return model_dir / META_DIR


def is_complete(model_dir: Path) -> bool:
    """True when the completion marker exists: the only test of "safe to serve"."""
    return (meta_dir(model_dir) / MARKER).is_file()


def read_manifest(model_dir: Path) -> Manifest | None:
    """The manifest of a complete model directory, or None when there is none."""
    try:
        raw = json.loads((meta_dir(model_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = [ManifestFile(**f) for f in raw.pop("files", [])]
    return Manifest(files=files, **raw)


def publish(model_dir: Path, manifest: Manifest) -> None:
    """Write the manifest, then the marker, each atomically and durably."""
    meta = meta_dir(model_dir)
    meta.mkdir(parents=True, exist_ok=True)
    write_atomic(meta / MANIFEST, json.dumps(asdict(manifest), indent=2, sort_keys=True).encode())
    write_atomic(meta / MARKER, f"{manifest.source}\n".encode())
    fsync_dir(meta)


def unpublish(model_dir: Path) -> None:
    """Remove the marker first, so nothing serves a directory that is about to change."""
    meta = meta_dir(model_dir)
    (meta / MARKER).unlink(missing_ok=True)
    if meta.exists():
        fsync_dir(meta)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a process-unique temporary name, fsync, then rename into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"cannot write {path}: {exc.strerror}", fix="check free space and permissions") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: str) -> PurePosixPath:
    """An untrusted relative file name, refused when it could escape a model directory."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or "\\" in name or any(part in ("..", "") for part in pure.parts):
        raise SourceError(f"refusing unsafe file name {name!r}: it would escape the model directory")
    if pure.parts[0] == META_DIR:
        raise SourceError(f"refusing file name {name!r}: {META_DIR}/ is reserved for the cache's own files")
    return pure


def safe_join(root: Path, name: str) -> Path:
    """``root / name`` for an untrusted relative name, refusing anything that escapes ``root``."""
    pure = check_name(name)
    target = root.joinpath(*pure.parts)
    # A symlink already inside the cache could redirect a write outside it.
    for parent in [target, *target.parents]:
        if parent == root:
            break
        if parent.is_symlink():
            raise SourceError(f"refusing to write {name!r}: {parent} is a symlink")
    return target
