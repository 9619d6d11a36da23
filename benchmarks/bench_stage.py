"""Staging throughput: vllm-fleet's ranged transfer vs one stream per file vs boto3's TransferManager.

A generated model-sized file set (never committed) is served by nginx with a
per-connection bandwidth cap (``limit_rate``, standing in for per-stream cloud
limits) and by a moto S3 server. Each variant runs in its own process, so its
peak RSS is its own. Printed: seconds, GB/s, the ratio to the aggregate limit
(cap x connections, or the disk's write speed if lower), the ratio to one stream
per file, the cost of verification, and peak RSS.

    python benchmarks/bench_stage.py                              # smoke: 4 x 64 MiB
    python benchmarks/bench_stage.py --size-mib 512 --rate 50m    # 4 x 512 MiB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import Nginx, free_port  # noqa: E402

MiB = 1 << 20
RUNNER = """
import json, sys, time
mode, args = sys.argv[1], json.loads(sys.argv[2])
import boto3
from boto3.s3.transfer import TransferConfig
from vllm_fleet.weights.stage import StageOptions, stage
started = time.monotonic()  # after the imports: the transfer is what is compared
if mode == "fleet":
    options = StageOptions(chunk_size=args["chunk"], concurrency=args["concurrency"], stall_timeout=60)
    result = stage(args["uri"], args["dest"], options=options)
    fetched, verified = result.bytes_fetched, result.verified
else:
    from pathlib import Path
    s3 = boto3.client("s3", endpoint_url=args["endpoint"])
    fetched = 0
    for key in args["keys"]:
        target = Path(args["dest"]) / key
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(args["bucket"], "m/" + key, str(target), Config=TransferConfig())
        fetched += target.stat().st_size
    verified = {}
seconds = time.monotonic() - started
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so it would count the parent's memory.
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "bytes": fetched, "rss_mib": rss, "verified": verified}))
"""


def run(mode: str, dest: Path, **args: object) -> dict:
    """One variant in a fresh process; the destination is removed afterwards."""
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, mode, json.dumps({**args, "dest": str(dest)})],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    return json.loads(out)


def generate(root: Path, files: int, size_mib: int) -> dict[str, bytes | Path]:
    """model-0000N-of-0000M.safetensors of random bytes plus small config/tokenizer files."""
    root.mkdir(parents=True)
    names = {}
    block = os.urandom(MiB)
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        digest = hashlib.sha256()
        with open(root / name, "wb") as fh:
            for j in range(size_mib):
                chunk = block[j % 7 :] + block[: j % 7] if j else bytes([i]) + block[1:]
                fh.write(chunk)
                digest.update(chunk)
        names[name] = digest.hexdigest()
    for name, text in {"config.json": '{"architectures": ["X"]}', "tokenizer.json": "{}" * 50_000}.items():
        (root / name).write_text(text)
        names[name] = hashlib.sha256(text.encode()).hexdigest()
    (root / "index.txt").write_text("".join(f"{name}\n" for name in names))
    (root / "index-sha256.txt").write_text("".join(f"{d}  {n}\n" for n, d in names.items()))
    return names


def disk_write_speed(directory: Path, size: int) -> float:
    """Bytes per second writing ``size`` bytes and fsyncing: the ceiling any stager meets."""
    path = directory / "disk-probe"
    block = os.urandom(4 * MiB)
    started = time.monotonic()
    with open(path, "wb") as fh:
        for _ in range(max(1, size // len(block))):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.monotonic() - started
    path.unlink()
    return size / seconds


def parse_rate(rate: str) -> float:
    units = {"k": 1024, "m": MiB, "g": 1 << 30}
    return float(rate[:-1]) * units[rate[-1].lower()] if rate[-1].lower() in units else float(rate)


def line(name: str, result: dict, limit: float, baseline: float | None = None) -> None:
    rate = result["bytes"] / result["seconds"]
    extra = f"  {baseline / result['seconds']:5.2f}x one-stream-per-file" if baseline else ""
    print(
        f"  {name:34s} {result['seconds']:7.2f} s  {rate / 1e9:6.3f} GB/s  {rate / limit:5.2f} of limit"
        f"  rss {result['rss_mib']:6.0f} MiB{extra}"
    )


def bench_http(work: Path, args: argparse.Namespace, names: dict) -> None:
    cap = parse_rate(args.rate) or float("inf")  # limit_rate 0: no cap
    total = sum((work / "www" / "m" / n).stat().st_size for n in names)
    limit = min(cap * args.concurrency, args.disk)
    print(f"\nHTTP (nginx, limit_rate {args.rate} per connection; aggregate limit {limit / 1e9:.3f} GB/s)")
    with Nginx(work / "www", work / "nginx", rate=args.rate) as nginx:
        uri = f"{nginx.url}/m/"
        ours = {"chunk": args.chunk_mib * MiB, "concurrency": args.concurrency}
        per_file = {"chunk": 1 << 40, "concurrency": len(names)}  # one range = one stream per file, all at once
        one = run("fleet", work / "dest", uri=uri, **per_file)
        fleet = run("fleet", work / "dest", uri=uri, **ours)
        os.rename(work / "www" / "m" / "index-sha256.txt", work / "www" / "m" / "index.txt")
        checked = run("fleet", work / "dest", uri=uri, **ours)
    line("one stream per file", one, min(cap * args.files, args.disk))
    line("vllm-fleet (size check)", fleet, limit, one["seconds"])
    line(f"vllm-fleet (sha256 {checked['verified']})", checked, limit, one["seconds"])
    cost = (checked["seconds"] - fleet["seconds"]) / fleet["seconds"]
    print(f"  verification cost: {cost * 100:+.1f} % of transfer time ({total / MiB:.0f} MiB hashed while fetching)")


def bench_s3(work: Path, args: argparse.Namespace, names: dict) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        config = TransferConfig(multipart_threshold=5 * (1 << 40))  # single part: the ETag is the MD5
        for name in names:
            s3.upload_file(str(work / "www" / "m" / name), "bench", f"m/{name}", Config=config)
        print(f"\nS3 (moto server {endpoint}; no bandwidth cap: the server's own speed is the limit)")
        boto = run("boto3", work / "dest", endpoint=endpoint, bucket="bench", keys=list(names))
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        ours = run("fleet", work / "dest", uri="s3://bench/m", chunk=args.chunk_mib * MiB, concurrency=args.concurrency)
    finally:
        server.stop()
    rate = boto["bytes"] / boto["seconds"]
    line("boto3 TransferManager", boto, rate)
    line(f"vllm-fleet (md5 {ours['verified']})", ours, rate)
    print(f"  vllm-fleet / boto3 speed: {boto['seconds'] / ours['seconds']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=64, help="size of each weights file (512 for the full set)")
    parser.add_argument("--rate", default="20m", help="nginx limit_rate per connection (bytes/s; k, m suffixes)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunk-mib", type=int, default=16)
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 comparison")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate and stage (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        names = generate(work / "www" / "m", args.files, args.size_mib)
        total = sum((work / "www" / "m" / n).stat().st_size for n in names)
        args.disk = disk_write_speed(work, min(total, 512 * MiB))
        print(
            f"file set: {args.files} x {args.size_mib} MiB + 2 small files ({total / MiB:.0f} MiB); "
            f"disk write {args.disk / 1e9:.2f} GB/s; concurrency {args.concurrency}, chunk {args.chunk_mib} MiB"
        )
        bench_http(work, args, names)
        if not args.no_s3:
            bench_s3(work, args, names)


if __name__ == "__main__":
    main()
