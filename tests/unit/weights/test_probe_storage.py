"""probe-storage measures the real volume under tmp_path with a small probe file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vllm_fleet.cli import app
from vllm_fleet.errors import SpecError
from vllm_fleet.weights import probe_storage as probe
from vllm_fleet.weights.probe_storage import Trial, probe_storage, read_ahead

MB = 1 << 20


def test_probe_measures_and_removes_its_probe_file(tmp_path: Path) -> None:
    report = probe_storage(tmp_path, probe_bytes=16 * MB)
    assert list(tmp_path.iterdir()) == []
    assert report.probe_bytes == 16 * MB and report.probe_file.endswith("(written, removed)")
    assert report.limit_gbps > 0 and report.mmap_gbps > 0 and report.buffered_gbps > 0 and report.open_ms >= 0
    if report.direct_supported:
        assert {(t.chunk_bytes, t.queue_depth) for t in report.direct} == {
            (c, q) for c in probe.CHUNKS for q in probe.QUEUE_DEPTHS
        }
        assert report.limit_gbps == max([t.gbps for t in report.direct] + [report.buffered_gbps])
    assert [t.queue_depth for t in report.buffered] == list(probe.PREFETCH_CONCURRENCY)
    assert report.recommended_concurrency in probe.PREFETCH_CONCURRENCY and report.recommended_chunk_bytes == 16 * MB
    assert report.read_bandwidth_bps == report.limit_gbps * 1e9


def test_probe_reads_an_existing_file_without_touching_it(tmp_path: Path) -> None:
    data = tmp_path / "shard.safetensors"
    data.write_bytes(os.urandom(16 * MB))
    before = data.stat().st_mtime_ns
    report = probe_storage(data)
    assert report.probe_file == str(data) and data.stat().st_mtime_ns == before


def test_read_ahead_comes_from_sys(tmp_path: Path) -> None:
    ra = read_ahead(tmp_path)
    assert ":" in ra.device
    if ra.sysfs is None:
        pytest.skip(f"no /sys/class/bdi entry for {ra.device} here")
    assert ra.kb == int(Path(ra.sysfs).read_text())


def test_recommendations_follow_the_trials() -> None:
    trials = [
        Trial(128 << 10, 1, 0.2),
        Trial(1 << 20, 1, 1.0),
        Trial(4 << 20, 1, 1.0),
        Trial(4 << 20, 4, 1.1),
        Trial(16 << 20, 16, 1.2),
    ]
    assert probe._recommend_read_ahead(trials, 1.2, 128) == 1024  # 1.0 >= 0.8 x 1.2
    assert probe._recommend_read_ahead(trials, 1.2, 4096) == 4096  # never lower what is set
    assert probe._recommend_read_ahead(trials[:1], 1.2, 128) == 1024
    buffered = [Trial(16 << 20, 8, 0.8), Trial(16 << 20, 32, 1.15), Trial(16 << 20, 64, 1.2)]
    assert probe._recommend_prefetch(buffered) == {"recommended_concurrency": 32, "recommended_chunk_bytes": 16 << 20}
    buffered[0] = Trial(16 << 20, 8, 1.1)  # 1.1 >= 0.9 x 1.2: the fewest threads that suffice
    assert probe._recommend_prefetch(buffered)["recommended_concurrency"] == 8


def test_bad_paths_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        probe_storage(tmp_path / "missing")
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 4096)
    with pytest.raises(SpecError, match="too small"):
        probe_storage(small)


def test_cli_probe_storage_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["probe-storage", str(tmp_path), "--size-mb", "16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["limit_gbps"] > 0 and data["read_bandwidth_bps"] > 0 and "read_ahead" in data
