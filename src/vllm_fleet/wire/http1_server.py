"""The HTTP/1.1 server side of the router: an asyncio protocol over httptools (llhttp), no framework.

Why not aiohttp's server here: with our own upstream client (http1.py) in place, aiohttp's server side
(its request object, ``StreamResponse.prepare`` and ``write``, a task per request) was most of the
router's remaining CPU per request and per streamed event (benchmarks/bench_router.py). Here a request is
parsed straight into a small :class:`Request`, a whole answer leaves in one ``transport.write``, a
streamed one in one write per chunk, and a connection's requests run one after another in one task.

What it does, as a router needs it: keep-alive and HTTP/1.0; request bodies of any framing, up to a limit
(beyond it the request is handed over marked ``oversize`` at once and the connection closes after the
answer); ``Expect: 100-continue``; pipelined requests answered in order; write flow control; a client
that disconnects cancels its request's handler (``asyncio.CancelledError`` in it); idle keep-alive
connections closed after ``keepalive_s``; a graceful :meth:`Server.close`; a WebSocket upgrade handed to the
handler (:attr:`Request.upgrade`), which may answer it or :meth:`Request.switch` the connection into a byte
tunnel to another one.

What a client cannot do to it: grow its memory with an endless request head (the parser keeps a header
whole until it ends; past ``max_head_bytes`` the answer is a 431 and the connection closes) or with
pipelined bodies (reading pauses while the requests waiting for their answer hold more than one body's
limit); hold a connection with a request that trickles in or stalls (a head not whole, or a body with
nothing new, after ``request_timeout_s``: a 408 and a close, as nginx's client_header_timeout and
client_body_timeout do).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

log = logging.getLogger("vllm_fleet.wire.http1_server")

Headers = Iterable[tuple[str, str]]
MAX_PIPELINED = 16  # requests parsed ahead of their answers before the connection stops reading
LINGER_S = 5.0  # how long a refused request's remaining bytes are read (and dropped) before the close
MAX_HEAD_BYTES = 64 * 1024  # a request line and headers (nginx allows 4 x 8 KiB, Go's server 1 MiB)
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Reply:
    """A whole answer, returned by a handler (a streamed one is written through :class:`Request` instead)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers = (), body: bytes = b""):
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def json(cls, data: object, status: int = 200, headers: Headers = ()) -> Reply:
        return cls(status, [("Content-Type", "application/json"), *headers], json.dumps(data).encode())


class Request:
    """One request, its body read whole; the answer is a returned :class:`Reply` or streamed with
    :meth:`start`, :meth:`write` (+ :meth:`drain` when :attr:`paused`) and :meth:`finish`."""

    __slots__ = (
        "_chunked",
        "_connection",
        "_parts",
        "_size",
        "_writer",
        "body",
        "finished",
        "headers",
        "method",
        "oversize",
        "path_qs",
        "raw_headers",
        "remote",
        "started",
        "upgrade",
        "version",
    )

    def __init__(self, connection: _Connection, method: str, path_qs: str, version: str):
        self.method = method
        self.path_qs = path_qs
        self.version = version
        self.raw_headers: list[tuple[str, str]] = []  # as the client sent them (order, spelling, repeats)
        self.headers: dict[str, str] = {}  # lower-cased names; a repeated header's values joined by ", "
        self.body = b""
        self.remote = connection.remote
        self.oversize = False  # the body passed the server's limit: answer (413), the connection closes after
        self.started = False  # the answer's head went out
        self.upgrade = False  # a WebSocket handshake: answered as any request, or switched (:meth:`switch`)
        self.finished = False
        self._connection = connection
        self._parts: list[bytes] = []
        self._size = 0
        self._chunked = False
        self._writer: Callable[[bytes], bool]  # set by start

    @property
    def path(self) -> str:
        return self.path_qs.partition("?")[0]

    @property
    def query(self) -> str:
        return self.path_qs.partition("?")[2]

    @property
    def paused(self) -> bool:
        """The client reads slower than we write: :meth:`drain` before writing more."""
        return self._connection.paused

    def start(self, status: int, headers: Headers = (), length: int | None = None) -> None:
        """Send the answer's head; its body follows in :meth:`write` calls (chunked when ``length`` is None)."""
        connection = self._connection
        framing = ""
        if _bodiless(status):
            pass  # RFC 9112 §6.3: no body, no framing headers
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif self.version == "1.1":
            self._chunked = self.method != "HEAD"
            framing = "Transfer-Encoding: chunked\r\n"
        else:  # an HTTP/1.0 client reads to the end of the connection
            connection.keep_alive = False
        connection.write(_head(status, headers, framing, connection))
        self._writer = _body_writer(connection, self._chunked, self.method == "HEAD" or _bodiless(status))
        self.started = True

    def write(self, data: bytes) -> None:
        """A piece of the streamed body (after :meth:`start`)."""
        self._writer(data)

    def writer(self) -> Callable[[bytes], bool]:
        """:meth:`write` as one function, returning ``not paused``: the per-piece path of a forwarded stream
        (called from the upstream connection's callback for every token event)."""
        return self._writer

    async def drain(self) -> None:
        await self._connection.drain()

    def finish(self) -> None:
        """The streamed answer is complete."""
        if not self.finished:
            self.finished = True
            if self._chunked:
                self._connection.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """The streamed answer cannot be completed (its source failed): the connection closes after what was
        written, so the client sees it cut short, never whole."""
        self.finished = True
        self._connection.keep_alive = False
        self._connection.transport.close()

    def switch(self, headers: Headers, to: asyncio.Transport) -> asyncio.Transport:
        """Accept the upgrade (a 101 with ``headers``) and from now on pass the client's bytes to ``to`` unread,
        reading no more of them while ``to`` cannot take them; returns the client's transport, for the other
        way. The handler waits for the tunnel's end; the connection closes when it returns."""
        connection = self._connection
        connection.write(_head(101, headers, "", connection))
        connection.keep_alive = False  # nothing of HTTP follows
        connection.tunnel = to
        if connection.early:  # what the client sent right after its handshake
            to.write(connection.early)
            connection.early = b""
        connection.transport.resume_reading()  # paused since the handshake
        self.started = self.finished = True
        return connection.transport

    def reply(self, answer: Reply) -> None:
        status = answer.status
        body = b"" if self.method == "HEAD" or _bodiless(status) else answer.body
        framing = "" if _bodiless(status) else f"Content-Length: {len(answer.body)}\r\n"
        self._connection.write(_head(status, answer.headers, framing, self._connection) + body)
        self.started = self.finished = True


def _body_writer(connection: _Connection, chunked: bool, bodiless: bool) -> Callable[[bytes], bool]:
    """What writes one piece of a streamed body onto ``connection`` and says whether to go on (``not paused``)."""
    write = connection.transport.write
    if bodiless:
        return lambda data: True

    def plain(data: bytes) -> bool:
        write(data)
        return not connection.paused

    def chunk(data: bytes) -> bool:
        if data:  # an empty chunk would end the body
            write(b"%x\r\n%b\r\n" % (len(data), data))
        return not connection.paused

    return chunk if chunked else plain


def _bodiless(status: int) -> bool:
    """1xx, 204 and 304 answers never have a body (RFC 9110 §6.4.1)."""
    return status < 200 or status in (204, 304)


def _head(status: int, headers: Headers, framing: str, connection: _Connection) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    close = "" if connection.keep_alive or status == 101 else "Connection: close\r\n"  # a 101 says Upgrade
    # Date is one field (RFC 9110 §6.6.1): an answer passed on keeps the origin's, else it gets ours.
    date = "" if any(k.lower() == "date" for k, _ in headers) else f"Date: {_date()}\r\n"
    reason = _REASONS.get(status, "")
    return f"HTTP/1.1 {status} {reason}\r\n{lines}{framing}{close}{date}\r\n".encode("latin-1")


_now = [0, ""]


def _date() -> str:
    """The Date header (RFC 9110 §6.6.1: an origin with a clock sends it), formatted once a second."""
    second = int(time.time())
    if second != _now[0]:
        _now[0], _now[1] = second, formatdate(second, usegmt=True)
    return cast(str, _now[1])


Handler = Callable[[Request], Awaitable[Reply | None]]


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server):
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport
        self.loop: asyncio.AbstractEventLoop
        self.remote = ""
        self.keep_alive = True
        self.paused = False
        self._drained: asyncio.Future | None = None
        self._ready: deque[Request] = deque()
        self._parsing: Request | None = None
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._ignore_input = False  # an oversize body: the rest of the bytes are dropped, the connection closes
        self._websocket = False  # the request being parsed is a WebSocket handshake
        self.tunnel: asyncio.Transport | None = None  # after Request.switch: where the client's bytes go
        self.early = b""  # bytes after a WebSocket handshake, held until the switch
        self.busy = False
        self.last_active = 0.0
        self.last_read = 0.0  # when the client last sent something
        self._in_head = True  # the next bytes are a request's head (or the start of one)
        self._head_bytes = 0  # of the head being read (at most its size: see data_received)
        self._head_size = 0  # of the URL and header fields parsed so far: the head's size, less its framing
        self._head_began = 0.0
        self._queued_bytes = 0  # of the bodies of the requests in _ready
        self._reading_paused = False  # by _queue, for requests waiting for their answers

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()  # once: each call is a getpid() system call (a fork check)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.last_active = time.monotonic()
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self._ignore_input:
            return
        self.last_read = time.monotonic()
        if self._in_head:  # the callbacks reset the count once a head is whole, so it never counts a body's bytes
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._ignore_input = True  # the parser is done: no HTTP request follows on this connection
            self.keep_alive = False
            if self._websocket:  # handed to the handler; nothing more is read until it switches
                self.early = data[exc.args[0] :]
                self.transport.pause_reading()
            # else another upgrade (h2c): ignored (RFC 9110 §7.8), answered in HTTP/1.1
        except httptools.HttpParserError as exc:
            self._refuse(400, f"not an HTTP/1.1 request: {exc}")
            return
        if self._in_head and self._head_bytes > self._server.max_head_bytes:
            self._refuse(431, self._too_big())

    def _too_big(self) -> str:
        return f"the request's line and headers are larger than {self._server.max_head_bytes} bytes"

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: its request's handler (and upstream request) stop
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()

    def pause_writing(self) -> None:
        self.paused = True
        if self.tunnel is not None:  # the client reads slower than the other end sends: that end waits
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._parsing = Request(self, "", "", "1.1")
        self._head_began = self.last_read
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.path_qs += url.decode("latin-1")  # a long URL may come in pieces
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        key, text = name.decode("latin-1"), value.decode("latin-1")
        self._head_size += len(key) + len(text)
        request.raw_headers.append((key, text))
        low = key.lower()
        before = request.headers.get(low)
        request.headers[low] = text if before is None else f"{before}, {text}"

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._in_head, self._head_bytes = False, 0
        if self._ignore_input:  # a request after one refused in the same read: it gets no answer, nor a 100
            return
        if self._head_size > self._server.max_head_bytes:  # a head that came whole in one read: too big all the same
            self._refuse(431, self._too_big())
            return
        request.method = self._parser.get_method().decode("latin-1")
        request.version = self._parser.get_http_version()
        limit = self._server.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            self._oversize(request)
        elif request.headers.get("expect", "").lower() == "100-continue":
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        request._size += len(body)
        if request._size > self._server.max_body_bytes:
            self._oversize(request)
        else:
            request._parts.append(body)

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0  # what follows in this read is the next head: uncounted
        request = self._parsing
        if request is None or self._ignore_input:
            return
        self._parsing = None
        if self._parser.should_upgrade() and request.headers.get("upgrade", "").lower() == "websocket":
            self._websocket = request.upgrade = True  # the parser stops at the upgrade (data_received)
        parts = request._parts
        request.body = parts[0] if len(parts) == 1 else b"".join(parts)
        request._parts = []
        if not self._parser.should_keep_alive():
            self.keep_alive = False
        self._queue(request)

    # the requests' task
    def _queue(self, request: Request) -> None:
        self._ready.append(request)
        self._queued_bytes += len(request.body)
        if not self._reading_paused and self._backlogged():
            self._reading_paused = True
            self.transport.pause_reading()
        if self._task is None:
            self._task = self.loop.create_task(self._serve())
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _backlogged(self) -> bool:
        """More requests wait for their answers than the connection holds: it reads no more until they shrink."""
        return len(self._ready) > MAX_PIPELINED or self._queued_bytes > self._server.max_body_bytes

    def _oversize(self, request: Request) -> None:
        """Hand the request over now, without its body; read nothing more from this connection."""
        request.oversize = True
        request._parts = []
        self._parsing = None
        self._ignore_input = True
        self.keep_alive = False
        self._queue(request)

    def _refuse(self, status: int, why: str) -> None:
        """Bytes that are no request (or not in time): answer if nothing else is pending, then close."""
        if self._ignore_input:  # refused (or switched, or oversize) already
            return
        log.info("%s: %d: %s", self.remote, status, why)
        self._ignore_input = True
        self._parsing = None
        self.keep_alive = False
        if not self._ready and not self.busy:
            body = why.encode()
            self.transport.write(_head(status, [("Content-Type", "text/plain")], f"Content-Length: {len(body)}\r\n",
                                       self) + body)  # fmt: skip
            self._close()

    async def _serve(self) -> None:
        server, ready = self._server, self._ready
        try:
            while True:
                if not ready:
                    if not self.keep_alive or server.closing:
                        break
                    self._waiter = self.loop.create_future()
                    await self._waiter
                    self._waiter = None
                    continue
                request = ready.popleft()
                self._queued_bytes -= len(request.body)
                if self._reading_paused and not self._backlogged():
                    self._reading_paused = False
                    self.transport.resume_reading()
                self.busy = True
                if server.closing:
                    self.keep_alive = False
                await self._answer(request)
                self.busy = False
                self.last_active = time.monotonic()
                if not self.keep_alive:
                    break
        except asyncio.CancelledError:
            pass  # the client left (connection_lost) or the server stopped waiting
        finally:
            self.busy = False
            self._close()

    def _close(self) -> None:
        """Close after the last answer. If the client may still be sending the request it was refused, the rest of
        it is read and dropped for a while first (nginx's lingering close): a close with unread bytes resets the
        connection, and the reset can destroy the answer before the client has read it."""
        transport = self.transport
        if self._ignore_input and self.tunnel is None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()  # the answer is all there is
            transport.resume_reading()  # paused for a WebSocket handshake answered without a switch
            self.loop.call_later(LINGER_S, transport.close)  # or sooner: the client, having read it, closes
        else:
            transport.close()

    async def _answer(self, request: Request) -> None:
        try:
            answer = await self._server.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error answering %s %s", request.method, request.path)
            if request.started:  # part of the answer went out: the client must see it cut, not whole
                request.abort()
                raise asyncio.CancelledError from None
            answer = Reply(500, [("Content-Type", "text/plain")], b"internal error")
        if answer is not None:
            request.reply(answer)
        elif not request.started:
            request.reply(Reply(500, [("Content-Type", "text/plain")], b"no answer"))
        elif not request.finished:
            request.finish()

    @property
    def idle(self) -> bool:
        """No request being answered, waiting, or arriving (a slow upload is not idle)."""
        return not self.busy and not self._ready and self._parsing is None

    def late(self, since: float) -> bool:
        """A request arriving too slowly: its head began before ``since`` and is not whole, or nothing of it
        came after ``since`` (while the server read: a backlog of answers pauses it)."""
        if self._parsing is None or self._ignore_input or self._reading_paused:
            return False
        return self.last_read < since or (self._in_head and self._head_began < since)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the client has read what was written; a client gone cancels, as its leaving does."""
        if self.transport.is_closing():
            raise asyncio.CancelledError
        if self.paused:
            self._drained = self.loop.create_future()
            await self._drained


class Server:
    """Serve ``handler`` on ``host:port`` (port 0: any free one, :attr:`port` says which)."""

    def __init__(
        self,
        handler: Handler,
        max_body_bytes: int,
        keepalive_s: float = 75.0,
        request_timeout_s: float = 60.0,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ):
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.keepalive_s = keepalive_s
        self.request_timeout_s = request_timeout_s
        self.connections: set[_Connection] = set()
        self.closing = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int, backlog: int = 4096) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than ``keepalive_s``, and requests arriving too slowly."""
        timeout = self.request_timeout_s
        while True:
            await asyncio.sleep(min(self.keepalive_s, timeout / 4, 10.0))
            now = time.monotonic()
            stale = now - self.keepalive_s
            for connection in list(self.connections):
                if connection.idle and connection.last_active < stale:
                    connection.transport.close()
                elif connection.late(now - timeout):
                    connection._refuse(408, f"the request did not arrive within {timeout:g} s")

    async def close(self, timeout_s: float) -> None:
        """Stop listening, close idle connections, give answers in progress up to ``timeout_s``, then cut."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout_s
        while True:
            for connection in list(self.connections):
                if connection.idle:
                    connection.transport.close()
            if not self.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
