"""`vllm-fleet bench` end to end against real servers on loopback.

The yardstick (tests/servers/fake_engine.py, a fast streaming OpenAI-compatible
server) and, started here, a server that misbehaves on purpose and one that
serves one request at a time (so it saturates, and its /metrics queue is real).
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests import ROOT

pytestmark = pytest.mark.integration


CLI = str(Path(sys.executable).parent / "vllm-fleet")
FAKE_ENGINE = ROOT / "tests" / "servers" / "fake_engine.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "bench", *args], capture_output=True, text=True, timeout=timeout)


def _yardstick(*args: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "servers" / "fake_engine.py"), "--port", str(port), *args]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="module")
def yardstick() -> Iterator[str]:
    yield from _yardstick()


@pytest.fixture(scope="module")
def dripping() -> Iterator[str]:
    """A yardstick that spaces its tokens 20 ms apart."""
    yield from _yardstick("--itl-ms", "20")


def _served(url: str) -> int:
    return json.load(urllib.request.urlopen(f"{url}/stats"))["served"]


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


class Quirky:
    """Request i: 0 ok, 1 HTTP 500, 2 error event in the stream, 3 malformed JSON. Serial mode: one at a time."""

    def __init__(self, serial_s: float = 0.0):
        self.count = 0
        self.serial_s = serial_s
        self.lock = asyncio.Lock()
        self.waiting = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.serial_s:
            self.waiting += 1
            async with self.lock:
                self.waiting -= 1
                if request.transport is None or request.transport.is_closing():
                    return web.Response(status=499)  # the client gave up (early stop): do not serve it
                await asyncio.sleep(self.serial_s)
            return await self._stream(request, _sse(self._token(), self._usage(body), "[DONE]"))
        kind, self.count = self.count % 4, self.count + 1
        if kind == 1:
            return web.Response(status=500, text="boom")
        tail = {0: self._token(), 2: '{"error": {"message": "engine died"}}', 3: "{not json"}[kind]
        return await self._stream(request, _sse(self._token(), tail, self._usage(body), "[DONE]"))

    @staticmethod
    def _token() -> str:
        return json.dumps({"choices": [{"index": 0, "text": " x"}]})

    @staticmethod
    def _usage(body: dict) -> str:
        return json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    @staticmethod
    async def _stream(request: web.Request, data: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f'vllm:num_requests_waiting{{model_name="q"}} {self.waiting}\n')


def _serve(handler: Quirky) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", handler.completions)
    app.router.add_get("/metrics", handler.metrics)
    runner = web.AppRunner(app, access_log=None)
    port = _free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def quirky() -> Iterator[str]:
    yield from _serve(Quirky())


@pytest.fixture
def serial() -> Iterator[str]:
    yield from _serve(Quirky(serial_s=0.02))


def test_open_loop_counts_every_token_and_writes_csv_and_html(yardstick: str, tmp_path: Path):
    before = _served(yardstick)
    out = bench(
        yardstick, "--num-prompts", "60", "--request-rate", "200", "--random-output-len", "6", "--json",
        "--csv", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.html"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["completed"], summary["failed"], summary["total_output_tokens"]) == (60, 0, 360)
    assert summary["token_source"] == "server usage" and summary["model"] == "yardstick"
    assert summary["request_rate"] == 200 and 0 < summary["p99_ttft_ms"] <= summary["p99_e2el_ms"]
    assert summary["achieved_request_rate"] == pytest.approx(summary["scheduled_request_rate"], rel=0.05)
    assert summary["mean_itl_ms"] >= 0 and summary["mean_tpot_ms"] >= 0  # one write: gaps near 0
    assert _served(yardstick) - before == 61  # one warm-up request, not measured
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 60 and {r["output_tokens"] for r in rows} == {"6"}
    assert (tmp_path / "r.html").read_text().count("<svg") >= 4


def test_fixed_concurrency_on_chat(yardstick: str):
    out = bench(yardstick, "--endpoint", "/v1/chat/completions", "--max-concurrency", "4", "--num-prompts", "20",
                "--random-output-len", "3", "--json", "--warmup", "0")  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["completed"], summary["total_output_tokens"], summary["max_concurrency"]) == (20, 60, 4)
    assert summary["p99_client_queue_ms"] < 5  # closed loop: nothing waits in the client


def test_errors_are_counted_by_kind_not_raised(quirky: str):
    out = bench(quirky, "--model", "q", "--num-prompts", "8", "--max-concurrency", "1", "--warmup", "0", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["completed"] == 2 and summary["failed"] == 6
    assert summary["errors"] == {"http 500": 2, "error in stream": 2, "malformed stream": 2}


def test_slo_missed_exits_1(yardstick: str):
    out = bench(yardstick, "--num-prompts", "5", "--slo", "p99_ttft_ms<=0.0001", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["slo_met"] is False


def test_saturated_server_stops_the_run_early_and_says_so(serial: str):
    out = bench(serial, "--model", "q", "--request-rate", "200", "--duration", "30", "--warmup", "0")
    assert out.returncode == 0, out.stderr
    assert "stopped early: the server is saturated at 200 req/s" in out.stdout


def test_search_finds_the_knee_and_recommends_an_hpa_target(serial: str, tmp_path: Path):
    out = bench(
        serial, "--model", "q", "--request-rate", "10", "--duration", "1.5", "--slo", "p95_e2el_ms<=200",
        "--search", "--recommend-hpa", "--json", "--html", str(tmp_path / "sweep.html"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rates = [run["request_rate"] for run in result["runs"]]
    assert rates == sorted(rates) and len(rates) >= 4
    assert 10 <= result["best_rate_within_slo"] < 80  # one request per 20 ms: 50 req/s at most
    assert result["recommend_hpa"]["metric"] == "vllm:num_requests_waiting"
    assert result["recommend_hpa"]["target"] is not None
    assert "Throughput vs request rate" in (tmp_path / "sweep.html").read_text()


def test_nothing_listening_fails_at_once_with_one_error_not_a_table_of_zeros():
    url = f"http://127.0.0.1:{_free_port()}"
    out = bench(url + "/v1", "--model", "m", "--num-prompts", "3", "--json")
    assert out.returncode == 1
    error = json.loads(out.stdout)  # --json: the error is a JSON object on stdout, the message on stderr
    assert error["error"].startswith(f"nothing listening at {url} ") and error["kind"] == "CheckFailed"
    assert f"nothing listening at {url}" in out.stderr


def test_token_timing_matches_a_server_with_known_gaps(dripping: str):
    out = bench(dripping, "--num-prompts", "10", "--max-concurrency", "2", "--random-output-len", "6", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["total_output_tokens"] == 60
    assert 18 <= summary["median_itl_ms"] <= 40 and 18 <= summary["median_tpot_ms"] <= 40  # 20 ms apart
    assert summary["median_ttft_ms"] < 18  # the first token is sent at once
    assert 100 <= summary["median_e2el_ms"] <= 200  # 5 gaps of 20 ms


def test_worker_processes_merge_raw_samples(yardstick: str):
    before = _served(yardstick)
    out = bench(yardstick, "--workers", "2", "--num-prompts", "41", "--request-rate", "100", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["completed"], summary["failed"], summary["settings"]["workers"]) == (41, 0, 2)
    assert _served(yardstick) - before == 43  # 41 measured, one warm-up per process


def test_bench_of_a_spec_loads_every_replica_and_merges_their_metrics(tmp_path: Path) -> None:
    """`bench SPEC` with replicas: 2 and no router sends to both servers (round-robin), not only the first."""
    from tests.servers import fake_engine

    base = fake_engine.free_port()
    while True:  # two adjacent free ports: the spec's replicas sit at base_port and base_port + 1
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            base = fake_engine.free_port()
    spec = tmp_path / "two.yaml"
    spec.write_text(
        "name: two\nmodel: {source: ./m, served_name: yardstick}\nreplicas: 2\nrouter: {enabled: false}\n"
        f"local: {{base_port: {base}}}\ncache: {{dir: {tmp_path / 'cache'}}}\n"
    )
    with fake_engine.running(port=base) as first, fake_engine.running(port=base + 1) as second:
        out = bench(str(spec), "--num-prompts", "40", "--request-rate", "400", "--random-output-len", "4", "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["completed"] == 40 and summary["settings"]["servers"] == 2
        served = [_served(first.url), _served(second.url)]
    assert sum(served) >= 40 and min(served) >= 18, served  # 20 each, plus the warm-up
