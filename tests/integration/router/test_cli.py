"""`vllm-fleet router` as a real subprocess: it serves, and SIGTERM lets a slow request in flight finish
before the process exits 0 (issue 14)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.servers import free_port
from tests.servers.faults import Answer, FaultServer
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vllm_fleet.cli", "router", *args]


@contextmanager
def router(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        cli("--port", str(port), "--no-access-log", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("routing on "), (line, proc.stderr.read() if proc.stderr and proc.poll() else "")
        assert line.split()[-1] == f"http://127.0.0.1:{port}"
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def ask(url: str, model: str = "m") -> tuple[int, Any]:
    data = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(f"{url}{PATH}", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0() -> None:
    with FaultServer() as backend:
        backend.script(PATH, Answer(delay_s=1.5))
        with router("--backend", backend.url) as (proc, url):
            result: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: result.update(answer=ask(url)))
            worker.start()
            wait_until(lambda: backend.requests(PATH), 10, "the slow request to reach the backend")
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: refuses(int(url.rsplit(":", 1)[1])), 5, "the router to stop listening")
            assert proc.poll() is None  # still finishing the request
            worker.join(20)
            assert result["answer"][0] == 200 and result["answer"][1]["object"] == "chat.completion"
            assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""


def test_the_cli_serves_and_merges_models() -> None:
    with FaultServer(models=("a",)) as one, FaultServer(models=("b",)) as two:
        with router("--backend", one.url, "--backend", two.url, "--policy", "least-load") as (_, url):
            assert ask(url, "a")[0] == 200 and ask(url, "b")[0] == 200
            with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as resp:
                assert sorted(m["id"] for m in json.load(resp)["data"]) == ["a", "b"]
        assert (len(one.requests(PATH)), len(two.requests(PATH))) == (1, 1)


def test_the_head_limit_and_the_request_timeout_are_flags() -> None:
    """--max-head-kb 1: a 2 KiB header gets the 431; --request-timeout 0.5: a body that stops gets the 408."""
    flags = ("--max-head-kb", "1", "--request-timeout", "0.5")
    with FaultServer() as backend, router("--backend", backend.url, *flags) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        big = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'x' * 2048}\r\n\r\n".encode()
        stalled = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        for sent, status in ((big, b" 431 "), (stalled, b" 408 ")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(sent)
                assert status in sock.recv(4096).split(b"\r\n", 1)[0]
        assert ask(url)[0] == 200  # and a good request still passes


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "nothing to route to"),
        (("--backend", "http://127.0.0.1:1", "--policy", "random"), "least-load"),
        (("--backend", "127.0.0.1:8001"), "such as http://127.0.0.1:8001"),  # no scheme: it was a backend never up
        (("--backend", "http://127.0.0.1:port"), "such as http://127.0.0.1:port"),
    ],
    ids=["no-backend", "no-such-policy", "no-scheme", "port-not-a-number"],
)
def test_cli_mistakes_say_the_fix(args: tuple[str, ...], says: str) -> None:
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and says in done.stderr, done.stderr
