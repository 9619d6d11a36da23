"""kill -9 at random moments, and many stagers on one cache: separate processes against a real origin."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import Origin
from vllm_fleet.weights import cache

pytestmark = pytest.mark.integration
KiB = 1 << 10
STAGER = """
import json, sys
from vllm_fleet.weights.stage import StageOptions, stage
options = StageOptions(chunk_size=128 << 10, concurrency=4, backoff=0.01, stall_timeout=5, lease_ttl=5)
print(json.dumps(stage(sys.argv[1], sys.argv[2], options=options).to_dict()))
"""
FILES = {
    "config.json": b'{"architectures": ["X"]}',
    "model-1.safetensors": hashlib.sha256(b"1").digest() * (40 * KiB),  # 1.25 MiB, 10 ranges
    "model-2.safetensors": hashlib.sha256(b"2").digest() * (24 * KiB),
    "tokenizer.json": b"{}" * 3000,
}
TOTAL = sum(map(len, FILES.values()))


@pytest.fixture
def origin():
    with Origin(rate=1 << 20) as o:  # 1 MiB/s per connection: a stage takes ~0.5 s of transfer, a resumed one less
        index = []
        for name, data in FILES.items():
            o.files[f"/m/{name}"] = data
            index.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
        o.files["/m/index.txt"] = "\n".join(index).encode()
        yield o


def start(uri: str, dest: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STAGER, uri, str(dest)], stdout=subprocess.PIPE, text=True)


def published_files_are_intact(dest: Path) -> None:
    """Whatever is under a published name is the source's bytes; a marker means every file is."""
    for name, data in FILES.items():
        path = dest / name
        if path.exists():
            assert path.read_bytes() == data, f"{name} published with wrong bytes"
        else:
            assert not cache.is_complete(dest), f"marker written while {name} is missing"


def test_kill_9_at_random_points_never_publishes_a_corrupt_model(origin: Origin, tmp_path: Path) -> None:
    rng = random.Random(3)
    dest = tmp_path / "m"
    kills = completes = mid_transfer = 0
    while kills < 20:
        process = start(origin.url + "/m/", dest)
        if kills % 4 == 3 and kills // 4 == completes:  # every 4th round, let it finish the model
            assert process.wait(60) == 0
            completes += 1
            published_files_are_intact(dest)
            assert cache.is_complete(dest)
            shutil.rmtree(dest)
            continue
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.05, 0.8))  # while starting, listing, taking the lease
        else:  # while ranges are in flight, or verifying and publishing: whatever the machine's load
            deadline = time.monotonic() + 30
            while process.poll() is None and not list(dest.rglob("*.partial")) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process.stdout.close()
        kills += 1
        mid_transfer += bool(list(dest.rglob("*.partial")))
        published_files_are_intact(dest)
    assert mid_transfer >= 5, f"only {mid_transfer} of {kills} kills landed while ranges were in flight"
    final = start(origin.url + "/m/", dest)
    assert final.wait(60) == 0
    final.stdout.close()
    published_files_are_intact(dest)
    assert cache.is_complete(dest) and not list(dest.rglob("*.partial*"))
    # Resumed runs keep finished ranges: far less than one full fetch per process.
    processes = kills + completes + 1
    assert origin.bytes_sent() < TOTAL * (completes + 1) + processes * 4 * 128 * KiB + 64 * KiB * processes


def test_eight_stagers_on_one_cache_fetch_once(origin: Origin, tmp_path: Path) -> None:
    dest = tmp_path / "shared" / "m"
    processes = [start(origin.url + "/m/", dest) for _ in range(8)]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=90)
        assert process.returncode == 0
        results.append(json.loads(out))
    published_files_are_intact(dest)
    assert cache.is_complete(dest)
    assert origin.bytes_sent() - origin.bytes_sent("/m/index.txt") == TOTAL  # every byte exactly once
    assert sorted(r["skipped"] for r in results) == [False] + [True] * 7
