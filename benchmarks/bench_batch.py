"""Does `vllm-fleet batch` keep the engine as busy as a flood does? Batch throughput against bench's capacity.

One run, one fake engine (tests/servers/fake_engine.py in its own process) with a
per-request delay and a bounded batch (``--delay-ms 50 --max-num-seqs 16``: at most
16 requests run at once, each takes 50 ms, so its capacity is ~320 req/s whoever
drives it):

1. capacity: `vllm-fleet bench` (``run_bench``) sends the whole workload at once
   (rate inf, no concurrency cap: the engine's queue is never empty), the same
   number of requests and output tokens as the batch;
2. batch: the same requests as an OpenAI batch file through ``run_batch`` with its
   default concurrency (the probe ramps 1, 2, 4, ... on the batch's own requests),
   and once more with ``--concurrency`` fixed at 2 x max-num-seqs (what the probe should find);
3. the ratios batch / capacity (goal >= 0.9).

    python benchmarks/bench_batch.py [--requests 4000] [--delay-ms 50] [--max-num-seqs 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.servers.fake_engine

from tests.servers.fake_engine import running  # noqa: E402

from vllm_fleet.loop import run_loop  # noqa: E402
from vllm_fleet.ops.batch import BatchOptions, run_batch  # noqa: E402
from vllm_fleet.ops.bench import BenchOptions, run_bench  # noqa: E402


def write_batch(path: Path, count: int, input_words: int, max_tokens: int) -> None:
    with path.open("w") as file:
        for i in range(count):
            body = {"prompt": " ".join(f"w{i}" for _ in range(input_words)), "max_tokens": max_tokens}
            file.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}))
            file.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=32)
    args = parser.parse_args()
    flags = ("--delay-ms", str(args.delay_ms), "--max-num-seqs", str(args.max_num_seqs))
    ideal = args.max_num_seqs / (args.delay_ms / 1000)
    with running(*flags) as engine, tempfile.TemporaryDirectory() as tmp:
        print(f"fake engine {' '.join(flags)}: at most {ideal:.0f} req/s; {args.requests} requests each run")
        bench_opts = BenchOptions(
            num_prompts=args.requests,
            input_len=args.input_len,
            output_len=args.max_tokens,
            warmup=1,
        )
        capacity = run_loop(run_bench(engine.url, None, bench_opts)).points[0].summary
        cap = capacity["request_throughput"]
        print(
            f"capacity (vllm-fleet bench, rate inf): {cap:.1f} req/s, {capacity['output_throughput']:.0f} output tok/s "
            f"({capacity['completed']} completed, {capacity['failed']} failed)"
        )
        inp = Path(tmp) / "in.jsonl"
        write_batch(inp, args.requests, args.input_len, args.max_tokens)
        for label, concurrency in (("probed", None), ("fixed", 2 * args.max_num_seqs)):
            out = Path(tmp) / f"out-{label}.jsonl"
            result = run_loop(run_batch(engine.url, inp, out, BatchOptions(concurrency=concurrency)))
            rate = result.request_throughput
            print(
                f"batch, {label} concurrency {result.concurrency} ({result.concurrency_why or '--concurrency'}): "
                f"{rate:.1f} req/s, {result.output_tokens / result.elapsed_s:.0f} output tok/s "
                f"({result.sent - result.failed} ok, {result.failed} failed); batch / capacity = {rate / cap:.3f}"
            )


if __name__ == "__main__":
    main()
