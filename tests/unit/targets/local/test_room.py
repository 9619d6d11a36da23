"""local.surge auto: the decision from MemAvailable against what one more replica needs (pure)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.targets.local.test_local_target import make_plan
from vllm_fleet import engine
from vllm_fleet.targets.local import room
from vllm_fleet.targets.local.room import GIB, PROCESS_ALLOWANCE_BYTES, choose_surge, mem_available

MEMINFO = """MemTotal:       24683584 kB
MemFree:         1183892 kB
MemAvailable:    4194304 kB
Buffers:          213460 kB
"""


def test_mem_available_reads_kib_from_meminfo() -> None:
    assert mem_available(MEMINFO) == 4 * GIB
    assert mem_available("MemTotal: 1 kB\n") is None


def test_auto_surges_when_memavailable_holds_one_more_replica_and_drains_first_when_not() -> None:
    kv, weights = 1 * GIB, GIB // 2
    need = kv + weights + PROCESS_ALLOWANCE_BYTES  # 3.5 GiB
    room_for_one = choose_surge("auto", available=need, kv_cache=kv, weights=weights)
    assert room_for_one.surge == 1
    assert room_for_one.why == (
        "auto: room for one more: MemAvailable 3.5 GiB, one replica 3.5 GiB "
        "(1.0 GiB KV cache + 0.5 GiB weights + 2.0 GiB processes)"
    )
    tight = choose_surge("auto", available=mem_available(MEMINFO), kv_cache=2 * GIB, weights=GIB)  # 4 < 5 GiB
    assert tight.surge == 0
    assert tight.why.startswith("auto: no room for one more, drain first: MemAvailable 4.0 GiB, one replica 5.0 GiB")


def test_an_explicit_surge_is_kept_and_a_gpu_or_unreadable_meminfo_decide_auto() -> None:
    assert choose_surge(0, available=100 * GIB, kv_cache=GIB, weights=GIB) == room.SurgeChoice(0, "local.surge: 0")
    assert choose_surge(1, available=0, kv_cache=GIB, weights=GIB) == room.SurgeChoice(1, "local.surge: 1")
    assert choose_surge("auto", available=100 * GIB, kv_cache=GIB, weights=GIB, gpus=1).surge == 0
    assert choose_surge("auto", available=None, kv_cache=GIB, weights=GIB).surge == 1


def test_decide_sizes_a_replica_from_the_engines_kv_cache_space_and_the_staged_weights(
    tmp_path: Path, monkeypatch
) -> None:
    plan = make_plan(tmp_path)
    plan.model_dir.mkdir(parents=True)
    (plan.model_dir / "model.safetensors").write_bytes(b"\0" * 1000)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {(3 * GIB + 999) // 1024} kB\n")  # 1 byte short of 1 GiB + 1000 B + 2 GiB
    monkeypatch.setattr(room, "MEMINFO", meminfo)
    assert engine.vllm_env(plan.spec)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert room.decide(plan).surge == 0
    meminfo.write_text(f"MemAvailable: {(3 * GIB + 1024) // 1024} kB\n")
    assert room.decide(plan).surge == 1
