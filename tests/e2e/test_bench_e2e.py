"""`vllm-fleet bench` against the real vLLM CPU server: its token totals are the server's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import fleet

pytestmark = pytest.mark.e2e


def test_bench_token_totals_equal_vllm_counters(served, tmp_path: Path):
    html = tmp_path / "report.html"
    result = fleet(
        "bench", str(served.spec), "--num-prompts", "6", "--request-rate", "3", "--random-input-len", "24",
        "--random-output-len", "8", "--ignore-eos", "--json", "--html", str(html), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == served.model and summary["completed"] == 6 and summary["failed"] == 0
    assert summary["token_source"] == "server usage"
    assert summary["settings"]["tokenizer"].startswith("tokenizer ")  # the staged model's own tokenizer
    assert summary["total_output_tokens"] == 6 * 8  # ignore_eos holds the output length
    # The deltas of vllm:prompt_tokens_total and vllm:generation_tokens_total over the run.
    assert summary["total_input_tokens"] == summary["server_prompt_tokens"]
    assert summary["total_output_tokens"] == summary["server_generation_tokens"]
    assert summary["p50_ttft_ms"] > 0 and summary["p50_itl_ms"] > 0
    assert summary["server_max_kv_cache_usage"] is not None
    assert html.read_text().count("<svg") >= 6
