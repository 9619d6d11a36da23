"""Staging pieces that need no server: file selection, index parsing, checksums, the lease, file:// staging."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vllm_fleet.errors import SourceError, SourceNotFound, SpecError
from vllm_fleet.weights import cache
from vllm_fleet.weights.checksum import hexdigest, new_hasher
from vllm_fleet.weights.lock import Lease
from vllm_fleet.weights.sources import SourceFile, open_source, select_files
from vllm_fleet.weights.sources.http import parse_index
from vllm_fleet.weights.stage import StageOptions, stage


def files(*names: str) -> list[SourceFile]:
    return [SourceFile(n, 1) for n in names]


def paths(chosen: list[SourceFile]) -> list[str]:
    return [f.path for f in chosen]


def test_pickled_weights_are_skipped_only_when_safetensors_exist() -> None:
    both = files("config.json", "model.safetensors", "pytorch_model.bin", "x.pt")
    assert paths(select_files(both)) == ["config.json", "model.safetensors"]
    assert paths(select_files(both, all_weights=True)) == paths(both)
    only_bin = files("config.json", "pytorch_model.bin")
    assert paths(select_files(only_bin)) == paths(only_bin)


def test_include_and_exclude_globs() -> None:
    listed = files("config.json", "model.safetensors", "original/consolidated.pth", "tokenizer.json")
    assert paths(select_files(listed, exclude=["original/*"])) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert paths(select_files(listed, include=["*.json"])) == ["config.json", "tokenizer.json"]
    with pytest.raises(SourceNotFound, match="no file"):
        select_files(listed, include=["*.gguf"])


def test_index_lines_plain_and_sha256sum() -> None:
    digest = "ab" * 32
    text = f"# a model\nconfig.json\n{digest}  sub/model.safetensors\n\n{digest.upper()} *tok.json\n"
    assert parse_index(text) == [
        ("config.json", None),
        ("sub/model.safetensors", f"sha256:{digest}"),
        ("tok.json", f"sha256:{digest}"),
    ]
    for bad in ("../x", "/etc/passwd", "a/../../b", ".vllm-fleet/COMPLETE", "a\\..\\b"):
        with pytest.raises(SourceError, match="refusing"):
            parse_index(f"config.json\n{bad}\n")


@pytest.mark.parametrize(
    ("checksum", "data"),
    [
        ("gitsha1:ce013625030ba8dba906f756967f9e9ca394464a", b"hello\n"),  # `git hash-object` of it
        ("crc32c:e3069283", b"123456789"),  # the CRC-32C check value
        ("md5:5d41402abc4b2a76b9719d911017c592", b"hello"),
        ("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", b"hello"),
    ],
)
def test_checksums(checksum: str, data: bytes) -> None:
    hasher = new_hasher(checksum, len(data))
    hasher.update(data)
    assert hexdigest(hasher) == checksum.split(":", 1)[1]


def test_unknown_scheme_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"ftp://"):
        open_source("ftp://host/model")


def test_lease_is_exclusive_and_waiters_see_done(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = Lease(tmp_path / "lease", ttl=5, poll=0.02), Lease(tmp_path / "lease", ttl=5, poll=0.02)
        assert await first.acquire(lambda: False)
        finished = False

        async def finish_later() -> None:
            nonlocal finished
            await asyncio.sleep(0.2)
            finished = True
            first.release()

        waiter = asyncio.create_task(second.acquire(lambda: finished))
        await finish_later()
        assert await waiter is False  # saw the work done instead of taking the lease
        assert not (tmp_path / "lease").exists()

    asyncio.run(scenario())


def test_work_finished_between_the_check_and_the_take_hands_the_lease_back(tmp_path: Path) -> None:
    checks = iter([False, True])  # not done when first asked; done by the time the lease file is made
    lease = Lease(tmp_path / "lease", ttl=5, poll=0.02)
    assert asyncio.run(lease.acquire(lambda: next(checks))) is False
    assert not (tmp_path / "lease").exists()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys; from pathlib import Path; from vllm_fleet.weights.lock import Lease; "
        "asyncio.run(Lease(Path(sys.argv[1]), ttl=600).acquire(lambda: False))"
    )
    holder = subprocess.run([sys.executable, "-c", script, str(tmp_path / "lease")], check=True)
    assert holder.returncode == 0 and (tmp_path / "lease").exists()  # exited without releasing
    started = time.monotonic()
    lease = Lease(tmp_path / "lease", ttl=600, poll=0.02)
    assert asyncio.run(lease.acquire(lambda: False))
    assert time.monotonic() - started < 2 and lease.held()
    lease.release()


def test_silent_lease_of_another_host_expires_but_a_beating_one_does_not(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    path.write_text("token\nother-host/1\n1\n0\n")  # a holder elsewhere that stopped beating
    lease = Lease(path, ttl=0.3, poll=0.02)
    started = time.monotonic()
    assert asyncio.run(lease.acquire(lambda: False))
    assert 0.3 <= time.monotonic() - started < 3

    async def contend() -> bool:
        rival = Lease(path, ttl=0.3, poll=0.02)
        try:
            return await asyncio.wait_for(rival.acquire(lambda: False), timeout=1.2)
        except TimeoutError:
            return False

    assert asyncio.run(contend()) is False  # the heartbeat kept it ours for 4 TTLs
    assert lease.held() and not lease.lost
    lease.release()


def write_model(root: Path, weights: bytes) -> None:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(weights)
    (root / "sub" / "tokenizer.json").write_text('{"v": 1}')


def test_file_source_stage_is_ranged_skipped_and_refetches_only_changes(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_model(src, os.urandom(3 << 20))
    options = StageOptions(chunk_size=1 << 20)
    seen: list[tuple[int, int]] = []
    first = stage(str(src), dest, options=options, progress=lambda d, t: seen.append((d, t)))
    assert first.bytes_fetched == first.bytes_total and seen[-1][0] == seen[-1][1] == first.bytes_total
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert stage(src.as_uri(), dest, options=options).skipped
    time.sleep(0.01)
    (src / "sub" / "tokenizer.json").write_text('{"v": 2}')
    again = stage(src.as_uri(), dest, options=options)
    assert again.bytes_fetched == len('{"v": 2}') and (dest / "sub" / "tokenizer.json").read_text() == '{"v": 2}'
    assert sorted(again.kept) == ["config.json", "model.safetensors"]
    (src / "config.json").unlink()
    stage(src.as_uri(), dest, options=options)
    assert not (dest / "config.json").exists()  # a file gone from the source is gone from the cache
    assert cache.is_complete(dest)
