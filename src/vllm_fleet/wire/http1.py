"""The HTTP/1.1 client of the load generator and of the router's upstream requests: keep-alive
connections, one write per request.

Why not aiohttp here (it still moves the weights' bytes, and the router's health checks): on its send path a
request is built (~0.1 ms) and its body written from a task of its own, one
event-loop pass after the call; at 500 req/s that put the client's own send lag
at p99 1.2-1.8 ms. Here a request is a single ``transport.write`` of bytes
built ahead (the head's fixed part once per client), done in the caller's
step, so the moment the bytes left is the moment after the call. Responses are
parsed by httptools (llhttp, the parser uvicorn uses): status, headers,
Content-Length, chunked and close-delimited bodies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar, cast
from urllib.parse import urlsplit

import httptools

P = TypeVar("P", bound=asyncio.Protocol)
MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers: past it, not an answer to wait for


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the response was complete."""


class MalformedResponse(ValueError):
    """The bytes the server sent are not HTTP/1.1."""


class Response:
    """One response, its body read as it arrives; :meth:`release` when done (a ``finally``)."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_headers_done",
        "_sink",
        "_waiter",
        "complete",
        "headers",
        "raw_headers",
        "sent_at",
        "status",
    )

    def __init__(self, connection: _Connection, sent_at: float):
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-cased names (the last of a repeated one)
        self.raw_headers: list[tuple[str, str]] = []  # as the server sent them: order, spelling, repeats
        self.sent_at = sent_at  # perf_counter just after the request's bytes were handed to the socket
        self.complete = False
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._headers_done = False
        self._sink: Callable[[bytes], bool] | None = None

    async def ready(self) -> Response:
        """Wait for the status line and headers; on failure the response is released and the error raised."""
        try:
            while not self._headers_done:
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:
            self.release()
            raise
        return self

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in network-sized pieces."""
        while chunk := await self.next_chunk():
            yield chunk

    async def next_chunk(self) -> bytes:
        """What of the body arrived since the last call (waiting for some); b"" once it is complete."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                return data
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait()

    async def pipe(self, sink: Callable[[bytes], bool]) -> bool:
        """Hand the rest of the body to ``sink`` as it arrives, in the connection's own callback (no task
        switch per piece: what a proxy forwarding a token stream spends most on otherwise), what one read
        brought in one call (one write onward, however many chunks it held). Returns True once
        the body is complete; False as soon as ``sink`` returns False (its reader is slow): reading stops
        until the caller, having waited for its reader, pipes again. Raises as :meth:`chunks` does."""
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            if not sink(data):
                return False
        self._sink = sink
        self._connection.transport.resume_reading()
        try:
            while not self.complete:
                if self._error is not None:
                    raise self._error
                if self._sink is None:  # paused by the sink
                    return False
                await self._wait()
        finally:
            self._sink = None
        return True

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Give the connection back for the next request, or close it if this response did not end cleanly."""
        self._connection.release(self)

    async def _wait(self) -> None:
        self._waiter = self._connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: carries one request at a time, parses its response."""

    def __init__(self, client: Client):
        self._client = client
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport  # set by connection_made, before create_connection hands us out
        self.loop: asyncio.AbstractEventLoop
        self.response: Response | None = None
        # The parser callbacks' target: self.response whenever they run (data_received feeds only with one).
        self._parsing: Response
        self._until_close = False  # a body with neither length nor chunking ends when the connection does
        self.keep_alive = False  # read while the message completes: llhttp resets it right after
        self._head_only = False  # the request was a HEAD
        self._interim = False  # parsing a 1xx answer
        self._head_bytes = 0  # read of the response before its head was whole (the parser holds a header whole)

    def send(self, data: bytes, head_only: bool = False) -> Response:
        self.transport.write(data)  # no answer can arrive before this step yields to the loop
        self.response = self._parsing = Response(self, time.perf_counter())
        self._until_close = self.keep_alive = False
        self._head_only = head_only
        self._head_bytes = 0
        return self.response

    def release(self, response: Response) -> None:
        if response is not self.response:
            return
        self.response = None
        if response.complete and self._client.keep(self):
            return
        self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection makes a stream transport
        # Looked up once: asyncio.get_running_loop() is a getpid() system call each time (a fork check).
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.complete:  # bytes nobody asked for: the connection cannot be trusted again
            self.transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(MalformedResponse(f"not an HTTP/1.1 response: {exc}"))
            self.transport.close()
            return
        if not response._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                response._fail(MalformedResponse(f"a response head larger than {MAX_HEAD_BYTES} bytes"))
                self.transport.close()
                return
        sink = response._sink
        if sink is not None and response._chunks:
            # What this read brought goes on in one piece: one write to the client for the events of a read.
            chunks = response._chunks
            piece = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            if not sink(piece):
                response._sink = None
                self.transport.pause_reading()
                response._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.forget(self)
        response = self.response
        if response is None:
            return
        if self._until_close and exc is None:
            response.complete = True
            response._wake()
            return
        what = "while sending its response" if response._headers_done else "before answering"
        response._fail(exc or ConnectionClosed(f"the server closed the connection {what}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._parsing.complete:  # a second answer to one request, in the same read: nobody's, and the
            self._parsing = Response(self, 0.0)  # connection is spoiled (what follows is parsed into nowhere)
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        self._parsing.raw_headers.append((key, text))
        self._parsing.headers[key.lower()] = text

    def on_headers_complete(self) -> None:
        response = self._parsing
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            response.headers.clear()
            response.raw_headers.clear()
            self._interim = True
            return
        response.status = status
        response._headers_done = True
        headers = response.headers
        self._until_close = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        if self._head_only:  # an answer to HEAD has no body, whatever its head says; the parser cannot be told:
            response.complete = True  # complete now, and the connection is not reused (keep_alive stays False)
            self._until_close = False
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self._parsing
        response._chunks.append(body)
        if response._sink is None:  # piped ones go on at the end of the read (data_received)
            response._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._until_close = False
        self.keep_alive = self._parser.should_keep_alive()
        response = self._parsing
        response.complete = True
        response._wake()


class Client:
    """Requests to one origin (``http://`` or ``https://``) over a pool of keep-alive connections."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, connect_timeout_s: float | None = None):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        default_port = 443 if url.scheme == "https" else 80
        self._host = url.hostname
        self._port = url.port or default_port
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host = url.hostname if self._port == default_port else f"{url.hostname}:{self._port}"
        lines = [f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._fixed_head = "".join(f"{line}\r\n" for line in lines).encode("latin-1")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._connect_timeout_s = connect_timeout_s

    def head(self, method: str, path: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        """The request's head (``headers`` after Host): build it once per distinct request and reuse it."""
        first = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1")
        more = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
        return first + self._fixed_head + more + f"Content-Length: {len(body)}\r\n\r\n".encode()

    def send_now(self, method: str, path: str, body: bytes = b"", head: bytes | None = None) -> Response | None:
        """Send on an idle keep-alive connection within the caller's step; None when none is idle."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.transport.is_closing():
                return connection.send(self._bytes(method, path, body, head), method == "HEAD")
        return None

    async def request(self, method: str, path: str, body: bytes = b"", head: bytes | None = None) -> Response:
        """Send (on a new connection when none is idle), then wait for the response's status and headers.

        A kept-alive connection the server closes without a byte of answer is the race every keep-alive client
        meets (uvicorn, so vLLM, closes one idle for 5 s; the request crossed the close): the request goes
        again, once, on a new connection. A new connection failing so is the server's failure: it raises."""
        response = self.send_now(method, path, body, head)
        if response is not None:
            try:
                return await response.ready()
            except ConnectionError:
                if response._connection._head_bytes:  # part of an answer came: the server did read it
                    raise
        connection = await self.connect(lambda: _Connection(self))
        self._open.add(connection)
        response = connection.send(self._bytes(method, path, body, head), method == "HEAD")
        return await response.ready()

    async def connect(self, protocol: Callable[[], P]) -> P:
        """A new connection to the origin (within the connect timeout), run by ``protocol()``."""
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(protocol, self._host, self._port, ssl=self._ssl)
        _, connected = await asyncio.wait_for(connecting, self._connect_timeout_s)
        return connected

    def _bytes(self, method: str, path: str, body: bytes, head: bytes | None) -> bytes:
        return (head or self.head(method, path, body)) + body

    def keep(self, connection: _Connection) -> bool:
        if connection.transport.is_closing() or not connection.keep_alive:
            return False
        self._idle.append(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        for connection in list(self._open):
            connection.transport.close()
        self._idle.clear()

    def close_idle(self) -> None:
        """Close the connections no request uses (those in use close once their response is done)."""
        for connection in self._idle:
            connection.transport.close()
        self._idle.clear()
