"""Mutated bytes against the router over real sockets (issue 14: bad input never hurts the router; a broken
backend fails one request, not the router).

From a client: a well-formed request (JSON bodies, chunked, 100-continue, pipelined, a WebSocket
handshake, the admin API) with a few random edits: bytes flipped, inserted, cut, repeated, spliced with
another request, or tokens that matter to a parser (CRLFs, lengths, chunk sizes). Whatever comes, the
router answers in HTTP/1.1 or closes, never raises into its event loop or logs an error, leaves no
connection open, and still answers a well-formed request afterwards.

From a backend: its answers edited the same way (a second answer after the first, lengths that lie,
broken chunks, 1xx, HTTP/1.0). Each such request is followed by a probe on the same router, whose answer
must be its own: a broken answer must never be read into the next request's (a desync).

Seeded: a failure is reproducible."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from tests.integration.router.harness import routing, until
from tests.servers.fake_engine import running
from vllm_fleet.router.backends import PoolSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
INPUTS = 400  # per seed: about 15 s on a 2-core machine
BACKEND_INPUTS = 60  # most stall (a length that lies): about 0.3 s each

_CHAT = b'{"model":"yardstick","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
WELL_FORMED = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + (
    b"Content-Length: %d\r\n\r\n%s" % (len(_CHAT), _CHAT)
)
SEEDS = [
    WELL_FORMED,
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'1a\r\n{"model":"yardstick","prom\r\n1b\r\npt":"hi","max_tokens":2,"a":1}\r\n0\r\n\r\n',
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 81\r\n\r\n"
    b'{"model":"yardstick","messages":[{"role":"user","content":"hi"}],"stream":true}  ',
    b"GET /v1/realtime?model=yardstick HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x82abcd\x09\x07",
    b'POST /v1/embeddings HTTP/1.0\r\nContent-Length: 40\r\n\r\n{"model":"yardstick","input":["a","b"]}  ',
    b"GET /admin/backends HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"0\r\n\r\n", b":", b" ", b"\x00", b"\xff", b"\xed\xa0\x80", b"{", b"}", b"%",
    b"Content-Length: 99999999999999999999\r\n", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
    b"ffffffffffffffff\r\n", b"Connection: close\r\n", b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Expect: 100-continue\r\n", b"HTTP/1.1", b'"model":', b'"messages":[', b'"prompt":[1,2]', b'"stream":true',
]  # fmt: skip


def mutated(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 5)):
        at = rng.randrange(len(data) + 1)
        edit = rng.randrange(6)
        if edit == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif edit == 1:
            data[at:at] = rng.choice(TOKENS)
        elif edit == 2:
            del data[at : at + rng.randint(1, 16)]
        elif edit == 3:
            data[at:at] = data[at : at + rng.randint(1, 64)] * rng.randint(1, 4)
        elif edit == 4:
            other = rng.choice(SEEDS)
            data[at:] = other[rng.randrange(len(other) + 1) :]
        else:
            data += rng.choice(SEEDS)  # pipelined
    return bytes(data)


async def exchange(port: int, data: bytes, pieces: int = 1, eof: bool = False, wait_s: float = 3.0) -> bytes:
    """Send ``data`` (in ``pieces``) on a new connection; what came back until the router closed or went quiet
    (nothing for ``wait_s``, or 0.3 s once something came)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        step = max(1, len(data) // pieces)
        for at in range(0, len(data), step):
            writer.write(data[at : at + step])
            await writer.drain()
        if eof:
            writer.write_eof()
        while chunk := await asyncio.wait_for(reader.read(65536), 0.3 if got else wait_s):
            got += chunk
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass  # quiet (a keep-alive connection waiting for more), or closed on us
    finally:
        writer.close()
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_requests_get_http_answers_or_a_close_and_never_hurt_the_router(seed: int) -> None:
    with running() as backend:

        async def body() -> None:
            hurt: list[str] = []

            class Errors(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    if record.levelno >= logging.ERROR and record.name.startswith("vllm_fleet"):
                        hurt.append(f"logged: {record.getMessage()}")

            handler = Errors()
            logging.getLogger().addHandler(handler)
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: hurt.append(f"raised: {context.get('message')}"))
            rng = random.Random(seed)
            try:
                async with routing(backend.url, request_timeout_s=1.0, max_body_bytes=4096) as router:
                    for i in range(INPUTS):
                        data = mutated(rng)
                        got = await exchange(router.port, data, rng.choice((1, 1, 3, 40)), rng.random() < 0.2)
                        assert not got or got.startswith(b"HTTP/1.1 "), (data, got[:200])
                        assert not hurt, (data, hurt)
                        if i % 100 == 0:
                            answer = await exchange(router.port, WELL_FORMED)
                            assert answer.startswith(b"HTTP/1.1 200 "), (i, answer[:200])
                    await asyncio.sleep(1.5)  # the last ones' lingering closes and request timeouts
                    assert not router._server.connections and router.in_flight() == 0
            finally:
                logging.getLogger().removeHandler(handler)

        asyncio.run(body())


ANSWERS = [
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"id":"ok"}',
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b'18\r\ndata: {"choices":[]}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n',
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\ntrailer: x\r\n\r\n",
]

# First, as they are: an answer followed by more in the same write (a second answer, or the start of one).
SPOILED = [ANSWERS[0] + ANSWERS[0], ANSWERS[0] + ANSWERS[2][:30], ANSWERS[1] + ANSWERS[0], ANSWERS[6] + ANSWERS[0][:9]]


def test_mutated_backend_answers_fail_their_own_request_only_and_never_the_next_ones() -> None:
    rng = random.Random(3)
    planned: dict[bytes, bytes] = {}  # request id: the mutated answer its backend sends

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                               if k.lower() == b"content-length"), 0)  # fmt: skip
                body = await reader.readexactly(length)
                if b"/v1/models" in head.split(b"\r\n")[0]:
                    listed = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(listed), listed))
                    continue
                rid = body.partition(b'"id":"')[2].partition(b'"')[0]
                if rid in planned:
                    writer.write(planned.pop(rid))
                    continue
                own = b'{"id":"%s"}' % rid
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(own), own))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def request(rid: bytes) -> bytes:
        body = b'{"model":"m","id":"%s"}' % rid
        return b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def body() -> None:
        hurt: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: hurt.append(f"raised: {context.get('message')}"))
        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server, routing(origin, pool=PoolSettings(eject_after=10**6)) as router:
            await until(lambda: bool(router.pool.available("m")), 10.0, "the backend listed")
            for i in range(BACKEND_INPUTS):
                answer = bytearray(SPOILED[i] if i < len(SPOILED) else rng.choice(ANSWERS))
                for _ in range(0 if i < len(SPOILED) else rng.randint(1, 4)):
                    at = rng.randrange(len(answer) + 1)
                    answer[at:at] = rng.choice((*TOKENS, *ANSWERS)) if rng.random() < 0.6 else b""
                    del answer[at : at + rng.choice((0, 0, 1, 8))]
                planned[b"F%d" % i] = bytes(answer)
                got = await exchange(router.port, request(b"F%d" % i), wait_s=0.3)  # a stalled answer: given up
                assert not got or got.startswith(b"HTTP/1.1 "), (bytes(answer), got[:200])
                planned.pop(b"F%d" % i, None)
                probe = await exchange(router.port, request(b"P%d" % i))
                assert probe.endswith(b'{"id":"P%d"}' % i), (bytes(answer), got[:300], probe[-200:])
                assert not hurt, (bytes(answer), hurt)

    asyncio.run(body())
