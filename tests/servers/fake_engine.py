"""The fake engine: a fast OpenAI-compatible server that answers like vLLM's API server, with scripted faults.

With no flags it is the yardstick, the smallest fast streaming server we could
write (the load generator's tests and ``benchmarks/bench_client.py`` measure
against it): every answer is prepared once per (endpoint, max_tokens, stream)
on a raw asyncio protocol with keep-alive, and goes out in one write as its
request arrives, so the server costs almost nothing and a client's own limits
show. With flags it stands in for vLLM in the verify and local-target tests.

What it imitates of vLLM's OpenAI server (``vllm/entrypoints/openai/api_server.py``):

- ``POST /v1/completions`` and ``/v1/chat/completions``: with ``"stream": true`` an
  SSE stream (chunked) of ``max_tokens`` one-token events, a usage event and
  ``data: [DONE]``; without, one ``text_completion`` / ``chat.completion`` JSON
  with ``usage`` (vLLM always puts usage on a non-streamed answer; a stream
  carries it only when asked with ``stream_options.include_usage``).
- ``GET /v1/models``: the served names. ``GET /health``: 200, or 503 as when the
  engine is dead (``vllm/entrypoints/serve/instrumentator/health.py``).
- ``GET /metrics``: the scheduler gauges ``vllm:num_requests_running`` and
  ``vllm:num_requests_waiting`` (``vllm/v1/metrics/loggers.py``); past
  ``--max-num-seqs`` running requests the others wait, as in vLLM's scheduler.
- ``--start-delay-s``: vLLM binds its port before it loads the weights and
  listens only once it serves (``create_server_socket`` in
  ``vllm/entrypoints/launchers/launcher.py``), so connections are refused until then.
- ``--engine-core``: a child process in the server's process group, as the API
  server starts its EngineCore process.
- ``--shutdown-timeout S``: on SIGTERM it stops listening and exits once its
  requests in flight have finished, or after S seconds (vLLM's graceful
  shutdown); without it SIGTERM ends it at once, as vLLM's default (0) aborts.
- ``GET /stats`` (ours, not vLLM's): completions served so far.

Flags (defaults: the yardstick): ``--itl-ms`` gap between streamed tokens;
``--delay-ms`` before an answer starts; ``--models A,B`` what /v1/models lists
(the first one answers); ``--health-status``; ``--empty-content``; ``--no-usage``
(streams without a usage event); ``--exit-after N`` (the process dies after N
completions, like a crashed engine; 0: it dies while starting); ``--max-num-seqs``.
On the scripted path (itl, delay, exit-after) a connection is expected to carry
one request at a time (no pipelining: no client here pipelines).

    python tests/servers/fake_engine.py --port 8011 [--itl-ms 0] [flags]

From a test, in its own process group on a free port, entered once /health answers::

    with running("--health-status", "503") as engine: ...  # engine.url, engine.port, engine.proc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import ClassVar

MODEL = "yardstick"


@dataclass(frozen=True)
class Script:
    """How the engine behaves, from the command line; the defaults are the yardstick."""

    models: tuple[str, ...] = (MODEL,)
    health_status: int = 200
    empty_content: bool = False
    no_usage: bool = False
    itl_s: float = 0.0
    delay_s: float = 0.0
    exit_after: int | None = None
    max_num_seqs: int = 1 << 30

    @property
    def immediate(self) -> bool:
        """Each answer is written whole as its request arrives: nothing is ever in flight."""
        return self.itl_s <= 0 and self.delay_s <= 0 and self.exit_after is None

    @property
    def model(self) -> str:
        return self.models[0] if self.models else MODEL


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _plain(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


def answer_parts(chat: bool, max_tokens: int, stream: bool, script: Script = Script()) -> list[bytes]:
    """A streamed answer: head, one part per token, then usage, [DONE] and the end of the chunked body.

    Not streamed: one part, the whole JSON response.
    """
    texts = ["" if script.empty_content else f" t{i}" for i in range(max_tokens)]
    usage = {"prompt_tokens": 8, "completion_tokens": max_tokens, "total_tokens": 8 + max_tokens}
    if not stream:
        if chat:
            message = {"role": "assistant", "content": "".join(texts)}
            choice: dict = {"index": 0, "message": message, "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": "".join(texts), "finish_reason": "length"}
        kind = "chat.completion" if chat else "text_completion"
        body = {"id": "y", "object": kind, "created": 0, "model": script.model, "choices": [choice], "usage": usage}
        return [_plain("200 OK", json.dumps(body).encode())]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"connection: keep-alive\r\n\r\n"
    )
    kind = "chat.completion.chunk" if chat else "text_completion"
    parts = [head]
    if chat:
        parts.append(_event({"id": "y", "object": kind, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    for text in texts:
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        parts.append(_event({"id": "y", "object": kind, "model": script.model, "choices": [choice]}))
    if not script.no_usage:
        parts.append(_event({"id": "y", "object": kind, "model": script.model, "choices": [], "usage": usage}))
    parts.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return parts


def metrics_text(model: str, running: int, waiting: int) -> str:
    """vLLM's scheduler gauges in the Prometheus text exposition."""
    labels = f'{{engine="0",model_name="{model}"}}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{labels} {running:.1f}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{labels} {waiting:.1f}\n"
    )


def _crash(why: str) -> None:
    """Die at once, as an engine does (no cleanup, exit code 1), saying why on stderr (the replica's log)."""
    sys.stderr.write(f"fake engine: {why}\n")
    sys.stderr.flush()
    os._exit(1)


class Engine(asyncio.Protocol):
    """One connection: parse requests from the buffer, answer each in order."""

    script = Script()
    immediate = True
    served = 0  # completions received
    finished = 0  # completions answered on the scripted path
    running = 0  # on the scripted path: being answered now
    waiting: ClassVar[deque[tuple[Engine, list[bytes]]]] = deque()  # past --max-num-seqs: waiting for a slot
    models_response = b""
    health_response = b""
    _cache: ClassVar[dict[tuple[bool, int, bool], list[bytes]]] = {}  # shared by every connection on purpose

    @classmethod
    def configure(cls, script: Script) -> None:
        """Adopt ``script`` and build the answers that never change."""
        cls.script, cls.immediate = script, script.immediate
        data = [{"id": m, "object": "model", "owned_by": "vllm", "root": m} for m in script.models]
        cls.models_response = _plain("200 OK", json.dumps({"object": "list", "data": data}).encode())
        status = HTTPStatus(script.health_status)
        cls.health_response = _plain(f"{status.value} {status.phrase}", b"")
        cls._cache.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(" ", 2), body)

    def _answer(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            Engine.served += 1
            request = json.loads(body)
            stream = request.get("stream") is True
            key = (path.endswith("chat/completions"), int(request.get("max_tokens") or 16), stream)
            parts = self._cache.get(key) or self._cache.setdefault(key, answer_parts(*key, self.script))
            if self.immediate:
                self.transport.write(b"".join(parts))
            else:
                self._admit(parts)
        elif path == "/v1/models":
            self.transport.write(self.models_response)
        elif path == "/health":
            self.transport.write(self.health_response)
        elif path == "/metrics":
            text = metrics_text(self.script.model, Engine.running, len(Engine.waiting))
            self.transport.write(_plain("200 OK", text.encode(), b"text/plain; version=0.0.4"))
        elif path == "/stats":
            self.transport.write(_plain("200 OK", json.dumps({"served": Engine.served}).encode()))
        else:
            self.transport.write(_plain("404 Not Found", b"{}"))

    # The scripted path: answers that take time, counted as running or waiting.

    def _admit(self, parts: list[bytes]) -> None:
        """Run the request now, or let it wait for one of the --max-num-seqs slots."""
        if Engine.running < self.script.max_num_seqs:
            Engine.running += 1
            self._start(parts)
        else:
            Engine.waiting.append((self, parts))

    def _start(self, parts: list[bytes]) -> None:
        if self.script.delay_s > 0:
            asyncio.get_running_loop().call_later(self.script.delay_s, self._send, parts)
        else:
            self._send(parts)

    def _send(self, parts: list[bytes]) -> None:
        if self.transport.is_closing():
            return self._finish()
        if self.script.itl_s <= 0 or len(parts) == 1:
            self.transport.write(b"".join(parts))
            return self._finish()
        self.transport.write(parts[0])  # the head, then the first event at once: the gaps come between tokens
        self._drip(parts, 1)

    def _drip(self, parts: list[bytes], index: int) -> None:
        if self.transport.is_closing():
            return self._finish()
        self.transport.write(parts[index])
        if index + 1 < len(parts):
            asyncio.get_running_loop().call_later(self.script.itl_s, self._drip, parts, index + 1)
        else:
            self._finish()

    def _finish(self) -> None:
        Engine.running -= 1
        Engine.finished += 1
        if self.script.exit_after is not None and Engine.finished >= self.script.exit_after:
            _crash(f"exiting after {Engine.finished} requests (--exit-after {self.script.exit_after})")
        while Engine.waiting and Engine.running < self.script.max_num_seqs:
            protocol, parts = Engine.waiting.popleft()
            Engine.running += 1
            protocol._start(parts)


async def serve(
    port: int,
    script: Script = Script(),
    host: str = "127.0.0.1",
    start_delay_s: float = 0.0,
    shutdown_timeout_s: float | None = None,
) -> None:
    """Serve on ``host``:``port``; the port is bound at once and listens after ``start_delay_s``; with
    ``shutdown_timeout_s``, SIGTERM lets the requests in flight finish (up to that long)."""
    Engine.configure(script)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if start_delay_s > 0:
        await asyncio.sleep(start_delay_s)  # bound, not listening: a connection is refused, as vLLM's while it loads
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Engine, sock=sock, backlog=4096)
    if shutdown_timeout_s is not None:
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        server.close()  # no new connections
        deadline = time.monotonic() + shutdown_timeout_s
        while (Engine.running or Engine.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        print(f"fake engine: shut down ({Engine.running} request(s) still in flight)", file=sys.stderr, flush=True)
        return
    async with server:
        await server.serve_forever()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--port", type=int, default=8011)
    add("--host", default="127.0.0.1")
    add("--itl-ms", type=float, default=0.0, help="Gap between streamed tokens.")
    add("--delay-ms", type=float, default=0.0, help="Wait before an answer starts (queue and prefill).")
    add("--models", default=MODEL, help="Comma-separated names /v1/models lists; the first one answers.")
    add("--health-status", type=int, default=200, help="Status of GET /health (503: a dead engine).")
    add("--empty-content", action="store_true", help="Answers carry no content.")
    add("--no-usage", action="store_true", help="Streams carry no usage event.")
    add("--exit-after", type=int, default=None, help="Die after N completions (0: while starting).")
    add("--max-num-seqs", type=int, default=1 << 30, help="Requests that run at once; the rest wait.")
    add("--start-delay-s", type=float, default=0.0, help="Listen only after S seconds (loading weights).")
    add("--engine-core", action="store_true", help="Start a child process in the group, as vLLM's EngineCore.")
    add("--shutdown-timeout", type=float, default=None, help="On SIGTERM, let requests in flight finish (S max).")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.engine_core:  # first, so a crash while loading leaves it behind, as vLLM's API server can
        core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], stdin=subprocess.DEVNULL)
        print(f"(EngineCore_DP0 pid={core.pid}) fake engine core started", file=sys.stderr, flush=True)
    if args.exit_after == 0:
        _crash("exiting before serving (--exit-after 0), as an engine that fails while it loads")
    script = Script(
        models=tuple(m for m in args.models.split(",") if m),
        health_status=args.health_status,
        empty_content=args.empty_content,
        no_usage=args.no_usage,
        itl_s=args.itl_ms / 1000,
        delay_s=args.delay_ms / 1000,
        exit_after=args.exit_after,
        max_num_seqs=args.max_num_seqs,
    )
    server = serve(args.port, script, args.host, args.start_delay_s, args.shutdown_timeout)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server)
    else:
        uvloop.run(server)


# Starting it from a test.


@dataclass(frozen=True)
class Running:
    """A fake engine process: where it answers and the process (leader of its own group)."""

    url: str
    port: int
    proc: subprocess.Popen


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports, below Linux's ephemeral range (32768-60999 by default)
    so that no client connection takes one of them between this check and the servers' bind."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32768 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def argv(port: int, *flags: str, server: str = __file__) -> list[str]:
    """The command line of a fake engine (or another test server taking ``--port``) on ``port``."""
    return [sys.executable, str(Path(server).resolve()), "--port", str(port), *flags]


def wait_answering(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 10.0) -> None:
    """Return once ``url``/health answers with any status; raise when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered, with --health-status
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the fake engine exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/health did not answer within {timeout_s} s") from None
            time.sleep(0.02)


@contextlib.contextmanager
def running(*flags: str, port: int | None = None, wait: bool = True, server: str = __file__) -> Iterator[Running]:
    """A fake engine (or the test server ``server``) with ``flags`` in its own process group on ``port``
    (default: a free one).

    With ``wait``, entered once /health answers; on exit the whole group is killed.
    """
    port = port or free_port()
    proc = subprocess.Popen(argv(port, *flags, server=server), stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_answering(url, proc)
        yield Running(url, port, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
