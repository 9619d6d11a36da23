"""The router's HTTP/1.1 server (wire/http1_server.py) over real loopback sockets: the bytes it sends for
whole and streamed answers, keep-alive, HTTP/1.0, pipelining, 100-continue, body limits, bad input, a
client that leaves or reads slowly, idle connections and a graceful close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime

import aiohttp
import pytest

from vllm_fleet.wire.http1_server import Reply, Request, Server

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TEST_S = 20.0  # no test here waits longer than this on a socket
Handler = Callable[[Request], Awaitable[Reply | None]]
_DATE = re.compile(
    rb"\r\nDate: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    rb"\d{4} \d\d:\d\d:\d\d GMT\r\n"
)


def masked(raw: bytes) -> bytes:
    """``raw`` with every Date header's value replaced by ``<date>``; each one must be in RFC 9110 form."""
    out, found = _DATE.subn(b"\r\nDate: <date>\r\n", raw)
    assert found == raw.count(b"\r\nDate: "), raw
    return out


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_S))


class Client:
    """A raw connection: bytes out, answers read back by their own framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, head_only: bool = False) -> bytes:
        """One answer as sent, head and body (a HEAD answer: its head only)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        if head_only:
            return head
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
        if b"content-length" in fields:
            return head + await self.reader.readexactly(int(fields[b"content-length"]))
        if fields.get(b"transfer-encoding") == b"chunked":
            framed = b""
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line, 16)
                framed += size_line + await self.reader.readexactly(size + 2)
                if size == 0:
                    return head + framed
        return head + await self.rest()

    async def rest(self) -> bytes:
        """Everything until the server closes the connection (a reset counts as a close)."""
        try:
            return await self.reader.read()
        except ConnectionError:
            return b""

    async def closed(self) -> bool:
        """The server closed the connection with nothing more sent."""
        return await self.rest() == b""


class Harness:
    """A started server and the raw clients a test opened on it (closed with it)."""

    def __init__(self, server: Server):
        self.server = server
        self.clients: list[Client] = []

    @property
    def port(self) -> int:
        return self.server.port

    async def connect(self, rcvbuf: int | None = None) -> Client:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        else:  # a small receive window: the server's writes back up sooner
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (HOST, self.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        client = Client(reader, writer)
        self.clients.append(client)
        return client


@asynccontextmanager
async def serving(handler: Handler, max_body_bytes: int = 1 << 20, keepalive_s: float = 75.0, **settings: float
                  ) -> AsyncIterator[Harness]:  # fmt: skip
    server = Server(handler, max_body_bytes, keepalive_s, **settings)  # type: ignore[arg-type]
    await server.start(HOST, 0)
    harness = Harness(server)
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.writer.close()
        await server.close(1.0)


def get(path: str = "/", extra: bytes = b"", method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    """A bodiless request's bytes; ``extra``: more header lines, each ending in CRLF."""
    return b"%s %s HTTP/%s\r\nHost: test\r\n%s\r\n" % (method, path.encode(), version, extra)


def ok_head(length: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\nDate: <date>\r\n\r\n" % (extra, length)


async def echo_path(request: Request) -> Reply:
    return Reply(200, [("Content-Type", "text/plain")], request.path_qs.encode())


def echo_answer(path: str, close: bool = False) -> bytes:
    shut = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%sDate: <date>\r\n\r\n%s" % (
        len(path),
        shut,
        path.encode(),
    )


def recording() -> tuple[list[Request], Callable[[Request], Awaitable[Reply]]]:
    """A handler answering 200 with nothing, and the requests it was called with (in order)."""
    called: list[Request] = []

    async def handler(request: Request) -> Reply:
        called.append(request)
        return Reply(200, [], b"")

    return called, handler


def long_handler() -> tuple[Callable[[Request], Awaitable[Reply]], asyncio.Event, asyncio.Event]:
    """A handler that runs until cancelled, and the events it sets when it starts and when it is cancelled."""
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Reply:
        entered.set()
        try:
            await asyncio.sleep(TEST_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Reply(200)

    return handler, entered, cancelled


# --- requests as the handler sees them -------------------------------------------------------------------


def test_a_get_reaches_the_handler_whole_and_its_reply_goes_out_exactly() -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Reply:
        seen.append(request)
        return Reply(200, [("Content-Type", "text/plain"), ("X-Multi", "1"), ("X-Multi", "2")], b"hello")

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(
                b"GET /v1/models?x=1&y=a%20b HTTP/1.1\r\nHost: test\r\nX-Token: A\r\nAccept: */*\r\nx-token: B\r\n\r\n"
            )
            assert masked(await client.answer()) == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Multi: 1\r\nX-Multi: 2\r\n"
                b"Content-Length: 5\r\nDate: <date>\r\n\r\nhello"
            )

    run(body)
    [request] = seen
    assert (request.method, request.path, request.query, request.path_qs) == (
        "GET",
        "/v1/models",
        "x=1&y=a%20b",
        "/v1/models?x=1&y=a%20b",
    )
    assert request.version == "1.1" and request.remote == HOST and request.body == b""
    assert request.headers == {"host": "test", "x-token": "A, B", "accept": "*/*"}
    assert request.raw_headers == [("Host", "test"), ("X-Token", "A"), ("Accept", "*/*"), ("x-token", "B")]
    assert request.oversize is False and request.started and request.finished


@pytest.mark.parametrize(
    ("framing", "pieces"),
    [
        (b"Content-Length: 11\r\n", [b"hello", b" world"]),
        (b"Transfer-Encoding: chunked\r\n", [b"5\r\nhel", b"lo\r\n6\r\n world\r\n", b"0\r\n\r\n"]),
    ],
    ids=["content-length", "chunked"],
)
def test_a_post_body_sent_in_pieces_reaches_the_handler_whole(framing: bytes, pieces: list[bytes]) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Reply:
        seen.append(request)
        return Reply.json({"got": request.body.decode()}, status=201)

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(b"POST /v1/completions?stream=1 HTTP/1.1\r\nHost: test\r\n" + framing + b"\r\n")
            for piece in pieces:
                await asyncio.sleep(0.02)
                client.send(piece)
            assert masked(await client.answer()) == (
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 22\r\n"
                b'Date: <date>\r\n\r\n{"got": "hello world"}'
            )

    run(body)
    [request] = seen
    assert (request.method, request.path, request.query) == ("POST", "/v1/completions", "stream=1")
    assert request.body == b"hello world" and not request.oversize


# --- keep-alive and HTTP/1.0 ------------------------------------------------------------------------------


def test_two_requests_on_one_keep_alive_connection() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            client = await harness.connect()
            for path in ("/one", "/two?x=2"):
                client.send(get(path))
                assert masked(await client.answer()) == echo_answer(path)
            assert len(harness.server.connections) == 1

    run(body)


def test_a_real_client_reuses_the_connection() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for path in ("/a", "/b", "/c"):
                    async with session.get(f"http://{HOST}:{harness.port}{path}") as answer:
                        assert (answer.status, answer.reason, await answer.read()) == (200, "OK", path.encode())
                        assert "Connection" not in answer.headers
                assert len(harness.server.connections) == 1

    run(body)


def test_connection_close_closes_after_the_answer() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            client = await harness.connect()
            client.send(get("/bye", b"Connection: close\r\n"))
            assert masked(await client.rest()) == echo_answer("/bye", close=True)

    run(body)


def test_http_1_0_without_keep_alive_closes_after_the_answer() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Reply:
        seen.append(request.version)
        return await echo_path(request)

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/old", version=b"1.0"))
            assert masked(await client.rest()) == echo_answer("/old", close=True)

    run(body)
    assert seen == ["1.0"]


def test_http_1_0_with_keep_alive_stays_open() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            client = await harness.connect()
            for path in ("/a", "/b"):
                client.send(get(path, b"Connection: keep-alive\r\n", version=b"1.0"))
                assert masked(await client.answer()) == echo_answer(path)

    run(body)


def test_http_1_0_streamed_answer_has_no_chunked_framing_and_ends_with_the_connection() -> None:
    async def handler(request: Request) -> None:
        request.start(200, [("Content-Type", "text/plain")])
        request.write(b"abc")
        await asyncio.sleep(0.01)
        request.write(b"def")
        request.finish()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/stream", b"Connection: keep-alive\r\n", version=b"1.0"))
            assert masked(await client.rest()) == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nDate: <date>\r\n\r\nabcdef"
            )

    run(body)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_answer_passed_on_keeps_its_origins_date_and_gets_no_second_one(streamed: bool) -> None:
    """Date is a singleton field (RFC 9110 §6.6.1): a proxy keeps the origin's, as the origin spelled it."""
    origin = [("date", "Thu, 03 Dec 2026 14:10:27 GMT"), ("server", "uvicorn")]

    async def handler(request: Request) -> Reply | None:
        if not streamed:
            return Reply(200, origin, b"ok")
        request.start(200, origin, length=2)
        request.write(b"ok")
        request.finish()
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/"))
            assert await client.answer() == (
                b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 14:10:27 GMT\r\nserver: uvicorn\r\n"
                b"Content-Length: 2\r\n\r\nok"
            )

    run(body)


# --- pipelining and 100-continue --------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order() -> None:
    order: list[str] = []

    async def handler(request: Request) -> Reply:
        order.append(request.path)
        if request.path == "/slow":
            await asyncio.sleep(0.2)  # a later, faster request must still wait its turn
        return Reply(200, [("Content-Type", "text/plain")], request.path.encode() + request.body)

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(
                get("/slow") + b"POST /post HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\n+xy" + get("/fast")
            )
            answers = [masked(await client.answer()) for _ in range(3)]
            assert answers == [echo_answer("/slow"), echo_answer("/post+xy"), echo_answer("/fast")]

    run(body)
    assert order == ["/slow", "/post", "/fast"]


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent() -> None:
    seen: list[bytes] = []

    async def handler(request: Request) -> Reply:
        seen.append(request.body)
        return Reply(200, [], b"thanks")

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert await client.reader.readexactly(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert seen == []
            client.send(b"12345")
            assert masked(await client.answer()) == ok_head(6) + b"thanks"

    run(body)
    assert seen == [b"12345"]


# --- body limits ------------------------------------------------------------------------------------------


async def refuse_oversize(request: Request) -> Reply:
    if request.oversize:
        return Reply(413, [("Content-Type", "text/plain")], b"too big:%d" % len(request.body))
    return Reply(200, [], request.body)


TOO_BIG = b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
TOO_BIG += b"Connection: close\r\nDate: <date>\r\n\r\ntoo big:0"


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "expect-100"])
def test_a_content_length_past_the_limit_is_handed_over_at_once_and_the_connection_closes(expect: bytes) -> None:
    async def body() -> None:
        async with serving(refuse_oversize, max_body_bytes=10) as harness:
            client = await harness.connect()
            client.send(b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n" + expect + b"\r\n")
            # no body sent at all: the answer comes anyway, with no 100 Continue before it
            assert masked(await client.rest()) == TOO_BIG

    run(body)


def test_a_chunked_body_past_the_limit_is_handed_over_at_once_and_the_connection_closes() -> None:
    async def body() -> None:
        async with serving(refuse_oversize, max_body_bytes=10) as harness:
            client = await harness.connect()
            client.send(b"POST /big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")
            await asyncio.sleep(0.05)
            client.send(b"6\r\nfghijk\r\n")  # 11 bytes: one past; the body never ends
            assert masked(await client.rest()) == TOO_BIG

    run(body)


def test_a_client_still_uploading_past_the_limit_reads_the_413_and_not_a_reset() -> None:
    async def body() -> None:
        async with serving(refuse_oversize, max_body_bytes=10) as harness:
            client = await harness.connect()
            size = 16 * 1024 * 1024
            client.send(b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % size)
            with contextlib.suppress(ConnectionError):
                for _ in range(size // 65536):  # as curl does: the upload goes on while the answer waits unread
                    client.send(b"u" * 65536)
                    await client.writer.drain()
            assert masked(await client.rest()) == TOO_BIG

    run(body)


@pytest.mark.parametrize(
    "sent",
    [
        b"Content-Length: 10\r\n\r\n0123456789",
        b"Transfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_at_the_limit_is_accepted(sent: bytes) -> None:
    async def body() -> None:
        async with serving(refuse_oversize, max_body_bytes=10) as harness:
            client = await harness.connect()
            client.send(b"POST /fits HTTP/1.1\r\nHost: test\r\n" + sent)
            assert masked(await client.answer()) == ok_head(10) + b"0123456789"
            client.send(get("/again"))  # the connection stays open
            assert masked(await client.answer()) == ok_head(0)

    run(body)


# --- bad input --------------------------------------------------------------------------------------------


def refused(raw: bytes, status: bytes) -> bytes:
    """The reason the server gave in a refusal with ``status`` (its head checked whole)."""
    head, _, text = masked(raw).partition(b"\r\n\r\n")
    assert head == (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\nDate: <date>"
        % (status, len(text))
    ), raw
    return text


@pytest.mark.parametrize(
    "sent",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-header", "bad-length", "bad-chunk"],
)
def test_malformed_bytes_get_a_400_and_a_close(sent: bytes) -> None:
    called, handler = recording()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(sent)
            text = refused(await client.rest(), b"400 Bad Request")
            assert text.startswith(b"not an HTTP/1.1 request: "), text

    run(body)
    assert called == []


@pytest.mark.parametrize(
    "opening",
    [b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ", b"GET /", b"GET / HTTP/1.1\r\nHost: test\r\n"],
    ids=["one-endless-header", "endless-url", "endless-headers"],
)
def test_an_endless_head_gets_a_431_and_a_close_and_the_server_goes_on(opening: bytes) -> None:
    called, handler = recording()
    piece = b"x-h: v\r\n" * 1024 if opening.endswith(b"\r\n") else b"a" * 8192

    async def body() -> None:
        async with serving(handler, max_head_bytes=64 * 1024) as harness:
            client = await harness.connect()
            client.send(opening)
            with contextlib.suppress(ConnectionError):  # the server may close while we still send
                for _ in range(16 * 1024 * 1024 // len(piece)):  # 16 MiB: without the limit, held whole
                    client.send(piece)
                    await client.writer.drain()
            text = refused(await client.rest(), b"431 Request Header Fields Too Large")
            assert text == b"the request's line and headers are larger than 65536 bytes"
            again = await harness.connect()
            again.send(get("/next"))
            assert masked(await again.answer()) == ok_head(0)

    run(body)
    assert [r.path for r in called] == ["/next"]


def test_a_head_over_the_limit_that_comes_whole_in_one_read_gets_the_431_too() -> None:
    called, handler = recording()
    big = get("/big", b"X-Big: " + b"b" * (70 * 1024) + b"\r\n")

    async def body() -> None:
        async with serving(handler, max_head_bytes=64 * 1024) as harness:
            client = await harness.connect()
            client.send(big + get("/after", b"Expect: 100-continue\r\n"))  # one write: the server reads it at once
            text = refused(await client.rest(), b"431 Request Header Fields Too Large")
            assert text == b"the request's line and headers are larger than 65536 bytes"

    run(body)
    assert called == []  # nor the request after it, pipelined behind it


def test_heads_below_the_limit_pass_though_many_come_in_one_read() -> None:
    called, handler = recording()
    near = b"X-Near: " + b"n" * (60 * 1024) + b"\r\n"  # one head just under the limit
    many = get("/many", b"X-Pad: " + b"p" * 2048 + b"\r\n") * 40  # 80 KiB of small heads, sent at once

    async def body() -> None:
        async with serving(handler, max_head_bytes=64 * 1024) as harness:
            client = await harness.connect()
            client.send(get("/near", near) + many)
            answers = [masked(await client.answer()) for _ in range(41)]
            assert answers == [ok_head(0)] * 41

    run(body)
    assert [r.path for r in called] == ["/near"] + ["/many"] * 40


@pytest.mark.parametrize(
    ("sent", "trickle"),
    [
        (b"GET / HTTP/1.1\r\nHost: test\r\n", b"X: y\r\n"),  # a head that never ends, sent a line at a time
        (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhalf.", b""),  # a body that stops
    ],
    ids=["slow-head", "stalled-body"],
)
def test_a_request_that_does_not_arrive_in_time_gets_a_408_and_a_close(sent: bytes, trickle: bytes) -> None:
    called, handler = recording()

    async def body() -> None:
        async with serving(handler, request_timeout_s=0.4) as harness:
            client = await harness.connect()
            client.send(sent)
            started = time.monotonic()

            async def send_slowly() -> None:
                with contextlib.suppress(ConnectionError):
                    while trickle:
                        await asyncio.sleep(0.05)
                        client.send(trickle)
                        await client.writer.drain()

            sending = asyncio.create_task(send_slowly())
            raw = await client.rest()  # the answer, then the server's end of the connection
            sending.cancel()
            text = refused(raw, b"408 Request Timeout")
            assert text == b"the request did not arrive within 0.4 s"
            assert time.monotonic() - started < 2.5

    run(body)
    assert called == []


def test_a_body_that_keeps_coming_is_not_cut_by_the_request_timeout() -> None:
    async def body() -> None:
        async with serving(refuse_oversize, request_timeout_s=0.4) as harness:
            client = await harness.connect()
            client.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 15\r\n\r\n")
            for _ in range(15):  # 1.5 s in all, a byte every 0.1 s
                await asyncio.sleep(0.1)
                client.send(b"u")
            assert masked(await client.answer()) == ok_head(15) + b"u" * 15

    run(body)


def test_pipelined_bodies_past_one_bodys_limit_wait_unread_until_answers_go_out() -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(request: Request) -> Reply:
        seen.append(len(request.body))
        await release.wait()
        return Reply(200, [], b"")

    post = b"POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % (700 * 1024) + b"b" * (700 * 1024)

    async def body() -> None:
        async with serving(handler, max_body_bytes=1 << 20) as harness:
            client = await harness.connect()
            client.send(post * 4)  # the first is answered slowly; 2 more waiting pass one body's limit
            (connection,) = harness.server.connections
            deadline = time.monotonic() + 5
            while connection.transport.is_reading() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not connection.transport.is_reading()
            assert seen == [700 * 1024]
            release.set()
            answers = [masked(await client.answer()) for _ in range(4)]
            assert answers == [ok_head(0)] * 4

    run(body)
    assert seen == [700 * 1024] * 4


def test_a_websocket_handshake_reaches_the_handler_marked_and_a_plain_answer_to_it_closes_the_connection() -> None:
    called, handler = recording()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(
                b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            raw = masked(await client.rest())  # read to the end: the connection closed after the answer
            assert raw == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nDate: <date>\r\n\r\n", raw
            assert [(r.path, r.upgrade) for r in called] == [("/ws", True)]

    run(body)


def test_an_h2c_upgrade_is_ignored_and_answered_in_http_1_1_then_closed() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            client = await harness.connect()
            client.send(
                get(
                    "/v1/models",
                    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
                )
            )
            assert masked(await client.rest()) == echo_answer("/v1/models", close=True)  # RFC 9110 7.8: MAY ignore

    run(body)


# --- streamed answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("finish", [True, False], ids=["finished", "returned"])
def test_a_streamed_answer_without_a_length_is_chunked_and_goes_out_as_written(finish: bool) -> None:
    go_on = asyncio.Event()

    async def handler(request: Request) -> Reply | None:
        if request.path == "/next":
            return Reply(200)
        request.start(200, [("Content-Type", "text/event-stream")])
        request.write(b"data: 1\n\n")
        await go_on.wait()  # the first chunk is out before the handler goes on
        request.write(b"")  # nothing: no empty chunk (that would end the body)
        request.write(b"x" * 20)
        if finish:
            request.finish()
            request.finish()  # once only
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/sse"))
            head = await client.answer(head_only=True)
            assert masked(head) == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                b"Date: <date>\r\n\r\n"
            )
            assert await client.reader.readexactly(14) == b"9\r\ndata: 1\n\n\r\n"
            go_on.set()
            assert await client.reader.readexactly(31) == b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"
            client.send(get("/next"))  # the connection stays open
            assert masked(await client.answer()) == ok_head(0)

    run(body)


def test_a_real_client_reads_a_chunked_stream() -> None:
    async def handler(request: Request) -> None:
        request.start(200, [("Content-Type", "text/event-stream"), ("X-Id", "7")])
        for i in range(5):
            request.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.01)
        request.finish()

    async def body() -> None:
        async with (
            serving(handler) as harness,
            aiohttp.ClientSession() as session,
            session.post(f"http://{HOST}:{harness.port}/v1/chat/completions", data=b"{}") as answer,
        ):
            assert answer.status == 200
            assert answer.headers["Transfer-Encoding"] == "chunked" and answer.headers["X-Id"] == "7"
            assert "Content-Length" not in answer.headers
            assert await answer.read() == b"".join(b"data: %d\n\n" % i for i in range(5))

    run(body)


def test_a_streamed_answer_with_a_length_is_not_chunked() -> None:
    async def handler(request: Request) -> Reply | None:
        if request.path == "/next":
            return Reply(200)
        request.start(200, [("Content-Type", "text/plain")], length=6)
        request.write(b"abc")
        await asyncio.sleep(0.01)
        request.write(b"def")
        request.finish()
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/sized"))
            assert masked(await client.answer()) == ok_head(6, b"Content-Type: text/plain\r\n") + b"abcdef"
            client.send(get("/next"))
            assert masked(await client.answer()) == ok_head(0)

    run(body)


@pytest.mark.parametrize(
    ("streamed", "head"),
    [
        (False, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: <date>\r\n\r\n"),
        (True, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nDate: <date>\r\n\r\n"),
    ],
    ids=["reply", "streamed"],
)
def test_head_gets_the_head_without_a_body(streamed: bool, head: bytes) -> None:
    async def handler(request: Request) -> Reply | None:
        if not streamed or request.method != "HEAD":
            return Reply(200, [("Content-Type", "text/plain")], b"hello")
        request.start(200, [("Content-Type", "text/plain")])
        request.write(b"hello")
        request.finish()
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/h", method=b"HEAD"))
            assert masked(await client.answer(head_only=True)) == head
            client.send(get("/h"))  # had any body byte followed the head, this answer would not start right
            assert masked(await client.answer()) == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: <date>\r\n\r\nhello"
            )

    run(body)


@pytest.mark.parametrize(("status", "reason"), [(204, b"No Content"), (304, b"Not Modified")])
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "reply"])
def test_a_204_or_304_carries_no_body_framing(status: int, reason: bytes, streamed: bool) -> None:
    async def handler(request: Request) -> Reply | None:
        if request.path == "/next":
            return Reply(200)
        if not streamed:
            return Reply(status, [("ETag", '"v1"')], b"dropped")
        request.start(status, [("ETag", '"v1"')])  # no length: still no chunked framing (RFC 9112 §6.3)
        request.write(b"dropped")
        request.finish()
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/empty") + get("/next"))
            head = await client.answer(head_only=True)
            assert masked(head) == b'HTTP/1.1 %d %s\r\nETag: "v1"\r\nDate: <date>\r\n\r\n' % (status, reason)
            assert masked(await client.answer()) == ok_head(0)  # nothing came between the two answers

    run(body)


# --- handler failures and clients that leave ----------------------------------------------------------------


def test_a_handler_raising_before_it_starts_gets_a_500_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Reply | None:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        if request.path == "/nothing":
            return None  # neither a reply nor a started stream
        return Reply(200)

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/boom"))
            assert masked(await client.answer()) == (
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
                b"Date: <date>\r\n\r\ninternal error"
            )
            client.send(get("/nothing"))
            assert masked(await client.answer()) == (
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
                b"Date: <date>\r\n\r\nno answer"
            )
            client.send(get("/fine"))
            assert masked(await client.answer()) == ok_head(0)

    with caplog.at_level(logging.ERROR, logger="vllm_fleet.wire.http1_server"):
        run(body)
    [record] = [r for r in caplog.records if r.name == "vllm_fleet.wire.http1_server"]
    assert record.getMessage() == "error answering GET /boom" and record.exc_info is not None


@pytest.mark.parametrize("length", [None, 10], ids=["chunked", "sized"])
def test_a_handler_raising_after_it_starts_cuts_the_connection(length: int | None) -> None:
    async def handler(request: Request) -> None:
        request.start(200, [("Content-Type", "text/plain")], length)
        request.write(b"part")
        await asyncio.sleep(0.01)
        raise RuntimeError("kaput mid-answer")

    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: 10"
    sent = b"4\r\npart\r\n" if length is None else b"part"  # and no terminating chunk / no 6 more bytes

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/cut"))
            assert masked(await client.rest()) == (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n%s\r\nDate: <date>\r\n\r\n%s" % (framing, sent)
            )

    run(body)


def test_a_real_client_sees_an_answer_cut_after_its_start_as_an_error() -> None:
    async def handler(request: Request) -> None:
        request.start(200, [("Content-Type", "text/plain")])
        request.write(b"part")
        raise RuntimeError("kaput mid-answer")

    async def body() -> None:
        async with (
            serving(handler) as harness,
            aiohttp.ClientSession() as session,
            session.get(f"http://{HOST}:{harness.port}/cut") as answer,
        ):
            assert answer.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await answer.read()

    run(body)


def test_a_client_that_disconnects_cancels_its_handler() -> None:
    handler, entered, cancelled = long_handler()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/long"))
            await entered.wait()
            client.writer.close()
            await asyncio.wait_for(cancelled.wait(), 5)
            await asyncio.sleep(0.05)
            assert harness.server.connections == set()

    run(body)


def test_backpressure_pauses_the_handler_until_the_client_reads() -> None:
    block = b"z" * 65536
    written: list[int] = []
    paused_then: list[bool] = []  # request.paused when the writing stopped, then after drain()
    paused, drained = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> None:
        request.start(200, [("Content-Type", "application/octet-stream")])
        while not request.paused and len(written) < 1024:  # 64 MiB at most
            request.write(block)
            written.append(len(block))
        paused_then.append(request.paused)
        paused.set()
        await request.drain()
        paused_then.append(request.paused)
        drained.set()
        request.write(b"end")
        request.finish()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect(rcvbuf=8192)
            client.send(get("/bulk"))
            await asyncio.wait_for(paused.wait(), 10)
            assert paused_then == [True]
            await asyncio.sleep(0.3)
            assert not drained.is_set()  # the client has read nothing: drain() waits
            raw = await client.answer()
            assert drained.is_set() and paused_then == [True, False]
            head, _, framed = raw.partition(b"\r\n\r\n")
            assert b"\r\nTransfer-Encoding: chunked\r\n" in head + b"\r\n"
            data, rest = b"", framed
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                data, rest = data + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
            assert rest == b"" and data == block * len(written) + b"end"

    run(body)


# --- idle connections and closing -------------------------------------------------------------------------


def test_idle_keep_alive_connections_close_after_keepalive_s() -> None:
    async def handler(request: Request) -> Reply:
        if request.path == "/slow":
            await asyncio.sleep(0.8)  # busy past keepalive_s: not idle, not closed
        return Reply(200)

    async def body() -> None:
        async with serving(handler, keepalive_s=0.3) as harness:
            client = await harness.connect()
            client.send(get("/slow"))
            assert masked(await client.answer()) == ok_head(0)
            answered = time.monotonic()
            assert await asyncio.wait_for(client.closed(), 3)
            assert 0.2 <= time.monotonic() - answered < 2.5
            assert harness.server.connections == set()

    run(body)


def test_a_request_still_arriving_is_not_closed_as_idle() -> None:
    async def body() -> None:
        async with serving(refuse_oversize, keepalive_s=0.3) as harness:
            client = await harness.connect()
            client.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 15\r\n\r\n")
            for _ in range(15):  # a byte every 0.1 s: never idle for keepalive_s
                await asyncio.sleep(0.1)
                client.send(b"u")
            try:
                raw = masked(await asyncio.wait_for(client.answer(), 3))
            except (asyncio.IncompleteReadError, ConnectionError):  # cut: reset, or a broken pipe on write
                raw = b""
            assert raw == ok_head(15) + b"u" * 15

    run(body)


def test_close_stops_accepting_and_closes_idle_connections_at_once() -> None:
    async def body() -> None:
        async with serving(echo_path) as harness:
            idle = await harness.connect()
            idle.send(get("/idle"))
            assert masked(await idle.answer()) == echo_answer("/idle")
            began = time.monotonic()
            await harness.server.close(5.0)
            assert time.monotonic() - began < 2.0
            assert await asyncio.wait_for(idle.closed(), 1)
            with pytest.raises(OSError):
                await asyncio.open_connection(HOST, harness.port)

    run(body)


def test_close_lets_an_answer_in_progress_finish_within_the_timeout() -> None:
    entered = asyncio.Event()

    async def handler(request: Request) -> Reply:
        if request.path == "/slow":
            entered.set()
            await asyncio.sleep(1.0)
        return Reply(200, [], b"done")

    async def body() -> None:
        async with serving(handler) as harness:
            idle, busy = await harness.connect(), await harness.connect()
            idle.send(get("/idle"))
            assert masked(await idle.answer()) == ok_head(4) + b"done"
            busy.send(get("/slow"))
            await entered.wait()
            began = time.monotonic()
            closing = asyncio.create_task(harness.server.close(5.0))
            assert await asyncio.wait_for(idle.closed(), 0.6)  # at once, while the slow answer goes on
            assert not closing.done()
            assert masked(await busy.rest()) == ok_head(4) + b"done"  # whole, then the connection ends
            await closing
            assert 0.6 < time.monotonic() - began < 3.0

    run(body)


def test_close_aborts_an_answer_that_runs_past_the_timeout() -> None:
    handler, entered, cancelled = long_handler()

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/forever"))
            await entered.wait()
            began = time.monotonic()
            await harness.server.close(0.3)
            assert 0.3 <= time.monotonic() - began < 2.5
            assert await asyncio.wait_for(client.closed(), 1)
            await asyncio.wait_for(cancelled.wait(), 1)
            assert harness.server.connections == set()

    run(body)


# --- status lines and Date --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK"),
        (201, b"HTTP/1.1 201 Created"),
        (404, b"HTTP/1.1 404 Not Found"),
        (418, b"HTTP/1.1 418 I'm a Teapot"),
        (503, b"HTTP/1.1 503 Service Unavailable"),
        (599, b"HTTP/1.1 599 "),  # no reason known: the space before it stays (RFC 9112 §4)
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["reply", "streamed"])
def test_every_answer_has_a_status_line_and_a_current_date(status: int, line: bytes, streamed: bool) -> None:
    async def handler(request: Request) -> Reply | None:
        if not streamed:
            return Reply(status, [], b"x")
        request.start(status, [], length=1)
        request.write(b"x")
        return None

    async def body() -> None:
        async with serving(handler) as harness:
            client = await harness.connect()
            client.send(get("/status"))
            raw = await client.answer()
            assert masked(raw) == line + b"\r\nContent-Length: 1\r\nDate: <date>\r\n\r\nx"
            date = re.search(rb"\r\nDate: ([^\r]*)\r\n", raw)
            assert date is not None
            assert abs(parsedate_to_datetime(date[1].decode()).timestamp() - time.time()) < 5

    run(body)
