"""Staging from a real HTTP origin on loopback, with the faults the network and disks really produce."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import Fault, Nginx, Origin
from vllm_fleet.errors import CacheError, SourceError, SourceForbidden, SourceNotFound
from vllm_fleet.weights import cache
from vllm_fleet.weights.stage import StageOptions, stage

pytestmark = pytest.mark.integration
MiB = 1 << 20
FAST = StageOptions(chunk_size=256 << 10, concurrency=4, retries=3, backoff=0.01, stall_timeout=0.5)


def model_files(seed: int = 0) -> dict[str, bytes]:
    weights = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)  # 1 MiB, 4 ranges of 256 KiB
    return {"config.json": b'{"architectures": ["X"]}', "model.safetensors": weights, "sub/tokenizer.json": b"{}"}


def serve(origin: Origin, files: dict[str, bytes], *, checksums: bool = True, prefix: str = "/m/") -> str:
    lines = []
    for name, data in files.items():
        origin.files[prefix + name] = data
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}" if checksums else name)
    origin.files[prefix + "index.txt"] = ("\n".join(lines) + "\n").encode()
    return origin.url + prefix


def assert_same(dest: Path, files: dict[str, bytes]) -> None:
    assert cache.is_complete(dest)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    assert not list(dest.rglob("*.partial*"))


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


def test_directory_via_index_is_fetched_in_ranges_and_verified(origin: Origin, tmp_path: Path) -> None:
    files = model_files()
    result = stage(serve(origin, files), tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.verified == {"sha256": 3}
    assert result.bytes_fetched == sum(map(len, files.values()))
    ranged = [n for m, p, n in origin.requests if m == "GET" and p == "/m/model.safetensors"]
    assert len(ranged) == 4 and all(n == 256 << 10 for n in ranged)
    again = stage(serve(origin, files), tmp_path / "m", options=FAST)
    assert again.skipped and again.bytes_fetched == 0


def test_single_file_without_checksum_is_checked_by_size(origin: Origin, tmp_path: Path) -> None:
    origin.files["/x/model.safetensors"] = b"a" * 1000
    result = stage(origin.url + "/x/model.safetensors", tmp_path / "m", options=FAST)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == b"a" * 1000
    assert result.verified == {"size": 1}


def test_bin_weights_skipped_when_safetensors_exist(origin: Origin, tmp_path: Path) -> None:
    files = {**model_files(), "pytorch_model.bin": b"pickle"}
    stage(serve(origin, files), tmp_path / "m", options=FAST)
    assert not (tmp_path / "m" / "pytorch_model.bin").exists()
    stage(serve(origin, files), tmp_path / "all", options=StageOptions(all_weights=True, exclude=("sub/*",)))
    assert (tmp_path / "all" / "pytorch_model.bin").exists() and not (tmp_path / "all" / "sub").exists()


@pytest.mark.parametrize(
    "fault",
    [Fault(drop_after=1000), Fault(stall=3.0), Fault(status=500), Fault(status=503), Fault(short_by=10)],
    ids=["dropped", "stalled", "500", "503", "truncated-once"],
)
def test_transient_faults_are_retried(origin: Origin, tmp_path: Path, fault: Fault) -> None:
    files = model_files()
    uri = serve(origin, files)
    origin.faults["/m/model.safetensors"].extend([fault, fault])
    result = stage(uri, tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.retries >= 2


def test_dropped_range_resumes_from_the_last_byte(origin: Origin, tmp_path: Path) -> None:
    files = model_files()
    uri = serve(origin, files)
    origin.faults["/m/model.safetensors"].append(Fault(drop_after=100_000))
    stage(uri, tmp_path / "m", options=StageOptions(chunk_size=4 * MiB, backoff=0.01))
    assert origin.bytes_sent("/m/model.safetensors") == MiB  # 100 kB, then the other bytes: none twice


def test_wrong_bytes_once_are_refetched(origin: Origin, tmp_path: Path) -> None:
    files = model_files()
    uri = serve(origin, files)
    origin.faults["/m/model.safetensors"].append(Fault(corrupt=True))
    result = stage(uri, tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.verified == {"sha256": 3}


def test_wrong_bytes_twice_fail_naming_the_file(origin: Origin, tmp_path: Path) -> None:
    uri = serve(origin, model_files())
    origin.always["/m/model.safetensors"] = Fault(corrupt=True)
    with pytest.raises(SourceError, match=r"model\.safetensors: sha256 mismatch twice"):
        stage(uri, tmp_path / "m", options=FAST)
    assert not cache.is_complete(tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_an_origin_that_cuts_every_response_short_still_finishes(origin: Origin, tmp_path: Path) -> None:
    """Each attempt moves a range forward (40 kB of 256 KiB: 7 attempts a range, more than retries=3)."""
    files = model_files()
    uri = serve(origin, files)
    origin.always["/m/model.safetensors"] = Fault(drop_after=40_000)
    result = stage(uri, tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.retries >= 4 * (256 * 1024 // 40_000)
    assert cache.is_complete(tmp_path / "m")


def test_truncated_object_fails_after_retries(origin: Origin, tmp_path: Path) -> None:
    uri = serve(origin, model_files(), checksums=False)
    origin.always["/m/model.safetensors"] = Fault(short_by=10)
    with pytest.raises(
        SourceError,
        match=r"model\.safetensors: bytes .* failed 4 times, last: .*(closed before the range was complete|short)",
    ):
        stage(uri, tmp_path / "m", options=FAST)
    assert not cache.is_complete(tmp_path / "m")


def test_resume_after_failure_does_not_refetch_finished_ranges(origin: Origin, tmp_path: Path) -> None:
    files = model_files()
    uri = serve(origin, files)
    origin.always["/m/model.safetensors"] = Fault(status=500)
    origin.faults["/m/model.safetensors"].extend([None, None])  # two ranges succeed, then only 500s
    with pytest.raises(SourceError, match="failed 4 times"):
        stage(uri, tmp_path / "m", options=StageOptions(chunk_size=256 << 10, concurrency=1, retries=3, backoff=0.01))
    assert origin.bytes_sent("/m/model.safetensors") == 512 << 10
    del origin.always["/m/model.safetensors"]
    result = stage(uri, tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert origin.bytes_sent("/m/model.safetensors") == MiB  # the first two ranges were not fetched again
    assert result.bytes_fetched < MiB


def test_changed_source_is_refetched(origin: Origin, tmp_path: Path) -> None:
    uri = serve(origin, model_files(0), checksums=False)
    stage(uri, tmp_path / "m", options=FAST)
    files = model_files(1)
    serve(origin, files, checksums=False)
    result = stage(uri, tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.bytes_fetched == MiB  # only the weights changed (ETag)


def test_not_found_and_forbidden_are_clear(origin: Origin, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="not found"):
        stage(origin.url + "/nothing/", tmp_path / "m", options=FAST)
    uri = serve(origin, model_files())
    origin.always["/m/model.safetensors"] = Fault(status=403)
    with pytest.raises(SourceForbidden, match=r"model\.safetensors: access refused .*HTTP 403"):
        stage(uri, tmp_path / "m", options=FAST)


@pytest.mark.parametrize("name", ["../escape.json", "/etc/passwd", "a/../../b", ".vllm-fleet/COMPLETE"])
def test_index_names_that_escape_are_refused(origin: Origin, tmp_path: Path, name: str) -> None:
    origin.files["/m/index.txt"] = f"config.json\n{name}\n".encode()
    origin.files["/m/config.json"] = b"{}"
    origin.files["/" + name.lstrip("/")] = b"x"
    with pytest.raises(SourceError, match="refusing"):
        stage(origin.url + "/m/", tmp_path / "cache" / "m", options=FAST)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_symlink_in_cache_is_refused(origin: Origin, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "m" / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(SourceError, match="symlink"):
        stage(serve(origin, model_files()), tmp_path / "m", options=FAST)
    assert not list((tmp_path / "outside").iterdir())


@pytest.fixture
def small_fs(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        message = f"cannot mount a small tmpfs (needs root): {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_is_checked_before_starting(origin: Origin, small_fs: Path) -> None:
    uri = serve(origin, {"model.safetensors": b"x" * (4 * MiB)})
    with pytest.raises(CacheError, match="not enough space"):
        stage(uri, small_fs / "m", options=FAST)
    assert origin.bytes_sent("/m/model.safetensors") == 0


def test_disk_full_during_transfer_is_clear(origin: Origin, small_fs: Path) -> None:
    uri = serve(origin, model_files())  # 1 MiB: fits in 3 MiB
    filled = []

    def fill(done: int, total: int) -> None:
        if done and not filled:  # another writer takes the rest of the disk once we started
            filled.append(True)
            with open(small_fs / "filler", "wb") as fh, pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * (64 << 10))
                    fh.flush()

    with pytest.raises(CacheError, match="disk full"):
        stage(uri, small_fs / "m", options=FAST, progress=fill)
    assert not cache.is_complete(small_fs / "m")


@pytest.mark.skipif(not Nginx.available() and not os.environ.get("CI"), reason="nginx not installed (apt: nginx-light)")
def test_nginx_origin(tmp_path: Path) -> None:
    files = model_files()
    root = tmp_path / "www" / "m"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "index.txt").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    with Nginx(tmp_path / "www", tmp_path / "nginx") as nginx:
        result = stage(f"{nginx.url}/m/", tmp_path / "m", options=FAST)
    assert_same(tmp_path / "m", files)
    assert result.verified == {"sha256": 3}


def test_cli_stage_json_summary_and_exit_codes(origin: Origin, tmp_path: Path) -> None:
    import json
    import sys

    files = model_files()
    uri = serve(origin, files)
    command = [sys.executable, "-m", "vllm_fleet.cli", "stage", uri, str(tmp_path / "m"), "--chunk-mib", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (
        summary["files"] == 3 and summary["bytes_fetched"] == summary["bytes"] and summary["verified"] == {"sha256": 3}
    )
    assert {"seconds", "gb_per_s", "retries", "skipped"} <= summary.keys()
    assert_same(tmp_path / "m", files)
    missing = subprocess.run(
        [*command[:4], origin.url + "/absent/", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
