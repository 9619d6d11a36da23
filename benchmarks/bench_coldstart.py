"""Cold start: time until every tensor of a safetensors model is in memory, cold cache (issue 6).

    /work/main/.venv/bin/python benchmarks/bench_coldstart.py                  # smoke: 0.5 GB
    /work/main/.venv/bin/python benchmarks/bench_coldstart.py --size-gb 2      # the issue's size

Loaders, each after dropping the model's pages (posix_fadvise DONTNEED, checked with mincore):
  (a) safe_open + get_tensor, file after file: vLLM's default loader
  (b) vllm-fleet prefetch, then (a); (b') prefetch in the background with (a) started at once
  (c) prefetch beside a simulated engine start (a process busy on one core for --start-s), then (a);
      against the same start, then (a)
  (d) runai-model-streamer's SafetensorsStreamer (extra `loaders`), if it imports
  (e) fastsafetensors on the CPU (nogds), if it imports
Baseline: the device limit that probe-storage measures on the same files in the same run.
Devices (--device picks): the plain disk under --dir; (root only) a loop device opened with
--direct-io=on and read_ahead_kb=128; and `fuse`: the generated files served by fuse_latency.py, a
FUSE passthrough (fuse_latency.c, compiled here) that adds --latency-ms (default 2) to every read
request and an optional --bandwidth-mbps cap, serves requests in parallel and limits the kernel's
read-ahead to 128 KiB: a default cloud persistent disk, whose cost is per-request latency, which the
host-cached virtual disk and the loop device lack. The fuse device needs root and apt `fuse3
libfuse3-dev pkg-config gcc`; its source files sit in the page cache, so the latency and the cap are
the whole cost of a read.
    /work/main/.venv/bin/python benchmarks/bench_coldstart.py --device fuse --size-gb 1
Generated data lives under --dir and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from vllm_fleet.weights import pagecache
from vllm_fleet.weights.prefetch import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    prefetch,
    start_prefetch,
    weight_files,
)
from vllm_fleet.weights.probe_storage import probe_storage

TENSOR_BYTES = 32 << 20
_PARAM: torch.Tensor | None = None


def generate(model_dir: Path, size_bytes: int, shards: int) -> None:
    """Shards of bf16 tensors of random bytes (incompressible), named like a Hugging Face checkpoint."""
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    per_shard = size_bytes // shards
    for s in range(shards):
        tensors = {}
        for t in range(max(1, round(per_shard / TENSOR_BYTES))):
            raw = bytearray(os.urandom(TENSOR_BYTES))
            tensors[f"model.layers.{s}.{t}.weight"] = torch.frombuffer(raw, dtype=torch.bfloat16).view(4096, -1)
        save_file(tensors, model_dir / f"model-{s + 1:05d}-of-{shards:05d}.safetensors")


def drop_all(model_dir: Path) -> None:
    """Drop the model's pages and check with mincore; a few pages still mapped by a loader may linger a moment."""
    left = 0
    for attempt in range(5):
        gc.collect()  # tensors that still map a file keep its pages
        left = sum(pagecache.drop(f) for f in weight_files(model_dir))
        if left == 0:
            return
        time.sleep(0.2 * (attempt + 1))
    if left > 1 << 20:
        raise SystemExit(f"{model_dir}: {left} bytes still cached after DONTNEED; a warm timing would be worthless")
    print(f"   (note: {left} bytes stayed cached after DONTNEED)")


def into_param(tensor) -> int:
    """Copy ``tensor`` into a model parameter, as vLLM's weight_loader does: every byte is read."""
    global _PARAM
    flat = tensor.reshape(-1).view(torch.uint8)
    if _PARAM is None or _PARAM.numel() < flat.numel():
        _PARAM = torch.empty(flat.numel(), dtype=torch.uint8)
    _PARAM[: flat.numel()].copy_(flat)
    return flat.numel()


def load_default(model_dir: Path) -> int:
    """(a) vLLM's safetensors_weights_iterator: safe_open + get_tensor, file after file."""
    from safetensors import safe_open

    total = 0
    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += into_param(st.get_tensor(name))
    return total


def load_runai(model_dir: Path) -> int:
    from runai_model_streamer import SafetensorsStreamer

    total = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_files([str(f) for f in weight_files(model_dir)])
        for _, tensor in streamer.get_tensors():
            total += into_param(tensor)
    return total


def load_fastsafetensors(model_dir: Path) -> int:
    from fastsafetensors import SafeTensorsFileLoader

    loader = SafeTensorsFileLoader(None, "cpu", nogds=True)
    try:
        loader.add_filenames({0: [str(f) for f in weight_files(model_dir)]})
        buffers = loader.copy_files_to_device()
        total = sum(into_param(buffers.get_tensor(k)) for k in loader.get_keys())
        buffers.close()
    finally:
        loader.close()
    return total


@contextlib.contextmanager
def engine_start(seconds: float) -> Iterator[None]:
    """A stand-in for vLLM's start: another process busy on one core (imports, profiling) for ``seconds``."""
    busy = subprocess.Popen(
        [sys.executable, "-c", f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"]
    )
    try:
        yield
    finally:
        busy.wait()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_device(label: str, model_dir: Path, args: argparse.Namespace) -> None:
    size = sum(f.stat().st_size for f in weight_files(model_dir))
    shard = max(weight_files(model_dir), key=lambda f: f.stat().st_size)
    drop_all(model_dir)
    probe = probe_storage(shard)
    drop_all(model_dir)
    limit = probe.limit_gbps
    files = len(weight_files(model_dir))
    print(f"\n== {label}: {size / 1e9:.2f} GB in {files} files, read_ahead_kb={probe.read_ahead.kb}")
    print(f"   baseline: device limit {limit:.2f} GB/s (probe-storage: best of O_DIRECT and prefetch's reads)")
    print(f"   mmap walk at this read-ahead {probe.mmap_gbps:.2f} GB/s")
    ideal = size / 1e9 / limit
    rows: list[tuple[str, float]] = []

    def trial(name: str, fn: Callable[[], object], cold: bool = True) -> float:
        if cold:
            drop_all(model_dir)
        seconds = timed(fn)
        rows.append((name, seconds))
        print(
            f"   {name:<46} {seconds:6.2f} s  {size / 1e9 / seconds:5.2f} GB/s  {ideal / seconds:5.2f} x limit",
            flush=True,
        )
        return seconds

    a = trial("(a) safe_open + get_tensor", lambda: load_default(model_dir))
    pf_seconds = []

    def prefetched() -> None:
        pf_seconds.append(prefetch(model_dir, concurrency=args.concurrency, chunk_bytes=args.chunk_mb << 20).seconds)
        load_default(model_dir)

    b = trial("(b) prefetch, then (a)", prefetched)
    print(f"       prefetch alone: {pf_seconds[0]:.2f} s = {size / 1e9 / pf_seconds[0]:.2f} GB/s "
          f"= {ideal / pf_seconds[0]:.2f} x limit")  # fmt: skip

    def beside() -> None:
        handle = start_prefetch(model_dir, concurrency=args.concurrency, chunk_bytes=args.chunk_mb << 20)
        load_default(model_dir)
        handle.stop()

    b2 = trial("(b') prefetch beside (a), both from t=0", beside)
    warm = trial("(a) again, warm cache (the floor)", lambda: load_default(model_dir), cold=False)

    def start_then_load() -> None:
        with engine_start(args.start_s):
            pass
        load_default(model_dir)

    def overlapped() -> None:
        handle = start_prefetch(model_dir, concurrency=args.concurrency, chunk_bytes=args.chunk_mb << 20)
        with engine_start(args.start_s):
            pass
        load_default(model_dir)
        handle.stop()

    c0 = trial(f"(c0) {args.start_s:.0f} s start, then (a)", start_then_load)
    c1 = trial(f"(c1) {args.start_s:.0f} s start beside prefetch, then (a)", overlapped)
    for name, fn in (
        ("(d) runai-model-streamer", load_runai),
        ("(e) fastsafetensors (cpu, nogds)", load_fastsafetensors),
    ):
        try:
            trial(name, lambda fn=fn: fn(model_dir))
        except Exception as exc:  # report, do not hide: these are optional comparisons
            print(f"   {name:<46} did not run: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    # (b) reads at the limit at best, then walks the now-warm files: it cannot beat limit time + warm (a).
    bound = ideal / (ideal + warm)
    print(f"   ratios: (b) vs (a) {a / b:.2f} x faster, (b') vs (a) {a / b2:.2f} x; "
          f"prefetch alone {ideal / pf_seconds[0]:.2f} x limit; (b) {ideal / b:.2f} x limit where its bound "
          f"(limit time + warm (a)) is {bound:.2f} x: {ideal / b / bound:.0%} of it; (b') {ideal / b2:.2f} x limit; "
          f"(c) start+load {c1:.2f} s beside prefetch vs {c0:.2f} s without; "
          f"start + warm load = {args.start_s + warm:.2f} s")  # fmt: skip


@contextlib.contextmanager
def loop_device(base: Path, size_bytes: int) -> Iterator[Path]:
    """An ext4 file system on a loop device with direct I/O and read_ahead_kb=128 (a default cloud disk)."""
    image, mount = base / "loop.img", base / "loop"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(int(size_bytes * 1.3) + (512 << 20))
    dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["mkfs.ext4", "-q", dev], check=True)
        subprocess.run(["mount", dev, str(mount)], check=True)
        Path(f"/sys/block/{Path(dev).name}/queue/read_ahead_kb").write_text("128")
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
        image.unlink()


@contextlib.contextmanager
def fuse_device(source: Path, base: Path, args: argparse.Namespace) -> Iterator[Path]:
    """``source`` served by fuse_latency.c: per-request latency, optional cap, read-ahead 128 KiB."""
    mount, server_bin = base / "fuse", base / "fuse_latency"
    mount.mkdir()
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode:
        raise SystemExit("--device fuse needs apt packages fuse3 libfuse3-dev pkg-config gcc")
    src = Path(__file__).with_name("fuse_latency.c")
    subprocess.run(["gcc", "-O2", "-o", str(server_bin), str(src), *flags.stdout.split()], check=True)
    env = {**os.environ, "SOURCE": str(source), "LATENCY_US": str(args.latency_ms * 1e3),
           "BANDWIDTH_BPS": str(args.bandwidth_mbps * 1e6)}  # fmt: skip
    server = subprocess.Popen([str(server_bin), str(mount), "-f", "-o", "ro,max_threads=256"], env=env)
    try:
        for _ in range(100):
            if os.path.ismount(mount) or server.poll() is not None:
                break
            time.sleep(0.1)
        if not os.path.ismount(mount):
            raise SystemExit("fuse_latency did not mount (needs root, or fusermount3 from apt fuse3)")
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=0.5, help="model size (the issue asks 2-4)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--start-s", type=float, default=3.0, help="simulated engine start")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_BYTES >> 20)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="fuse device: latency of every read request")
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0, help="fuse device: bandwidth cap; 0: none")
    parser.add_argument(
        "--device", choices=("plain", "loop", "fuse", "both"), default="both" if os.geteuid() == 0 else "plain"
    )
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to write the generated model")
    args = parser.parse_args()
    size = int(args.size_gb * 1e9)
    base = Path(tempfile.mkdtemp(prefix="bench-coldstart-", dir=args.dir))
    try:
        plain = base / "model"
        generate(plain, size, args.shards)
        if args.device in ("plain", "both"):
            run_device(f"plain disk ({base})", plain, args)
        if args.device in ("loop", "both"):
            with loop_device(base, size) as mount:
                shutil.copytree(plain, mount / "model")
                run_device("loop device, --direct-io=on, read_ahead_kb=128", mount / "model", args)
        if args.device == "fuse":
            with fuse_device(plain, base, args) as mount:
                cap = f", cap {args.bandwidth_mbps:.0f} MB/s" if args.bandwidth_mbps else ""
                run_device(f"FUSE, {args.latency_ms:g} ms per read{cap}, read-ahead 128 KiB", mount, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
