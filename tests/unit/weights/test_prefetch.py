"""prefetch reads real files into the real page cache; mincore says whether it did."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vllm_fleet.cli import app
from vllm_fleet.errors import SpecError
from vllm_fleet.weights import pagecache
from vllm_fleet.weights.prefetch import prefetch, start_prefetch, weight_files

MB = 1 << 20


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Three shards (5, 3 and 1 MiB + a tail that is not page-aligned), config and tokenizer files, cold."""
    model = tmp_path / "model"
    (model / ".vllm-fleet").mkdir(parents=True)
    for i, size in ((1, 5 * MB), (2, 3 * MB), (10, MB + 123)):
        (model / f"model-{i:d}-of-10.safetensors").write_bytes(os.urandom(size))
    (model / "config.json").write_text("{}")
    (model / ".vllm-fleet" / "manifest.safetensors").write_bytes(b"x")
    for f in weight_files(model):
        if pagecache.drop(f):
            pytest.skip(f"the page cache of {tmp_path} cannot be dropped (tmpfs?)")
    return model


def resident(model: Path) -> int:
    return sum(pagecache.resident_bytes(f) for f in weight_files(model))


def test_weight_files_in_loader_order_without_metadata(model: Path) -> None:
    assert [f.name for f in weight_files(model)] == [
        "model-1-of-10.safetensors",
        "model-2-of-10.safetensors",
        "model-10-of-10.safetensors",
    ]


def test_prefetch_fills_the_page_cache_then_reads_nothing_twice(model: Path) -> None:
    total = sum(f.stat().st_size for f in weight_files(model))
    assert resident(model) == 0
    first = prefetch(model, concurrency=3, chunk_bytes=MB)
    assert first.complete and first.stopped is None
    assert (first.files, first.bytes_total, first.bytes_read, first.bytes_cached_before) == (3, total, total, 0)
    assert resident(model) == total
    second = prefetch(model)
    assert second.complete and second.bytes_read == 0 and second.bytes_cached_before == total


def test_prefetch_stops_and_says_so_when_the_model_cannot_fit(model: Path) -> None:
    reserve = pagecache.headroom().bytes - 6 * MB  # room for the first shard's 5 chunks only
    result = prefetch(model, chunk_bytes=MB, reserve_bytes=reserve)
    assert not result.complete
    assert "needs" in result.stopped and "reserve" in result.stopped
    assert 0 < result.bytes_read <= 6 * MB
    assert resident(model) < result.bytes_total


def test_background_prefetch_can_be_waited_for_and_stopped(model: Path) -> None:
    handle = start_prefetch(model, concurrency=2)
    result = handle.wait(timeout=30)
    assert handle.done and result is not None and result.complete
    for f in weight_files(model):
        pagecache.drop(f)
    handle = start_prefetch(model, concurrency=1, chunk_bytes=4096)
    handle.stop()
    stopped = handle.wait()
    assert stopped is not None and (stopped.complete or stopped.stopped == "stopped on request")


def test_bad_input_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a directory"):
        prefetch(tmp_path / "missing")
    with pytest.raises(SpecError, match="no weight files"):
        prefetch(tmp_path)
    (tmp_path / "a.safetensors").write_bytes(b"x")
    with pytest.raises(SpecError, match="page size"):
        prefetch(tmp_path, chunk_bytes=1000)


def test_cli_prefetch_json_and_exit_codes(model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prefetch", str(model), "--json", "--chunk-mb", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["complete"] and data["bytes_read"] == data["bytes_total"] and data["gbps"] > 0
    missing = runner.invoke(app, ["prefetch", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a directory" in missing.output


def test_a_file_system_that_cannot_splice_is_read_instead(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_splice(*args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", no_splice)
    result = prefetch(model, concurrency=2, chunk_bytes=MB)
    assert result.complete and resident(model) == result.bytes_total


def test_other_read_errors_are_not_swallowed(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "sendfile", broken)
    with pytest.raises(OSError, match="Input/output error"):
        prefetch(model, concurrency=2, chunk_bytes=MB)


def test_the_cli_defaults_are_prefetch_defaults() -> None:
    import typer.main

    from vllm_fleet.weights import prefetch as module

    command = typer.main.get_command(app).commands["prefetch"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in command.params}
    assert defaults["concurrency"] == module.DEFAULT_CONCURRENCY
    assert defaults["chunk_mb"] << 20 == module.DEFAULT_CHUNK_BYTES
