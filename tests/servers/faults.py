"""A scripted fault server: an OpenAI-ish backend that misbehaves on purpose, per test.

What the fake engine does not do: refuse (stop listening), answer slowly, reset a connection
in the middle of a body, answer 5xx or 429 with Retry-After, hang (accept and never answer,
/health included), echo exactly the bytes and headers it received, and tell when a client
closed its connection mid-answer.

It runs on its own event loop in a thread, so a router in the test's loop, a router
subprocess and plain sync clients all reach it alike::

    with FaultServer() as backend:
        backend.script("/v1/chat/completions", Answer(503), Answer(200))  # the next two answers
        backend.always("/health", Hang())                                  # every later one
        ... backend.requests("/v1/chat/completions")  # what it received, in order

Paths with no script answer normally: ``/health`` 200, ``/v1/models`` the ``models`` given,
anything else a small completion JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    """One request as it arrived: the raw head lines and the body bytes exactly."""

    method: str
    path: str  # without the query
    target: str  # as sent: path and query
    headers: tuple[tuple[str, str], ...]  # in the order received, names as sent
    body: bytes
    at: float  # time.monotonic() when the whole request had arrived

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class Answer:
    """A whole answer: ``status``, ``headers``, ``body``, after ``delay_s``."""

    status: int = 200
    body: bytes = b'{"id":"f","object":"chat.completion","choices":[]}'
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Echo:
    """200 with the request's exact body as the body, and its headers as JSON in ``x-echo-headers``."""


@dataclass(frozen=True)
class Stream:
    """An SSE answer (chunked): ``events`` (each a ``data: ...`` payload) ``gap_s`` apart."""

    events: tuple[bytes, ...]
    gap_s: float = 0.0
    reset: bool = False  # after the events, a TCP reset instead of the stream's end (a backend dying mid-stream)
    torn: bytes = b""  # with reset: these first bytes of one more event before the reset (it dies mid-event)
    line_end: bytes = b"\n"  # vLLM's; sse-starlette (llama-cpp-python's server, among others) ends lines in CRLF


@dataclass(frozen=True)
class Reset:
    """The head (declaring ``declared`` body bytes) and ``partial`` of the body, then a TCP reset."""

    partial: bytes = b'{"id":"f","choi'
    declared: int = 4096
    after_s: float = 0.2  # between the partial body and the reset (a RST can discard unread data)
    head: bool = True  # False: reset as soon as the request has arrived, before any byte of an answer


@dataclass(frozen=True)
class Hang:
    """Read the request, never answer (until the client gives up or the server stops)."""


Action = Answer | Echo | Stream | Reset | Hang


@dataclass
class Closed:
    """A connection the client closed while an answer was still being written."""

    path: str
    at: float


@dataclass
class _State:
    scripts: dict[str, deque[Action]] = field(default_factory=lambda: defaultdict(deque))
    always: dict[str, Action] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    closed: list[Closed] = field(default_factory=list)


class FaultServer:
    """A backend scripted per path, in a thread; ``refuse()`` stops it listening (connections refused)."""

    def __init__(self, models: tuple[str, ...] = ("m",), port: int = 0) -> None:
        self.models = models
        self.state = _State()
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # Scripting and what was seen (called from the test's thread).

    def script(self, path: str, *actions: Action) -> None:
        """The next answers on ``path``, in order; afterwards ``always``'s or the default."""
        self.state.scripts[path].extend(actions)

    def always(self, path: str, action: Action | None) -> None:
        """Every answer on ``path`` once its script is used up (None: the default again)."""
        if action is None:
            self.state.always.pop(path, None)
        else:
            self.state.always[path] = action

    def requests(self, path: str | None = None) -> list[Received]:
        """Requests received on ``path`` (None: all but /health, /v1/models and /metrics), in order."""
        if path is None:
            return [r for r in self.state.received if r.path not in ("/health", "/v1/models", "/metrics")]
        return [r for r in self.state.received if r.path == path]

    @property
    def closed(self) -> list[Closed]:
        return list(self.state.closed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Lifetime.

    def __enter__(self) -> FaultServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def refuse(self) -> None:
        """Stop listening and drop every open connection: from now on connections are refused."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)

    def listen_again(self) -> None:
        """Listen again on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    async def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    # One connection.

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.state.received.append(request)
                if not await self._answer(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    def _next(self, path: str) -> Action | None:
        queue = self.state.scripts.get(path)
        if queue:
            return queue.popleft()
        return self.state.always.get(path)

    async def _answer(self, request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done."""
        action = self._next(request.path)
        if action is None:
            action = self._default(request.path)
        if isinstance(action, Answer):
            if action.delay_s:
                await asyncio.sleep(action.delay_s)
            writer.write(_head(action.status, [*action.headers, ("content-length", str(len(action.body)))]))
            writer.write(action.body)
            await writer.drain()
            return True
        if isinstance(action, Echo):
            echoed = json.dumps(list(request.headers))
            headers = [("content-type", "application/octet-stream"), ("x-echo-headers", echoed)]
            writer.write(_head(200, [*headers, ("content-length", str(len(request.body)))]) + request.body)
            await writer.drain()
            return True
        if isinstance(action, Stream):
            return await self._stream(request, action, reader, writer)
        if isinstance(action, Reset) and not action.head:
            _reset(writer)
            return False
        if isinstance(action, Reset):
            writer.write(_head(200, [("content-type", "application/json"), ("content-length", str(action.declared))]))
            writer.write(action.partial)
            await writer.drain()
            if action.after_s:
                await asyncio.sleep(action.after_s)
            _reset(writer)
            return False
        # Hang: wait until the client goes away (EOF) or the server stops.
        await reader.read()
        self.state.closed.append(Closed(request.path, time.monotonic()))
        return False

    async def _stream(
        self, request: Received, action: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        gone = asyncio.ensure_future(reader.read(1))  # the client sends nothing more: EOF means it closed
        writer.write(_head(200, [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]))
        try:
            for i, event in enumerate(action.events):
                if i and action.gap_s:
                    await asyncio.wait({gone}, timeout=action.gap_s)
                if gone.done():
                    self.state.closed.append(Closed(request.path, time.monotonic()))
                    return False
                data = b"data: " + event + action.line_end * 2
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            if action.reset:
                if action.torn:
                    writer.write(b"%x\r\n%s\r\n" % (len(action.torn), action.torn))
                await asyncio.sleep(0.05)  # let the events reach the client before the RST
                _reset(writer)
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.state.closed.append(Closed(request.path, time.monotonic()))
            return False
        finally:
            if not gone.done():
                gone.cancel()
        return False  # the pending read may have taken a byte: this connection is done

    def _default(self, path: str) -> Action:
        if path == "/health":
            return Answer(200, b"", ())
        if path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "faults"} for m in self.models]
            return Answer(200, json.dumps({"object": "list", "data": data}).encode())
        return Answer()


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = tuple((k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line))
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = await _read_chunked(reader)
    return Received(method, path.split("?", 1)[0], path, headers, body, time.monotonic())


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)
