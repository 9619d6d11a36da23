"""Files a bench leaves behind: the per-request CSV and a self-contained HTML report."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from vllm_fleet.bench import charts
from vllm_fleet.bench.sweep import BenchReport, Point

TABLE_KEYS = (
    ("request rate (req/s)", "request_rate"),
    ("sent / scheduled rate (req/s)", ("achieved_request_rate", "scheduled_request_rate")),
    ("completed", "completed"),
    ("failed", "failed"),
    ("request throughput (req/s)", "request_throughput"),
    ("goodput (req/s)", "request_goodput"),
    ("output throughput (tok/s)", "output_throughput"),
    ("TTFT p50 / p95 / p99 (ms)", ("p50_ttft_ms", "p95_ttft_ms", "p99_ttft_ms")),
    ("TPOT p50 / p95 / p99 (ms)", ("p50_tpot_ms", "p95_tpot_ms", "p99_tpot_ms")),
    ("ITL p50 / p95 / p99 (ms)", ("p50_itl_ms", "p95_itl_ms", "p99_itl_ms")),
    ("E2E p50 / p95 / p99 (ms)", ("p50_e2el_ms", "p95_e2el_ms", "p99_e2el_ms")),
    ("client queue p50 / p99 (ms)", ("p50_client_queue_ms", "p99_client_queue_ms")),
    ("input / output tokens", ("total_input_tokens", "total_output_tokens")),
    ("token counts from", "token_source"),
    ("server: prompt / generation tokens", ("server_prompt_tokens", "server_generation_tokens")),
    ("server: mean / max waiting", ("server_mean_waiting", "server_max_waiting")),
    ("server: max KV cache usage (%)", "server_max_kv_cache_usage"),
    ("server: prefix cache hit rate (%)", "server_prefix_cache_hit_rate"),
    ("server: preemptions", "server_preemptions"),
    ("errors", "errors"),
    ("SLO met", "slo_met"),
    ("stopped early", "stopped_early"),
)


# Fractions in the summary (as vLLM exports them) shown as percentages, the unit the charts use.
PERCENT_KEYS = frozenset({"server_max_kv_cache_usage", "server_prefix_cache_hit_rate"})


def cell(summary: dict, key: str | tuple[str, ...]) -> str:
    """One table cell: numbers rounded, several keys joined with ' / ', missing ones as '-'."""
    if isinstance(key, tuple):
        return " / ".join(cell(summary, k) for k in key)
    value = summary.get(key)
    if key in PERCENT_KEYS and isinstance(value, int | float):
        value = 100.0 * value
    if value is None or value == "" or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def write_csv(report: BenchReport, path: Path) -> None:
    """One row per request of every run, with the run's requested rate."""
    rows = [{"request_rate": p.rate} | r.row() for p in report.points for r in p.run.results if not r.warmup]
    with path.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_html(report: BenchReport, path: Path) -> None:
    """The report a person would rather look at than read: summary, distributions, rate curves, server queue."""
    path.write_text(render_html(report))


def render_html(report: BenchReport) -> str:
    points = report.points
    last = max(points, key=lambda p: (p.rate == report.best_rate, p.rate)) if points else None
    sections = [_summary_table(report)]
    if report.best_rate is not None or report.hpa_target:
        sections.append(_verdict(report))
    if len(points) > 1:
        sections.append(_figure(_rate_charts(report)))
    if last is not None:
        sections.append(f"<h2>Distributions at {_rate(last.rate)}</h2>")
        sections.append(_figure(_distributions(last)))
        sections.append(f"<h2>Server over time at {_rate(last.rate)}</h2>")
        sections.append(_figure(_server_charts(last)))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>vllm-fleet bench</title><style>"
        "body{font-family:system-ui,sans-serif;margin:24px;color:#111827;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}th{background:#f3f4f6}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}.verdict{font-size:15px;padding:8px 12px;background:#f0fdf4;"
        "border-left:4px solid #16a34a;margin:12px 0}.warn{background:#fef2f2;border-color:#dc2626}"
        "small{color:#6b7280}</style></head><body>"
        f"<h1>vllm-fleet bench: {escape(report.model)} at {escape(report.url)}</h1>"
        f"<small>{stamp} · {escape(_settings(report))}</small>" + "".join(sections) + "</body></html>"
    )


def _rate(rate: float) -> str:
    return "max rate" if math.isinf(rate) else f"{rate:g} req/s"


def _settings(report: BenchReport) -> str:
    return ", ".join(f"{k}={v}" for k, v in report.settings.items() if v not in (None, ""))


def _summary_table(report: BenchReport) -> str:
    head = "".join(f"<th>{escape(_rate(p.rate))}</th>" for p in report.points)
    rows = "".join(
        f"<tr><td>{escape(label)}</td>"
        + "".join(f"<td>{escape(cell(p.summary, key))}</td>" for p in report.points)
        + "</tr>"
        for label, key in TABLE_KEYS
    )
    return f"<h2>Summary</h2><table><tr><th></th>{head}</tr>{rows}</table>"


def _verdict(report: BenchReport) -> str:
    lines = []
    if report.slo is not None:
        best = report.best_rate
        lines.append(
            f"Highest rate within the SLO ({escape(report.slo.text)}): <b>{best:g} req/s</b>"
            if best is not None
            else f"No measured rate met the SLO ({escape(report.slo.text)})"
        )
    if report.hpa_target:
        target = report.hpa_target
        value = f"<b>{target['target']}</b>" if target["target"] is not None else "none found"
        lines.append(f"HPA target {escape(target['metric'])} = {value} ({escape(target['why'])})")
    warn = "" if report.best_rate is not None else " warn"
    return f"<div class='verdict{warn}'>" + "<br>".join(lines) + "</div>"


def _figure(svgs: list[str]) -> str:
    return "<div class='charts'>" + "".join(svgs) + "</div>"


def _rate_charts(report: BenchReport) -> list[str]:
    finite = [p for p in report.points if math.isfinite(p.rate)]
    throughput = {
        "requested": [(p.rate, p.rate) for p in finite],
        "completed": [(p.rate, p.summary["request_throughput"]) for p in finite],
    }
    charts_out = [charts.lines("Throughput vs request rate", "request rate (req/s)", "req/s", throughput)]
    for metric in ("ttft", "e2el"):
        limit = _slo_limit(report, metric)
        series = {
            f"p{q}": [(p.rate, p.summary[f"p{q}_{metric}_ms"]) for p in finite if p.summary["completed"]]
            for q in (50, 95, 99)
        }
        charts_out.append(
            charts.lines(f"{metric.upper()} vs request rate", "request rate (req/s)", "ms", series, limit)
        )
    return charts_out


def _slo_limit(report: BenchReport, metric: str) -> tuple[str, float] | None:
    if report.slo is None:
        return None
    return next(((f"SLO {key} {limit:g}", limit) for key, limit in report.slo.terms if f"_{metric}_" in key), None)


def _distributions(point: Point) -> list[str]:
    ok = [r for r in point.run.results if r.success and not r.warmup]
    return [
        charts.histogram("TTFT", "ms", [r.ttft_s * 1000 for r in ok]),
        charts.histogram("E2E latency", "ms", [r.e2el_s * 1000 for r in ok]),
        charts.histogram("ITL (per token)", "ms", [g * 1000 for r in ok for g in r.itl_s]),
        charts.histogram("TPOT", "ms", [r.tpot_s * 1000 for r in ok if r.tpot_s is not None]),
    ]


def _server_charts(point: Point) -> list[str]:
    samples = point.run.server.samples
    if not samples:
        return [charts.lines("Server queue (no /metrics on this server)", "s", "requests", {})]
    queue = {
        "waiting": [(s.t_s, s.waiting) for s in samples if s.waiting is not None],
        "running": [(s.t_s, s.running) for s in samples if s.running is not None],
    }
    kv = {"KV cache usage %": [(s.t_s, 100 * s.kv_cache_usage) for s in samples if s.kv_cache_usage is not None]}
    return [
        charts.lines("Server queue depth over time", "seconds", "requests", queue, counts=True),
        charts.lines("KV cache usage over time", "seconds", "%", kv),
    ]
