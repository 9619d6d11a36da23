"""Stage a model from its source into the cache: plan, lease, ranged transfer, verify, publish.

1. List the source and choose files (include/exclude globs; *.bin/*.pt dropped
   when safetensors exist). Every name passes cache.safe_join before anything
   is written.
2. Up to date already (marker + manifest naming the same files, sizes,
   checksums and versions)? Done, nothing fetched.
3. Take the cache's lease (lock.py); while waiting, another stager may finish:
   then we are done too. N stagers on one share fetch once.
4. Plan: keep files the previous manifest or this stage's journal vouch for
   (or that re-verify against the source checksum), fetch the rest, drop
   files of an older version. Check free space. Remove the marker.
5. Transfer (transfer.py), recording each published file in the journal so a
   re-run after kill -9 keeps it; then the manifest and, last, the marker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_fleet.errors import CacheError, FleetError
from vllm_fleet.weights import cache
from vllm_fleet.weights.checksum import algorithm, hexdigest, new_hasher
from vllm_fleet.weights.lock import Lease
from vllm_fleet.weights.sources import Source, SourceFile, SourceOptions, open_source, select_files
from vllm_fleet.weights.transfer import HASH_BLOCK, Transfer, TransferOptions, partial_path

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
LEASE = "stage.lease"
JOURNAL = "staged.json"  # files published by an unfinished stage


@dataclass(frozen=True)
class StageOptions:
    """Everything about a stage that is not the source or the destination."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_weights: bool = False  # keep *.bin/*.pt even when *.safetensors exist
    chunk_size: int = TransferOptions.chunk_size
    concurrency: int = TransferOptions.concurrency
    retries: int = TransferOptions.retries
    backoff: float = TransferOptions.backoff
    stall_timeout: float = 30.0
    endpoint_url: str | None = None
    lease_ttl: float = 30.0


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
    retries: int = 0
    revision: str | None = None
    kept: list[str] = field(default_factory=list)  # files already in the cache and not fetched again

    def to_dict(self) -> dict:
        return {
            "model_dir": str(self.model_dir),
            "files": self.files,
            "bytes": self.bytes_total,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 3),
            "gb_per_s": round(self.bytes_fetched / self.seconds / 1e9, 3) if self.seconds else None,
            "verified": self.verified,
            "retries": self.retries,
            "revision": self.revision,
            "kept": len(self.kept),
            "skipped": self.skipped,
        }


def stage(
    source_uri: str,
    dest: Path,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
    options: StageOptions | None = None,
) -> StageResult:
    """Make ``dest`` a complete, verified copy of ``source_uri`` (the one sync entry point)."""
    return asyncio.run(stage_async(source_uri, Path(dest), revision=revision, progress=progress, options=options))


async def stage_async(
    source_uri: str,
    dest: Path,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
    options: StageOptions | None = None,
) -> StageResult:
    options = options or StageOptions()
    started = time.monotonic()
    source = open_source(
        source_uri,
        SourceOptions(options.endpoint_url, revision, options.stall_timeout, options.concurrency),
    )
    try:
        listed = await source.list_files()
        files = select_files(listed, options.include, options.exclude, all_weights=options.all_weights)
        targets = {f.path: cache.safe_join(dest, f.path) for f in files}  # refuse bad names before any write
        total = sum(f.size for f in files)
        rev = source.revision or revision

        def skipped() -> StageResult:
            verified = _count(m.verified for m in cache.read_manifest(dest).files)  # type: ignore[union-attr]
            return StageResult(dest, len(files), total, 0, time.monotonic() - started, verified, True, 0, rev)

        if up_to_date(dest, source.uri, files):
            return skipped()
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        lease = Lease(cache.meta_dir(dest) / LEASE, ttl=options.lease_ttl)
        if not await lease.acquire(lambda: up_to_date(dest, source.uri, files)):
            return skipped()
        try:
            if up_to_date(dest, source.uri, files):  # finished by the stager we waited for
                return skipped()
            return await _stage_locked(source, dest, files, targets, rev, options, progress, started, lease)
        finally:
            lease.release()
    finally:
        await source.aclose()


async def _stage_locked(
    source: Source,
    dest: Path,
    files: list[SourceFile],
    targets: dict[str, Path],
    rev: str | None,
    options: StageOptions,
    progress: Progress | None,
    started: float,
    lease: Lease,
) -> StageResult:
    total = sum(f.size for f in files)
    kept = await asyncio.to_thread(plan_kept, dest, source.uri, files, targets)
    fetch = [f for f in files if f.path not in kept]
    await asyncio.to_thread(_prepare_dest, dest, files, targets, fetch)
    done = sum(entry.size for entry in kept.values())

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(min(done, total), total)

    on_bytes(0)
    transfer = Transfer(
        source, TransferOptions(options.chunk_size, options.concurrency, options.retries, options.backoff), on_bytes
    )
    journal = dict(kept)
    journal_lock = asyncio.Lock()

    async def one(f: SourceFile) -> None:
        entry = await transfer.fetch(f, targets[f.path])
        async with journal_lock:
            journal[f.path] = entry
            await asyncio.to_thread(_save_journal, dest, source.uri, journal)

    try:
        async with asyncio.TaskGroup() as group:
            for f in fetch:
                group.create_task(one(f))
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None
    if lease.lost or not lease.held():
        raise CacheError(f"lost the cache lease on {dest} to another stager", fix="re-run the stage")
    entries = [journal[f.path] for f in files]
    await asyncio.to_thread(cache.publish, dest, cache.Manifest(source=source.uri, revision=rev, files=entries))
    (cache.meta_dir(dest) / JOURNAL).unlink(missing_ok=True)
    verified = _count(e.verified for e in entries)
    seconds = time.monotonic() - started
    return StageResult(
        dest, len(files), total, transfer.fetched, seconds, verified, False, transfer.retries, rev, sorted(kept)
    )


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to show from a task group: a FleetError first, else the first one."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            flat.append(exc)
    return next((e for e in flat if isinstance(e, FleetError)), flat[0])


def same(entry: cache.ManifestFile, f: SourceFile) -> bool:
    return (entry.path, entry.size, entry.checksum, entry.etag) == (f.path, f.size, f.checksum, f.etag)


def up_to_date(dest: Path, uri: str, files: list[SourceFile]) -> bool:
    """Complete, and the manifest names exactly these files at these versions."""
    if not cache.is_complete(dest):
        return False
    manifest = cache.read_manifest(dest)
    if manifest is None or manifest.source != uri or len(manifest.files) != len(files):
        return False
    entries = {m.path: m for m in manifest.files}
    return all(f.path in entries and same(entries[f.path], f) for f in files)


def plan_kept(dest: Path, uri: str, files: list[SourceFile], targets: dict[str, Path]) -> dict[str, cache.ManifestFile]:
    """Files on disk that need no fetch: vouched for by the manifest or journal, or re-verified now."""
    vouched: dict[str, cache.ManifestFile] = {}
    for record in (cache.read_manifest(dest), _read_journal(dest)):
        if record is not None and record.source == uri:
            vouched.update({m.path: m for m in record.files})
    kept = {}
    for f in files:
        target = targets[f.path]
        if not target.is_file() or target.is_symlink() or target.stat().st_size != f.size:
            continue
        entry = vouched.get(f.path)
        if entry is not None and same(entry, f):
            kept[f.path] = entry
        elif f.checksum and file_matches(target, f):
            kept[f.path] = cache.ManifestFile(f.path, f.size, f.checksum, algorithm(f.checksum), f.etag)
    return kept


def file_matches(path: Path, f: SourceFile) -> bool:
    hasher = new_hasher(f.checksum, f.size)  # type: ignore[arg-type]
    with open(path, "rb") as fh:
        while data := fh.read(HASH_BLOCK):
            hasher.update(data)
    return hexdigest(hasher) == f.checksum.split(":", 1)[1].lower()  # type: ignore[union-attr]


def _prepare_dest(dest: Path, files: list[SourceFile], targets: dict[str, Path], fetch: list[SourceFile]) -> None:
    """Unpublish, drop files of an older version, and check the space the fetch needs."""
    cache.unpublish(dest)
    wanted = {f.path for f in files}
    previous = cache.read_manifest(dest)
    for old in previous.files if previous else []:
        if old.path not in wanted:
            cache.safe_join(dest, old.path).unlink(missing_ok=True)
    needed = 0
    for f in fetch:
        try:
            needed += f.size - partial_path(targets[f.path]).stat().st_blocks * 512
        except OSError:
            needed += f.size
    free = shutil.disk_usage(dest).free
    if free < needed:
        raise CacheError(
            f"not enough space in {dest}: the fetch needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            fix="free space or point cache.dir at a larger volume",
        )


def _read_journal(dest: Path) -> cache.Manifest | None:
    try:
        raw = json.loads((cache.meta_dir(dest) / JOURNAL).read_text())
        return cache.Manifest(
            source=raw["source"], revision=None, files=[cache.ManifestFile(**f) for f in raw["files"]]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_journal(dest: Path, uri: str, journal: dict[str, cache.ManifestFile]) -> None:
    files = [asdict(entry) for entry in journal.values()]
    path = cache.meta_dir(dest) / JOURNAL
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"source": uri, "files": files}))
    os.replace(tmp, path)


def _count(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts
