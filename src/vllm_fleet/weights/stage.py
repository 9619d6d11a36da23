"""Stage a model from its source into the cache: copy, verify, publish atomically.

Files are written to process-unique ``*.partial`` names, checked, fsynced and
renamed into place; the manifest and the completion marker come last
(cache.publish). A re-run skips files the manifest of a finished stage already
vouches for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vllm_fleet.errors import CacheError, SourceError
from vllm_fleet.weights import cache
from vllm_fleet.weights.sources import SourceFile, open_source

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class StageResult:
    """What a stage did."""

    model_dir: Path
    files: int
    bytes_total: int
    bytes_fetched: int
    seconds: float
    verified: dict[str, int]  # check name -> files verified with it
    skipped: bool = False  # the cache was already complete

    def to_dict(self) -> dict:
        return {
            "model_dir": str(self.model_dir),
            "files": self.files,
            "bytes": self.bytes_total,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 3),
            "gb_per_s": round(self.bytes_fetched / self.seconds / 1e9, 3) if self.seconds else None,
            "verified": self.verified,
            "skipped": self.skipped,
        }


def stage(source_uri: str, dest: Path, *, revision: str | None = None, progress: Progress | None = None) -> StageResult:
    """Make ``dest`` a complete, verified copy of ``source_uri``."""
    started = time.monotonic()
    dest = Path(dest)
    source = open_source(source_uri)
    files = source.list_files()
    total = sum(f.size for f in files)
    previous = cache.read_manifest(dest) if cache.is_complete(dest) else None
    if previous and previous.source == source.uri and _same_files(previous, files):
        return StageResult(dest, len(files), total, 0, time.monotonic() - started, {}, skipped=True)
    dest.mkdir(parents=True, exist_ok=True)
    _check_space(dest, total)
    cache.unpublish(dest)
    done = 0
    entries = []
    for f in files:
        target = cache.safe_join(dest, f.path)
        entries.append(_copy_verified(source, f, target))
        done += f.size
        if progress:
            progress(done, total)
    verified: dict[str, int] = {}
    for e in entries:
        verified[e.verified] = verified.get(e.verified, 0) + 1
    cache.publish(dest, cache.Manifest(source=source.uri, revision=revision, files=entries))
    return StageResult(dest, len(files), total, total, time.monotonic() - started, verified)


def _same_files(manifest: cache.Manifest, files: list[SourceFile]) -> bool:
    return {(m.path, m.size) for m in manifest.files} == {(f.path, f.size) for f in files}


def _check_space(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if free < needed:
        raise CacheError(
            f"not enough space in {dest}: the model needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            fix="free space or point cache.dir at a larger volume",
        )


def _copy_verified(source, f: SourceFile, target: Path) -> cache.ManifestFile:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with source.open(f.path) as src, open(partial, "wb") as out:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != f.size:
            raise SourceError(f"{f.path}: got {size} bytes, the source listed {f.size}", fix="re-run the stage")
        os.replace(partial, target)
    except OSError as exc:
        raise CacheError(f"cannot write {target}: {exc.strerror}", fix="check free space and permissions") from exc
    finally:
        partial.unlink(missing_ok=True)
    return cache.ManifestFile(f.path, f.size, f"sha256:{digest.hexdigest()}", verified="size")
