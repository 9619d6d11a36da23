"""`vllm-fleet drain` against a real HTTP server on loopback serving vLLM-style /metrics (issue 4)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from vllm_fleet.cli import app
from vllm_fleet.ops.drain import drain
from vllm_fleet.wire.prometheus import in_flight

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
vllm:num_requests_waiting_by_reason{{reason="capacity"}} 7.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{{finished_reason="stop",model_name="m"}} 12.0
"""


class _Engine(ThreadingHTTPServer):
    """Serves /metrics; each scrape pops the next (running, waiting) pair, the last one repeats."""

    def __init__(self, states: list[tuple[float, float]]):
        self.states = list(states)
        self.scrapes = 0
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Engine

    def do_GET(self) -> None:
        running, waiting = self.server.states[0] if len(self.server.states) == 1 else self.server.states.pop(0)
        self.server.scrapes += 1
        body = METRICS.format(running=running, waiting=waiting).encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[_Engine]:
    server = _Engine(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: _Engine) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_in_flight_sums_running_and_waiting_only() -> None:
    assert in_flight(METRICS.format(running=2.0, waiting=3.0)) == 5.0
    assert in_flight(METRICS.format(running=0.0, waiting=0.0)) == 0.0


@pytest.mark.parametrize("engine", [[(2, 1), (1, 1), (1, 0), (0, 0)]], indirect=True)
def test_drain_waits_until_nothing_is_in_flight(engine: _Engine) -> None:
    result = asyncio.run(drain(_url(engine), timeout_s=10, poll_s=0.05, settle_s=0))
    assert result.drained and result.in_flight == 0.0
    assert engine.scrapes == 4


@pytest.mark.parametrize("engine", [[(1, 4)]], indirect=True)
def test_drain_gives_up_at_the_timeout(engine: _Engine) -> None:
    result = asyncio.run(drain(_url(engine), timeout_s=0.3, poll_s=0.05, settle_s=0))
    assert not result.drained and result.in_flight == 5.0 and result.seconds >= 0.3


def test_drain_of_a_server_that_is_gone_is_done() -> None:
    server = _Engine([(0, 0)])
    url = _url(server)
    server.server_close()
    result = asyncio.run(drain(url, timeout_s=5, poll_s=0.05, settle_s=0))
    assert result.drained and "not answering" in result.detail


@pytest.mark.parametrize("engine", [[(1, 0), (0, 0)]], indirect=True)
def test_cli_drain_json(engine: _Engine) -> None:
    result = CliRunner().invoke(app, ["drain", "--url", _url(engine), "--timeout", "5", "--settle", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["drained"] is True


@pytest.mark.parametrize("engine", [[(3, 0)]], indirect=True)
def test_cli_drain_exits_1_on_timeout(engine: _Engine) -> None:
    result = CliRunner().invoke(app, ["drain", "--url", _url(engine), "--timeout", "0.2", "--settle", "0"])
    assert result.exit_code == 1 and "not drained" in result.output
