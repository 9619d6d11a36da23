"""Is the bench client the bottleneck? Measured against the yardstick server, beside `vllm bench serve`.

One run prints:
1. ceiling: the sustained streamed request rate the client drives at fixed
   concurrency, and requests per client CPU-second (= per client core; the
   figure that holds on a busy machine), target >= 1,000;
2. rate accuracy: open-loop Poisson runs at fractions of that ceiling, the
   achieved send rate against the rate of the drawn schedule (target within 1 %);
3. client-added latency at half the target rate: p99 of the send lag (when the
   request's bytes were written to the socket minus its scheduled time: the
   timer, the event loop and the HTTP client's send path) in three runs, the
   median against the 1 ms target and, beside it, the p99 and the worst
   lateness of a bare event-loop timer (what the machine adds with no client at
   all: on a shared VM its timers now and then fire ms late, and a run that
   meets a burst of those shows it in its p99); and p99 E2E against a server
   that answers at once (an upper bound on the receive side: it includes the
   server and the kernel);
4. baseline: `vllm bench serve` (from the installed vllm) on the same server,
   same concurrency and request count, and the ratios (throughput, and
   requests per CPU-second from the difference of two run sizes, each counted
   from after its imports, so neither its import of torch nor its tokenizer
   load is counted against it).
The yardstick runs in its own process; on a 2-core machine shared with other
work, latencies carry scheduler noise: the CPU-second figures are the stable ones.

    python benchmarks/bench_client.py [--requests 4000] [--concurrency 64] [--vllm-python .venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from vllm_fleet.bench import datasets, loadgen, metrics, workers
from vllm_fleet.bench.loadgen import LoadConfig
from vllm_fleet.loop import run_loop

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = HERE.parent / "tests" / "servers" / "fake_engine.py"
TOKENIZER = HERE.parent / ".cache" / "demo" / "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_yardstick(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port)])
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:  # server and client on different cores, so neither measures the other
        os.sched_setaffinity(proc.pid, cores[-1:])
        os.sched_setaffinity(0, cores[:-1])
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the yardstick did not start")


def ours(config: LoadConfig, prompts: list[datasets.Prompt]) -> tuple[loadgen.RunResult, float]:
    """One run of our client; returns it and the client CPU seconds it used."""
    cpu = time.process_time()
    run = run_loop(workers.run(config, prompts, datasets.TokenCounter()))
    return run, time.process_time() - cpu


def vllm_bench(python: str, url: str, requests: int, concurrency: int, output_len: int) -> tuple[float, float]:
    """`vllm bench serve` on the same server: (its request throughput, its CPU seconds)."""
    code = (  # its CPU is counted from after its imports (torch's import alone varies by seconds)
        "import sys, time\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "parser = FlexibleArgumentParser(); add_cli_args(parser)\n"
        "cpu = time.process_time(); main(parser.parse_args(sys.argv[1:]))\n"
        "print(f'cpu after imports: {time.process_time() - cpu}')\n"
    )
    args = [
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", "yardstick",
        "--tokenizer", str(TOKENIZER), "--dataset-name", "random", "--random-input-len", "16",
        "--random-output-len", str(output_len), "--num-prompts", str(requests), "--max-concurrency",
        str(concurrency), "--request-rate", "inf", "--ignore-eos", "--disable-tqdm",
    ]  # fmt: skip
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=600)
    rate = re.search(r"Request throughput \(req/s\):\s+([\d.]+)", out.stdout)
    cpu = re.search(r"cpu after imports: ([\d.]+)", out.stdout)
    if not rate or not cpu:
        raise SystemExit(f"vllm bench serve failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(rate.group(1)), float(cpu.group(1))


def timer_floor_ms(config: LoadConfig) -> tuple[float, float]:
    """p99 and worst lateness of a bare event loop sleeping to the same schedule, no requests: the machine's."""

    async def lateness() -> list[float]:
        start = time.perf_counter()
        late = []
        for at in loadgen.send_times(config, config.num_prompts):
            await loadgen.sleep_until(start + at)
            late.append((time.perf_counter() - start - at) * 1000)
        return late

    late = sorted(run_loop(lateness()))
    return metrics.percentile(late, 99), late[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description="Is the bench client the bottleneck?")
    parser.add_argument("--requests", type=int, default=4000, help="Requests per run.")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=8, help="Streamed tokens per answer.")
    parser.add_argument("--target", type=float, default=1000, help="Rate the client must keep (req/s).")
    parser.add_argument("--vllm-python", default=str(HERE.parent / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_yardstick(port)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    try:
        prompts = [datasets.Prompt(f"prompt {i}", 2, args.output_len) for i in range(256)]
        base = LoadConfig(url=url, model="yardstick", num_prompts=args.requests, warmup=args.concurrency)

        run, cpu = ours(replace(base, max_concurrency=args.concurrency), prompts)
        done = sum(r.success for r in run.results)
        ceiling, per_core = done / run.duration_s, done / cpu
        print(
            f"ceiling: {ceiling:,.0f} req/s at concurrency {args.concurrency} ({done} ok); "
            f"{per_core:,.0f} req per client CPU-second (target >= 1,000: {'met' if per_core >= 1000 else 'MISSED'})"
        )

        half = args.target / 2
        floor, worst = timer_floor_ms(replace(base, request_rate=half))
        print(
            f"noise floor: lateness of a bare event-loop timer at {half:g}/s: p99 {floor:.3f} ms, worst {worst:.2f} ms"
        )
        added = []
        for rate in (args.target / 4, half, half, half, args.target, round(0.9 * min(ceiling, per_core))):
            # Warm-up opens keep-alive connections (as `vllm-fleet bench` does), so TCP connects are not measured.
            run, _ = ours(replace(base, request_rate=rate, warmup=8), prompts)
            sent = sorted(r.sent_s for r in run.results)
            planned = sorted(r.scheduled_s for r in run.results)
            achieved = (len(sent) - 1) / (sent[-1] - sent[0])
            drawn = (len(planned) - 1) / (planned[-1] - planned[0])
            lag = sorted((r.sent_s - r.scheduled_s) * 1000 for r in run.results)
            e2el = sorted(r.e2el_s * 1000 for r in run.results if r.success)
            error = abs(achieved / drawn - 1) * 100
            if rate == half:
                added.append(metrics.percentile(lag, 99))
            print(
                f"rate {rate:>6,.0f} req/s: achieved {achieved:,.1f} vs schedule {drawn:,.1f} ({error:.2f} % off, "
                f"{'met' if error <= 1 else 'MISSED'}); send lag p50 {metrics.percentile(lag, 50):.3f} "
                f"p99 {metrics.percentile(lag, 99):.3f} ms; E2E p50 {metrics.percentile(e2el, 50):.3f} "
                f"p99 {metrics.percentile(e2el, 99):.3f} ms; failed {sum(not r.success for r in run.results)}"
            )
        median = statistics.median(added)
        print(
            f"client-added latency at {half:g} req/s: send lag p99 {' / '.join(f'{a:.3f}' for a in added)} ms in "
            f"{len(added)} runs, median {median:.3f} ms = {median:.2f}x the 1 ms target "
            f"({'met' if median < 1 else 'MISSED'}; a bare event-loop timer: p99 {floor:.3f}, worst {worst:.2f} ms)"
        )

        if not Path(args.vllm_python).is_file() or not (TOKENIZER / "tokenizer.json").is_file():
            print(f"baseline skipped: needs {args.vllm_python} with vllm and the demo tokenizer at {TOKENIZER}")
            return
        # Its CPU per request without its fixed costs (imports, tokenizer): the difference of two run sizes.
        small_n = max(args.requests // 4, args.concurrency)
        _, small_cpu = vllm_bench(args.vllm_python, url, small_n, args.concurrency, args.output_len)
        theirs, their_cpu = vllm_bench(args.vllm_python, url, args.requests, args.concurrency, args.output_len)
        their_per_core = (args.requests - small_n) / max(their_cpu - small_cpu, 1e-9)
        print(
            f"vllm bench serve: {theirs:,.0f} req/s at concurrency {args.concurrency}; "
            f"{their_per_core:,.0f} req per CPU-second (CPU of {args.requests} minus {small_n} requests)"
        )
        print(
            f"ratio ours / vllm bench serve: throughput {ceiling / theirs:.2f}x, "
            f"requests per CPU-second {per_core / their_per_core:.2f}x"
        )
        print(json.dumps({"served_by_yardstick": json.load(urllib.request.urlopen(f"{url}/stats"))["served"]}))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
