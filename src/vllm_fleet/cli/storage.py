"""`vllm-fleet probe-storage` and `vllm-fleet prefetch`: read weights at the storage's speed."""

from __future__ import annotations

from pathlib import Path

import typer

from vllm_fleet.cli.common import JsonOpt, console, errors, print_json


def probe_storage(
    path: Path = typer.Argument(..., help="A directory on the volume (a probe file is written there) or a large file."),
    size_mb: int = typer.Option(512, "--size-mb", help="Size of the probe file written in a directory."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure the volume's read limit (O_DIRECT), what mmap at the current read-ahead gets, and what to set."""
    from contextlib import nullcontext

    from vllm_fleet.weights.probe_storage import probe_storage as run_probe

    with errors(as_json), nullcontext() if as_json else console.status(f"probing {path}"):
        report = run_probe(path, probe_bytes=size_mb << 20)
    if as_json:
        print_json(report.to_dict())
        return
    ra = report.read_ahead
    best = max(report.direct, key=lambda t: t.gbps, default=None)
    how = f" {best.gbps:.2f} GB/s at {best.chunk_bytes >> 10} KiB x {best.queue_depth} in flight" if best else ""
    console.print(f"limit:      {report.limit_gbps:.2f} GB/s (best of O_DIRECT{how} and prefetch's reads)")
    at = " / ".join(f"{t.gbps:.2f}" for t in report.buffered)
    depths = " / ".join(str(t.queue_depth) for t in report.buffered)
    chunk = report.buffered[0].chunk_bytes >> 20
    console.print(f"prefetch:   {at} GB/s with {depths} reads of {chunk} MiB in flight (into the page cache)")
    console.print(f"mmap walk:  {report.mmap_gbps:.2f} GB/s at read_ahead_kb={ra.kb} (what vLLM's default loader gets)")
    console.print(f"file open:  {report.open_ms:.3f} ms")
    known = ra.kb is not None
    console.print(
        f"device:     {ra.device}, read_ahead_kb {ra.kb if known else 'unknown'} ({ra.sysfs or 'not in /sys'})"
    )
    rec_kb = report.recommended_read_ahead_kb
    change = f" (echo {rec_kb} > {ra.sysfs})" if ra.sysfs and ra.kb != rec_kb else ""
    console.print(
        f"recommend:  read_ahead_kb={rec_kb}{change}; prefetch --concurrency {report.recommended_concurrency} "
        f"--chunk-mb {report.recommended_chunk_bytes >> 20}"
    )
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")


def prefetch(
    model_dir: Path = typer.Argument(..., help="Model directory whose weight files to read into the page cache."),
    concurrency: int = typer.Option(32, help="Reads in flight (probe-storage recommends one)."),
    chunk_mb: int = typer.Option(16, "--chunk-mb", help="Size of each read in MiB."),
    reserve_gb: float = typer.Option(1.0, "--reserve-gb", help="Memory to leave free; stop before eating into it."),
    as_json: bool = JsonOpt,
) -> None:
    """Read every weight file with large concurrent reads so vLLM finds the model in the page cache."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from vllm_fleet.weights.prefetch import prefetch as run_prefetch

    with errors(as_json), Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, disable=as_json, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("prefetch", total=None)
        result = run_prefetch(
            model_dir,
            concurrency=concurrency,
            chunk_bytes=chunk_mb << 20,
            reserve_bytes=int(reserve_gb * 1e9),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"prefetched {result.bytes_read / 1e9:.2f} GB from {result.files} file(s) in {result.seconds:.1f} s "
        f"({result.gbps:.2f} GB/s); {result.bytes_cached_before / 1e9:.2f} GB were cached already"
    )
    if result.stopped:
        console.print(f"[yellow]stopped early:[/] {result.stopped}")


def register(app: typer.Typer) -> None:
    app.command("probe-storage")(probe_storage)
    app.command()(prefetch)
