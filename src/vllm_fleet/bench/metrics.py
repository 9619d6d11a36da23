"""Per-request results and the summary, with vLLM's benchmark definitions and result keys.

Definitions (as ``vllm bench serve``):
- TTFT: from sending the request to the first chunk with non-empty content.
- ITL: gaps between content chunks; a chunk carrying k tokens contributes k
  gaps of (gap / k), so a server that batches tokens per chunk is not
  flattered.
- TPOT: per request, (E2E - TTFT) / (output tokens - 1).
- E2E latency: from sending the request to the end of its stream.
- Client queue (send lag): from a request's scheduled send time until its
  bytes were written to the socket: a wait for a concurrency slot plus this
  client's own send path. Reported on its own, never inside latency.
Percentiles are computed over raw samples (merged across workers, never averaged).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vllm_fleet.errors import SpecError

PERCENTILES = (50, 90, 95, 99)
_SLO_TERM = re.compile(r"^\s*(?:(mean|median|p\d{1,2}(?:\.\d+)?)_)?(ttft|tpot|itl|e2el)_ms\s*<=\s*([\d.]+)\s*$")


@dataclass
class RequestResult:
    """What one request saw. Times in seconds since the run started; never raises, errors are data."""

    index: int
    scheduled_s: float
    sent_s: float = 0.0
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    token_source: str = "server usage"
    success: bool = False
    error: str = ""
    error_kind: str = ""
    warmup: bool = False

    @property
    def queue_s(self) -> float:
        return max(self.sent_s - self.scheduled_s, 0.0)

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    def row(self) -> dict[str, Any]:
        """One CSV row (times in ms)."""
        return {
            "index": self.index,
            "scheduled_ms": round(self.scheduled_s * 1000, 3),
            "sent_ms": round(self.sent_s * 1000, 3),
            "client_queue_ms": round(self.queue_s * 1000, 3),
            "ttft_ms": round(self.ttft_s * 1000, 3),
            "tpot_ms": "" if self.tpot_s is None else round(self.tpot_s * 1000, 3),
            "e2el_ms": round(self.e2el_s * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "token_source": self.token_source,
            "success": self.success,
            "error_kind": self.error_kind,
            "error": self.error,
        }


@dataclass(frozen=True)
class SLO:
    """A conjunction of terms like ``p95_ttft_ms<=1000``."""

    terms: tuple[tuple[str, float], ...]
    text: str

    def met_by(self, summary: dict[str, Any]) -> bool:
        return not self.misses(summary)

    def misses(self, summary: dict[str, Any]) -> list[str]:
        """Each term ``summary`` breaks, with by how much: 'p95_e2el_ms 7210 > 3000 (by 4210, 2.4x)'."""
        out = []
        for key, limit in self.terms:
            value = summary.get(key)
            if value is None:
                out.append(f"{key} not measured")
            elif value > limit:
                ratio = f", {value / limit:.1f}x" if limit > 0 else ""
                out.append(f"{key} {value:.0f} > {limit:g} (by {value - limit:.0f}{ratio})")
        return out

    def request_ok(self, result: RequestResult) -> bool:
        """Per-request test for goodput: each term applied to this request's own value."""
        values = {"ttft": result.ttft_s, "e2el": result.e2el_s, "tpot": result.tpot_s or 0.0}
        values["itl"] = max(result.itl_s, default=0.0)
        return result.success and all(values[key.rsplit("_", 2)[-2]] * 1000 <= limit for key, limit in self.terms)


def parse_slo(text: str) -> SLO:
    """``p95_ttft_ms<=1000,p95_e2el_ms<=3000`` -> SLO (a bare ``ttft_ms`` means p95)."""
    terms = []
    for part in text.split(","):
        match = _SLO_TERM.match(part)
        if not match:
            raise SpecError(
                f"SLO term {part.strip()!r} not understood",
                fix="write terms like p95_ttft_ms<=1000,p99_e2el_ms<=3000 (stat: mean, median, pNN; metric: ttft, "
                "tpot, itl, e2el)",
            )
        stat, metric, limit = match.groups()
        terms.append((f"{stat or 'p95'}_{metric}_ms", float(limit)))
    return SLO(tuple(terms), text)


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted ``ordered`` (numpy's default, as vLLM reports)."""
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(name: str, samples_s: list[float]) -> dict[str, float]:
    """``mean_/median_/std_/pNN_{name}_ms`` of samples in seconds (zeros when there are none, as vLLM)."""
    ordered = sorted(v * 1000 for v in samples_s)
    if not ordered:
        return {f"{stat}_{name}_ms": 0.0 for stat in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES))}
    out = {
        f"mean_{name}_ms": statistics.fmean(ordered),
        f"median_{name}_ms": percentile(ordered, 50),
        f"std_{name}_ms": statistics.pstdev(ordered),
    }
    out |= {f"p{p}_{name}_ms": percentile(ordered, p) for p in PERCENTILES}
    return out


def summarize(results: list[RequestResult], duration_s: float, slo: SLO | None = None) -> dict[str, Any]:
    """The run's summary with vLLM's result keys (warm-up requests excluded)."""
    measured = [r for r in results if not r.warmup]
    ok = [r for r in measured if r.success]
    duration_s = max(duration_s, 1e-9)
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    summary: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(measured) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": (sum(slo.request_ok(r) for r in ok) / duration_s) if slo else None,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    summary |= distribution("ttft", [r.ttft_s for r in ok])
    summary |= distribution("tpot", [r.tpot_s for r in ok if r.tpot_s is not None])
    summary |= distribution("itl", [gap for r in ok for gap in r.itl_s])
    summary |= distribution("e2el", [r.e2el_s for r in ok])
    summary |= distribution("client_queue", [r.queue_s for r in measured])
    summary["errors"] = dict(Counter(r.error_kind for r in measured if not r.success))
    summary["token_source"] = ", ".join(sorted({r.token_source for r in ok})) or "none"
    if slo:
        summary["slo"] = slo.text
        summary["slo_misses"] = slo.misses(summary)
        summary["slo_met"] = not summary["slo_misses"]
    return summary
